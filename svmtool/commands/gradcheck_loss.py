"""gradcheck --loss: check a user's loss code, one file or many, each in a sandbox.

The part of svmtool gradcheck that runs the user's files (in child processes,
within --timeout and --memory) and prints their reports as they come.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import typer

from svmtool.commands.common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    err,
    fail,
    out,
    print_json,
    say,
)
from svmtool.errors import BadValue, SvmtoolError
from svmtool.terminal import clean, literal, literal_lines


def _folder_spec(text: str) -> tuple[Path, str | None] | None:
    """(folder, FUNC or None) when ``--loss`` names a folder (FOLDER or FOLDER:FUNC)."""
    head, sep, tail = text.rpartition(":")
    for target, func in ((text, None), (head, tail if sep and tail.isidentifier() else None)):
        if target and (func or target == text):
            folder = Path(target).expanduser()
            if folder.is_dir() and not folder.is_symlink():
                return folder, func
    return None


def has_folder(loss: list[str]) -> bool:
    return any(_folder_spec(text) is not None for text in loss)


def loss_specs(loss: list[str]) -> list[str]:
    """Every --loss as PATH.py[:FUNC] or module:FUNC: a folder becomes each .py file
    under it, in sorted order (links and hidden folders left out); usage errors exit 2."""
    from svmtool.io.usercode import SpecError, parse_spec

    specs: list[str] = []
    for text in loss:
        folder_spec = _folder_spec(text)
        if folder_spec is None:
            try:
                parse_spec(text)
            except SpecError as exc:
                raise fail(str(exc), EXIT_USAGE) from None
            specs.append(text)
            continue
        folder, func = folder_spec
        found = []
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in files:
                path = Path(root) / name
                if name.endswith(".py") and not path.is_symlink() and path.is_file():
                    found.append(path)
        if not found:
            raise fail(f"--loss {text}: the folder holds no .py file", EXIT_USAGE)
        for path in sorted(found):
            specs.append(f"{path}:{func}" if func else str(path))
    return specs


def check_loss_options(specs, loss, timeout, jobs, plot, csv_path) -> None:
    if not (timeout > 0 and math.isfinite(timeout)):
        raise BadValue("--timeout", f"must be > 0 seconds, got {timeout:g}")
    if jobs is not None and jobs < 1:
        raise BadValue("--jobs", f"must be >= 1, got {jobs}")
    if plot is not None and (len(specs) > 1 or has_folder(loss)):
        raise fail("--plot draws one file's kink: give one --loss file with it", EXIT_USAGE)
    if csv_path is not None:
        if csv_path.is_dir():
            raise SvmtoolError(f"--csv {csv_path} is a folder; give a file name such as marks.csv")
        parent = csv_path.parent if str(csv_path.parent) else Path(".")
        if not parent.is_dir():
            raise SvmtoolError(f"--csv {csv_path}: folder {parent} does not exist")


def sandbox_limits(timeout: float, memory: str, jobs: int | None, files: int):
    from svmtool import sandbox

    size = sandbox.parse_memory(memory)  # a BadValue: a usage error, exit 2
    cores = sandbox.available_cores()
    return sandbox.Limits(timeout, size, min(files, jobs or cores))


def _header(settings, W, X) -> None:
    from svmtool.render.usercheck import render_header
    from svmtool.usercheck import UserCheckReport

    header = UserCheckReport([], None, X.shape[0], W.shape, settings["source"],
                             settings["point"], settings["h"], settings["tol"])  # fmt: skip
    render_header(header, out)


def run_one_file(spec, settings, W, X, y, limits, as_json, sweep_points=()) -> None:
    """gradcheck --loss FILE: the report of each function as soon as it is done (a
    loop-based loss takes a while); the file runs in a child process within the limits."""
    import time

    from svmtool import sandbox
    from svmtool.render.classroom import their_output
    from svmtool.render.sweep import render_sweep, sweep_json
    from svmtool.render.usercheck import render_verdicts

    started = time.monotonic()
    status = err.status("", spinner="dots") if err.is_terminal and not as_json else None

    def on_event(index: int, event: dict) -> None:
        kind = event["event"]
        if kind == "output":
            # Their prints go to stderr, as they come: stdout carries the report.
            sys.stderr.write(their_output(event["bytes"]))
            sys.stderr.flush()
        elif kind == "calls" and status is not None:
            status.update(
                f"checking {clean(event.get('function'))}: call {event.get('calls')},"
                f" {time.monotonic() - started:.0f} s"
            )
        elif kind == "notice":
            say(str(event.get("text", "")))
        elif kind == "function" and not as_json:
            if status is not None:
                status.stop()
            sys.stdout.write(str(event.get("text", "")))
            sys.stdout.flush()
            if event.get("stderr"):
                err.print(literal_lines(event["stderr"]), soft_wrap=True)
            if status is not None:
                status.start()

    if not as_json:
        _header(settings, W, X)
    if status is not None:
        status.start()
    try:
        (result,) = sandbox.run_files([spec], settings, W, X, y, limits, on_event)
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    finally:
        if status is not None:
            status.stop()
    if result.output and not result.output.endswith(b"\n"):
        sys.stderr.write("\n")
    if result.output_total > len(result.output):
        say(f"(it printed {result.output_total} bytes; the first {len(result.output)} are shown)")
    if result.exit_code == EXIT_INTERRUPTED:
        raise fail(result.message or "interrupted", EXIT_INTERRUPTED)
    if result.status == "usage error":
        raise fail(result.message, EXIT_USAGE)
    if as_json:
        document = dict(result.report or {"functions": [], "exit_code": result.exit_code})
        document.update(status=result.status, message=result.message or None,
                        exit_code=result.exit_code, passed=result.exit_code == 0)  # fmt: skip
        if sweep_points:
            document["sweep_delta"] = sweep_json(sweep_points)
        print_json(document)
        for section in result.sections:
            if section["stderr"]:
                err.print(literal_lines(section["stderr"]), soft_wrap=True)
    if result.stderr:
        err.print(literal_lines(result.stderr), soft_wrap=True)
    elif result.message:
        say(f"Error: {spec}: {result.message}")
    if not as_json and result.tail:
        sys.stdout.write(result.tail)
    if not as_json:
        render_sweep(out, sweep_points)
        # Right and wrong say why; any other verdict is explained by the Error: line.
        render_verdicts(
            out,
            [
                (r.function, r.verdict, r.mistake if r.verdict in ("right", "wrong") else "")
                for r in result.rows
            ],
        )
    raise typer.Exit(result.exit_code)


def run_many_files(
    specs, settings, W, X, y, limits, as_json, csv_path, verbose, sweep_points=()
) -> None:
    """gradcheck with many --loss files: each in its own child, side by side on the
    cores; a progress bar, then one summary row per file and function."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from svmtool import sandbox
    from svmtool.render import classroom
    from svmtool.render.sweep import render_sweep, sweep_json

    progress = None
    if err.is_terminal and not as_json:
        progress = Progress(
            TextColumn("checking"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), console=err, transient=True,
        )  # fmt: skip
    task = progress.add_task("", total=len(specs)) if progress else None
    current: dict[int, str] = {}

    def on_event(index: int, event: dict) -> None:
        if progress is None:
            return
        if event["event"] == "start":
            current[index] = specs[index]
        elif event["event"] == "finished":
            current.pop(index, None)
            progress.advance(task)
        else:
            return
        progress.update(task, description=clean(", ".join(current.values())))

    if not as_json:
        _header(settings, W, X)
        say(
            f"checking {len(specs)} files, {limits.jobs} at a time, each within"
            f" --timeout {limits.timeout:g} s and --memory {sandbox.size_text(limits.memory)}"
            if limits.memory
            else f"checking {len(specs)} files, {limits.jobs} at a time"
        )
    try:
        if progress is not None:
            progress.start()
        results = sandbox.run_files(specs, settings, W, X, y, limits, on_event)
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    finally:
        if progress is not None:
            progress.stop()
    rows = [row for r in results for row in r.rows]
    counts = {v: sum(1 for r in rows if r.verdict == v) for v in sandbox.VERDICTS}
    usage = [r for r in results if r.status == "usage error"]
    failed = bool(usage) or any(r.verdict != "right" for r in rows) or not rows
    if csv_path is not None:
        write_summary_csv(csv_path, rows)
    if as_json:
        sweep = sweep_json(sweep_points) if sweep_points else []
        print_json(classroom.classroom_json(results, rows, counts, limits, sweep, failed))
        raise typer.Exit(int(failed))
    if verbose:
        classroom.render_file_reports(out, results)
    classroom.render_summary(out, specs, rows)
    for r in usage:
        say(f"Error: {r.message}")
    out.print(literal(classroom.counts_line(len(results), rows, counts)), soft_wrap=True)
    render_sweep(out, sweep_points)
    if csv_path is not None:
        say(f"wrote {len(rows)} rows to {csv_path}")
    raise typer.Exit(int(failed))


def write_summary_csv(path: Path, rows) -> None:
    """One row per file and function, for a spreadsheet; written to a temporary name
    and moved into place."""
    from svmtool.io.files import write_atomic
    from svmtool.render.classroom import summary_csv

    data = summary_csv(rows)
    write_atomic(path, lambda f: f.write(data))
