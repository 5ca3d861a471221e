"""The gradient-check report (svmtool gradcheck): its tables and lines, and its JSON.

The per-coordinate table and ``check_json`` serve the user-code report too.
"""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from svmtool.terminal import clean, number_column, print_table, text_column

STATUS_STYLE = {"ok": "green", "kink": "yellow", "FAIL": "bold red"}


def gradcheck_table(report) -> Table:
    """One row per checked coordinate of a GradcheckReport."""
    table = Table()
    for name in ("d", "c", "numeric", "analytic", "rel error", "kink samples"):
        # The digits are the point of this table: print_table never cuts them.
        number_column(table, name)
    text_column(table, "status", justify="right")
    for c in report.checks:
        table.add_row(
            str(c.d),
            str(c.c),
            f"{c.numeric:.8g}",
            f"{c.analytic:.8g}",
            f"{c.rel_error:.2e}",
            str(c.straddled),
            Text(c.status, style=STATUS_STYLE[c.status]),
        )
    return table


def check_json(c) -> dict:
    """One CoordCheck as JSON-able values (shared by both gradcheck outputs)."""
    return {
        "d": c.d,
        "c": c.c,
        "numeric": c.numeric,
        "analytic": c.analytic,
        "rel_error": c.rel_error,
        "kink_free_rel_error": c.kink_free_rel_error,
        "straddled_samples": c.straddled,
        "status": c.status,
        "kinks": [vars(k) for k in c.kinks],
    }


def interpretation(report) -> list[str]:
    """What the report's numbers mean, one line per finding."""
    checks = report.checks
    fails = [c for c in checks if c.status == "FAIL"]
    kinks = [c for c in checks if c.status == "kink"]
    straddled = [c for c in checks if c.straddled]
    lines = []
    if fails:
        lines.append(
            f"{len(fails)} coordinate(s) disagree beyond tol={report.tol:g} and no straddled"
            " kink explains it: the analytic gradient is likely wrong there."
        )
    if kinks:
        verified = [c.kink_free_rel_error for c in kinks if c.kink_free_rel_error is not None]
        tail = (
            f" Without those samples they agree to {max(verified):.1e}."
            if verified
            else " Every sample straddled, so nothing was left to recheck on."
        )
        lines.append(
            f"{len(kinks)} coordinate(s) mismatch because the ±h step moved a margin across the"
            " hinge's kink, where the loss has no derivative: the centered difference averages"
            " two slopes there." + tail + " This is not a bug and not a reason for concern."
        )
    if not fails and not kinks:
        lines.append(
            "Every checked coordinate agrees (worst relative error"
            f" {report.worst_kink_free_error:.1e}"
            " among kink-free ones): the analytic gradient is right at this point."
        )
    lines.append(
        f"{report.near_kink_fraction:.2%} of the margins lie within h*max|x| ="
        f" {report.near_kink_distance:.2g} of their kink; {len(straddled)} of {len(checks)}"
        " checked coordinates straddled one. A larger delta keeps margins of a small W away"
        " from 0 (fewer kinks); at a trained W many margins sit near 0 (more)."
    )
    return lines


def gradcheck_json(report, naive, *, source: str, samples: int, point: str, settings: dict,
                   sweep_points, plotted: str | None) -> dict:  # fmt: skip
    """Everything gradcheck prints with --json. ``settings``: delta, reg, h, tol."""
    from svmtool.render.sweep import sweep_interpretation, sweep_json

    failed = any(c.status == "FAIL" for c in report.checks)
    return {
        "data": source,
        "samples": samples,
        "point": point,
        **settings,
        "loss": report.loss,
        "checks": [check_json(c) for c in report.checks],
        "summary": {
            "worst_kink_free_rel_error": report.worst_kink_free_error,
            "straddled_coordinates": sum(1 for c in report.checks if c.straddled),
            "near_kink_fraction": report.near_kink_fraction,
            "near_kink_distance": report.near_kink_distance,
            "interpretation": interpretation(report),
        },
        "sweep_delta": sweep_json(sweep_points) if sweep_points else [],
        "sweep_interpretation": sweep_interpretation(sweep_points) if sweep_points else [],
        "naive_vs_vectorized": vars(naive),
        "plot": plotted,
        "passed": not failed,
    }


def render_gradcheck(console: Console, report, naive, *, source: str, samples: int, point: str,
                     settings: dict, show_kinks: bool) -> None:  # fmt: skip
    """The header line, the coordinate table (and each kink's samples with
    ``show_kinks``), the summary lines, what they mean, naive vs vectorized."""
    delta, reg, h, tol = (settings[k] for k in ("delta", "reg", "h", "tol"))
    console.print(
        clean(
            f"gradient check on {samples} samples of {source} (float64) at {point};"
            f" delta={delta:g}, reg={reg:g}, h={h:g}, tol={tol:g}, loss={report.loss:.6f}"
        ),
        soft_wrap=True,
    )
    print_table(console, gradcheck_table(report))
    if show_kinks:
        for c in report.checks:
            if not c.kinks:
                continue
            kt = Table(title=f"kinks straddled by ({c.d}, {c.c})")
            for name in ("sample", "label", "class j", "margin", "h*|x_nd|"):
                number_column(kt, name)
            for k in c.kinks:
                kt.add_row(
                    str(k.sample), str(k.label), str(k.cls), f"{k.margin:.3e}", f"{k.step:.3e}"
                )
            print_table(console, kt)
    worst = report.worst_kink_free_error
    worst_text = "none is kink-free" if math.isnan(worst) else f"{worst:.2e}"
    console.print(
        f"worst relative error among kink-free coordinates: {worst_text}\n"
        f"coordinates that straddled a kink: {sum(1 for c in report.checks if c.straddled)}"
        f" of {len(report.checks)}\n"
        f"margins within h*max|x| = {report.near_kink_distance:.3g} of zero:"
        f" {report.near_kink_fraction:.4%}",
        markup=False,
    )
    for line in interpretation(report):
        console.print(line, markup=False)
    console.print(
        f"naive vs vectorized: loss difference {naive.loss_difference:.2e}, gradient difference"
        f" (Frobenius) {naive.gradient_difference:.2e}; naive {naive.naive_seconds * 1e3:.1f} ms,"
        f" vectorized {naive.vectorized_seconds * 1e3:.2f} ms"
        f" ({naive.naive_seconds / max(naive.vectorized_seconds, 1e-9):.0f}x)",
        markup=False,
    )
