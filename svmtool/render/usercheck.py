"""The user-code report (gradcheck --loss, svmtool.check_gradient): terminal and JSON.

One renderer for the command line, the sandboxed child and notebooks.

Text that comes from outside (function names, file paths, exception messages)
is shown literally: never parsed as Rich markup, control characters replaced.
"""

from __future__ import annotations

import io
import re
import textwrap

from rich.console import Console
from rich.table import Table
from rich.text import Text

from svmtool.core.diagnose import CONVENTIONS
from svmtool.render.gradcheck import check_json, gradcheck_table
from svmtool.terminal import (
    clean,
    literal,
    literal_lines,
    number_column,
    print_lines,
    print_table,
    text_column,
)


def self_consistency_line(report) -> str:
    counts = {s: sum(1 for c in report.checks if c.status == s) for s in ("ok", "kink", "FAIL")}
    line = f"self-consistency: {counts['ok']} ok, {counts['kink']} kink, {counts['FAIL']} FAIL"
    rechecked = [
        c.kink_free_rel_error
        for c in report.checks
        if c.status == "kink" and c.kink_free_rel_error is not None
    ]
    if rechecked:
        line += (
            f"; without their straddling samples the kink coordinates agree to {max(rechecked):.1e}"
        )
    return line


_REG_TERM = re.compile(r" \+ \S+ \* reg \* (?:sum\()?W[^,]*$")


def _formula(reading, reg: float) -> str:
    """A reading's formula; at reg = 0 its regularization term says nothing (any
    coefficient times 0 fits), so it is named as not tested."""
    text = reading.formula
    if reg == 0:
        text = _REG_TERM.sub(" + (regularization: not tested at reg = 0)", text)
    return text


def _agreement_lines(diag) -> list[str]:
    """The user's loss and gradient against the hinge loss, with the evidence."""
    lines = []
    ref = diag.reference_loss
    reading = diag.loss_reading
    loss_line = f"loss {diag.user_loss:.8g} (the hinge loss: {ref:.8g})"
    if reading is not None:
        loss_line += f" = {_formula(reading, diag.reg)}, to {reading.difference:.1e}"
    lines.append(loss_line)
    g = diag.grad_reading
    if g is not None:
        lines.append(f"gradient = {_formula(g, diag.reg)}, to {g.difference:.1e}")
    if diag.reg != 0 and diag.convention in CONVENTIONS.values():
        lines.append(f"regularization: {diag.convention}")
    for mistake in diag.mistakes:
        lines.append(f"✗ {mistake}")
    if diag.loss_reading is None and diag.reference_loss and not diag.stub:
        lines.append(
            f"  the loss is {diag.user_loss / diag.reference_loss:.6g} times the hinge loss's"
        )
    diff = diag.gradient_difference
    if diff is not None and diff.ratio is not None:
        lines.append(f"  dW is {diff.ratio:.6g} times the hinge loss's gradient, in every entry")
    elif diff is not None:
        cols = ", ".join(f"{c} ({v:.2g})" for c, v in diff.columns[:10])
        rows = ", ".join(f"{r} ({v:.2g})" for r, v in diff.rows)
        lines.append(
            f"  dW differs from the hinge loss's by {diff.relative:.2e} (relative, Frobenius)"
            + (
                " in every row of W"
                if diff.rows_differing == diag.rows
                else f" in {diff.rows_differing} rows of W"
                + (", the bias row among them" if diff.bias_row_differs else "")
            )
        )
        if cols:
            lines.append(f"  columns (class: max |difference|): {cols}")
        if rows:
            lines.append(f"  worst rows (row: max |difference|): {rows}")
    return lines


def render_header(report, console: Console) -> None:
    """The first line of a user check: the data and the point."""
    print_lines(
        console,
        [
            f"checking on {report.samples} samples of {report.source} (float64) at {report.point};"
            f" W is {report.shape[0]} x {report.shape[1]}, h={report.h:g}, tol={report.tol:g}"
        ],
    )


def render_function(
    fn, console: Console, tracebacks: bool = True, detail: bool | None = None
) -> None:
    """One function's section: a table per reg, the agreement, other shapes, verdict.
    ``tracebacks``: show the user's error here, traceback and hint (the CLI prints
    them on stderr, once, instead). ``detail``: the per-coordinate and other-shape
    tables; None shows them unless the function is right."""
    if detail is None:
        detail = fn.verdict != "right"
    console.print()
    origin = f" from {fn.origin}" if fn.origin else ""
    console.rule(literal(f"{fn.name}{origin}"))
    if fn.delta_note:
        print_lines(console, [fn.delta_note])
    for check in fn.regs:
        if check.loss is None:
            continue  # its return value was refused: the verdict below says why
        console.print(Text(f"reg = {check.reg:g}", style="bold"))
        if check.gradcheck is not None:
            if detail:
                print_table(console, gradcheck_table(check.gradcheck))
            print_lines(console, [self_consistency_line(check.gradcheck)])
        elif check.problem:
            print_lines(console, [f"self-consistency: {check.problem}"])
        print_lines(console, _agreement_lines(check.diagnosis))
    if fn.error is not None:
        if tracebacks:
            if fn.error.details:
                console.print(literal_lines(fn.error.details), soft_wrap=True)
            console.print(
                literal(f"could not be run: {fn.error.summary}", "bold red"), soft_wrap=True
            )
            if fn.error.hint:
                print_lines(console, [f"hint: {fn.error.hint}"])
        else:
            console.print(Text("could not be run: the error is on stderr", style="bold red"))
        return
    if fn.probes and detail:
        table = Table(title="other shapes")
        number_column(table, "shape")
        text_column(table, "result")
        text_column(table, "detail")
        for p in fn.probes:
            style = "green" if p.status == "ok" else "bold red"
            table.add_row(p.label, Text(p.status, style=style), literal(p.detail))
        print_table(console, table)
    elif fn.probes:
        agree = all(p.status == "ok" for p in fn.probes)
        print_lines(
            console,
            [
                "other shapes: "
                + ("; ".join(p.label for p in fn.probes) + (": agree" if agree else ""))
            ],
        )
    if fn.mutated:
        console.print(literal(f"inputs: changed in place: {', '.join(fn.mutated)}"))
    elif fn.bad_return is None:
        console.print("inputs: left unchanged")
    if fn.verdict == "right":
        convention = fn.convention if fn.convention in CONVENTIONS.values() else None
        text = (
            f"RIGHT: {fn.name}'s gradient agrees with its loss (every coordinate ok or kink),"
            " the loss is the multi-class hinge loss, and both hold at other shapes."
            + (f" Regularization: {convention}." if convention else "")
        )
        filled = textwrap.fill(
            text, width=max(console.width, 40), break_on_hyphens=False, break_long_words=False
        )
        verdict = Text("RIGHT", style="bold green")
        verdict.append_text(literal_lines(filled[len("RIGHT") :]))
        console.print(verdict, soft_wrap=True)
    else:
        verdict = Text("WRONG", style="bold red")
        verdict.append_text(literal(f": {fn.name}"))
        console.print(verdict)
        print_lines(console, [f"- {finding}" for finding in fn.findings], indent=2)


def render_comparison(report, console: Console) -> None:
    """The notebook's naive-vs-vectorized line, when both were checked."""
    comp = report.comparison
    if comp is None:
        return
    console.print()
    print_lines(
        console,
        [
            f"{comp.first} vs {comp.second} at reg = {comp.reg:g}: loss difference"
            f" {comp.loss_difference:.2e}, gradient difference (Frobenius)"
            f" {comp.gradient_difference:.2e}; {comp.first} {comp.first_seconds * 1e3:.1f} ms,"
            f" {comp.second} {comp.second_seconds * 1e3:.2f} ms"
            f" ({comp.speedup:.1f}x faster)"
        ],
    )


def render_user_check(
    report, console: Console, tracebacks: bool = True, detail: bool | None = True
) -> None:
    """Print a UserCheckReport (svmtool gradcheck --loss, svmtool.check_gradient)."""
    render_header(report, console)
    for fn in report.functions:
        render_function(fn, console, tracebacks, detail)
    render_comparison(report, console)
    render_verdicts(console, [(fn.name, fn.verdict, short_finding(fn)) for fn in report.functions])


def short_finding(fn) -> str:
    """The function's first finding, or its error, on one short line ("" when right)."""
    if fn.error is not None:
        return fn.error.summary
    if not fn.findings:
        return ""
    first = fn.findings[0]
    return first.split(": ", 1)[0] if len(first) > 90 else first


VERDICT_STYLE = {"right": "bold green", "wrong": "bold red"}


def render_verdicts(console: Console, verdicts: list[tuple[str, str, str]]) -> None:
    """The report's last lines: one per function, ``(name, verdict, why)``."""
    console.print()
    for name, verdict, why in verdicts:
        word = "RIGHT" if verdict == "right" else "WRONG" if verdict == "wrong" else verdict
        head = f"{clean(name)}: "
        plain = head + word + (f": {clean(why)}" if why else "")
        filled = textwrap.fill(
            plain, width=max(console.width, 40), subsequent_indent="    ",
            break_on_hyphens=False, break_long_words=False,
        )  # fmt: skip
        styled = Text(filled)
        styled.stylize(VERDICT_STYLE.get(verdict, "bold yellow"), len(head), len(head) + len(word))
        console.print(styled, soft_wrap=True)


def render_to_text(report, width: int = 100) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, highlight=False)
    render_user_check(report, console)
    return buffer.getvalue().rstrip("\n")


def _jsonable_diagnosis(diag) -> dict | None:
    if diag is None:
        return None
    diff = diag.gradient_difference
    return {
        "loss": diag.user_loss,
        "reference_loss": diag.reference_loss,
        "loss_matches": (
            None
            if diag.loss_reading is None
            else {"mistakes": diag.loss_reading.keys, "difference": diag.loss_reading.difference}
        ),
        "gradient_matches": (
            None
            if diag.grad_reading is None
            else {"mistakes": diag.grad_reading.keys, "difference": diag.grad_reading.difference}
        ),
        "convention": diag.convention,
        "correct": diag.correct,
        "mistakes": diag.mistakes,
        "mistake_keys": diag.keys,
        "gradient_difference": None if diff is None else vars(diff),
    }


def user_check_json(report) -> dict:
    """Everything in a UserCheckReport, as JSON-able values."""
    functions = []
    for fn in report.functions:
        functions.append(
            {
                "name": fn.name,
                "origin": fn.origin,
                "takes_delta": fn.takes_delta,
                "delta": fn.delta,
                "delta_note": fn.delta_note,
                "verdict": fn.verdict,
                "exit_code": fn.exit_code,
                "findings": fn.findings,
                "convention": fn.convention,
                "error": None
                if fn.error is None
                else {
                    "summary": fn.error.summary,
                    "traceback": fn.error.details,
                    "hint": fn.error.hint,
                },
                "bad_return": fn.bad_return,
                "mutated": fn.mutated,
                "numpy_replaced": fn.patched,
                "regs": [
                    {
                        "reg": r.reg,
                        "loss": r.loss,
                        "problem": r.problem,
                        "checks": [check_json(c) for c in r.gradcheck.checks]
                        if r.gradcheck
                        else [],
                        "diagnosis": _jsonable_diagnosis(r.diagnosis),
                    }
                    for r in fn.regs
                ],
                "probes": [
                    {
                        "n": p.n,
                        "d": p.d,
                        "c": p.c,
                        "status": p.status,
                        "detail": p.detail,
                        "traceback": p.traceback,
                    }
                    for p in fn.probes
                ],
            }
        )
    comp = report.comparison
    return {
        "samples": report.samples,
        "W_shape": list(report.shape),
        "data": report.source,
        "point": report.point,
        "h": report.h,
        "tol": report.tol,
        "functions": functions,
        "comparison": None if comp is None else {**vars(comp), "speedup": comp.speedup},
        "exit_code": report.exit_code,
        "passed": report.passed,
    }
