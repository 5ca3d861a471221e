"""The classroom summary (gradcheck with many --loss files): a row per file and
function, the verbose per-file reports, the counts; its JSON and its CSV."""

from __future__ import annotations

import csv
import io
import os
import re

from rich.console import Console
from rich.table import Table

from svmtool.terminal import literal, literal_lines, number_column, print_table, text_column

CSV_FIELDS = ("file", "function", "verdict", "mistake", "convention", "worst_rel_error",
              "mistake_keys", "findings")  # fmt: skip

_OUTPUT_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def their_output(data: bytes) -> str:
    """What a user's file printed, decoded, control characters (but newlines, tabs) escaped."""
    text = data.decode("utf-8", errors="replace")
    return _OUTPUT_UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def convention_short(text: str) -> str:
    if text.startswith("0.5 * reg"):
        return "0.5*reg*sum(W*W)"
    if text.startswith("reg * sum"):
        return "reg*sum(W*W)"
    return "" if not text or text == "unknown" else text


def common_folder(specs: list[str]) -> str:
    """The folder every spec's file is under ("" when none, or for module specs)."""
    paths = []
    for spec in specs:
        head, sep, tail = spec.rpartition(":")
        path = head if sep and tail.isidentifier() else spec
        if not path.endswith(".py"):
            return ""
        paths.append(os.path.dirname(path) or ".")
    try:
        common = os.path.commonpath(paths) if len(paths) > 1 else ""
    except ValueError:  # absolute and relative paths mixed
        return ""
    return "" if common in ("", ".", os.sep) else common


def short_reason(verdict: str, text: str, width: int = 70) -> str:
    """The table's reason: without the verdict it repeats, cut to ``width``."""
    for prefix in (f"{verdict}: ", f"{verdict} "):
        text = text.removeprefix(prefix)
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def classroom_json(results, rows, counts: dict, limits, sweep: list, failed: bool) -> dict:
    """Every file's result and report, every row, the counts and the limits."""
    from svmtool import sandbox

    return {
        "files": [{**sandbox.result_json(r), "report": r.report, "rows": None} for r in results],
        "rows": [vars(row) for row in rows],
        "counts": counts,
        "limits": vars(limits),
        "sweep_delta": sweep,
        "exit_code": int(failed),
        "passed": not failed,
    }


def render_file_reports(console: Console, results) -> None:
    """--verbose: each file's full report, its errors and what it printed."""
    for r in results:
        console.print()
        console.rule(literal(r.spec))
        for section in r.sections:
            console.file.write(section["text"])
            if section["stderr"]:
                console.print(literal_lines(section["stderr"]), soft_wrap=True)
        if r.stderr:
            console.print(literal_lines(r.stderr), soft_wrap=True)
        elif r.message:
            console.print(literal(r.message, "bold red"), soft_wrap=True)
        if r.tail:
            console.file.write(r.tail)
        if r.output:
            cut = r.output_total > len(r.output)
            console.print(
                f"it printed {r.output_total} bytes"
                + (f", the first {len(r.output)} of them:" if cut else ":"),
                markup=False,
            )
            console.print(literal_lines(their_output(r.output)), soft_wrap=True)
    console.print()


def render_summary(console: Console, specs: list[str], rows) -> None:
    """The summary table: one row per file and function, paths under their common folder."""
    table = Table(title="summary")
    text_column(table, "file")
    text_column(table, "function")
    text_column(table, "verdict")
    text_column(table, "mistake or reason")
    text_column(table, "regularization")
    number_column(table, "worst rel error")
    styles = {"right": "green", "wrong": "bold red"}
    folder = common_folder(specs)
    if folder:
        console.print(literal(f"files under {folder}{os.sep}:"), soft_wrap=True)
    for row in rows:
        table.add_row(
            literal(os.path.relpath(row.file, folder) if folder else row.file),
            literal(row.function),
            literal(row.verdict, styles.get(row.verdict, "bold yellow")),
            literal(short_reason(row.verdict, row.mistake)),
            literal(convention_short(row.convention)),
            "" if row.worst_rel_error is None else f"{row.worst_rel_error:.1e}",
        )
    print_table(console, table)


def counts_line(files: int, rows, counts: dict) -> str:
    said = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    return f"{files} files, {len(rows)} functions: {said or 'none checked'}"


def summary_csv(rows) -> bytes:
    """One row per file and function, for a spreadsheet (UTF-8)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    for row in rows:
        writer.writerow(
            [
                row.file,
                row.function,
                row.verdict,
                row.mistake,
                row.convention,
                "" if row.worst_rel_error is None else f"{row.worst_rel_error:.3e}",
                ";".join(row.mistake_keys),
                " | ".join(row.findings),
            ]
        )
    return buffer.getvalue().encode("utf-8")
