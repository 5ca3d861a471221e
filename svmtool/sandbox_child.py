"""The child side of the sandbox (svmtool/sandbox.py starts it as
``python -m svmtool.sandbox_child FOLDER INDEX SPEC FD``): limit itself, import the
user's file, check each function, and send the rendered report and its JSON as
JSON lines on FD. The user's prints go to its stdout, which the parent reads."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

from svmtool.sandbox import size_text


def function_row(spec: str, fn) -> dict:
    """The summary row of a FunctionReport, as JSON-able values."""
    verdict = fn.verdict
    mistake = ""
    if fn.error is not None:
        verdict = "out of memory" if getattr(fn.error, "out_of_memory", False) else "raised"
        mistake = fn.error.summary
    elif fn.findings:
        first = fn.findings[0]
        mistake = first.split(": ", 1)[0] if len(first) > 90 else first
    errors = [
        ch.rel_error
        for rc in fn.regs
        if rc.gradcheck is not None
        for ch in rc.gradcheck.checks
        if ch.status != "kink"
    ]
    keys = [k for rc in fn.regs if rc.diagnosis is not None for k in rc.diagnosis.keys]
    return {
        "function": fn.name,
        "verdict": verdict,
        "mistake": mistake,
        "convention": fn.convention if verdict in ("right", "wrong") else "",
        "worst_rel_error": max(errors) if errors else None,
        "findings": fn.findings,
        "mistake_keys": list(dict.fromkeys(keys)),
    }


def _child(folder: Path, index: int, spec_text: str, fd: int) -> int:
    import faulthandler
    import io
    import resource

    send_file = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def send(event: dict) -> None:
        send_file.write(json.dumps(event, default=_jsonable) + "\n")
        send_file.flush()

    job = json.loads((folder / "job.json").read_text())
    trace = open(folder / f"trace-{index}.txt", "w")  # noqa: SIM115 (lives until exit)
    faulthandler.enable(trace)  # a crash writes where it was
    faulthandler.register(signal.SIGUSR1, trace, all_threads=False)  # so does a timeout
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # os.abort() leaves no core file
    if job["memory"]:
        resource.setrlimit(resource.RLIMIT_AS, (job["memory"], job["memory"]))
    for entry in job["sys_path"]:
        if entry not in sys.path:
            sys.path.append(entry)

    import numpy as np
    from rich.console import Console

    from svmtool.io.usercode import (
        SpecError,
        UserCodeError,
        UserInterrupted,
        load_functions,
        parse_spec,
    )
    from svmtool.render.usercheck import render_comparison, render_function, user_check_json
    from svmtool.usercheck import run_check

    def console(buffer) -> Console:
        return Console(
            file=buffer,
            width=int(job["width"]),
            force_terminal=bool(job["color"]),
            color_system="standard" if job["color"] else None,
            highlight=False,
            markup=False,
            emoji=False,
        )

    def error_text(error) -> str:
        from svmtool.terminal import clean

        # Each thing once: the traceback (whose last line is the message), the hint,
        # and the Error: line naming the function and the place.
        lines = [clean(line) for line in error.details.split("\n")] if error.details else []
        if error.hint:
            lines.append(clean(f"hint: {error.hint}"))
        lines.append(clean(f"Error: {error.brief if error.details else error.summary}"))
        return "\n".join(lines)

    try:
        spec = parse_spec(spec_text)
    except SpecError as exc:
        send({"event": "error", "status": "usage error", "summary": str(exc), "exit_code": 2})
        return 0
    W, X, y = (np.load(folder / f"{n}.npy", allow_pickle=False) for n in "WXy")
    try:
        functions = load_functions(spec)
    except UserInterrupted as exc:
        send({"event": "error", "status": "crashed", "summary": str(exc), "exit_code": 130})
        return 0
    except UserCodeError as exc:
        status = "out of memory" if exc.out_of_memory else "could not import"
        report = {
            "functions": [],
            "error": {"summary": exc.summary, "traceback": exc.details, "hint": exc.hint},
            "exit_code": 3,
            "passed": False,
        }
        send(
            {
                "event": "error",
                "status": status,
                "summary": exc.summary,
                "stderr": error_text(exc),
                "exit_code": 3,
                "report": report,
            }
        )
        return 0
    last = [0.0]

    def on_call(fn) -> None:
        now = time.monotonic()
        if now - last[0] > 0.2:
            last[0] = now
            send({"event": "calls", "function": fn.name, "calls": fn.calls})

    def on_function(fn_report) -> None:
        if fn_report.error is not None and fn_report.error.out_of_memory:
            limit = size_text(job["memory"]) if job["memory"] else "the system's"
            prefix = f"out of memory (--memory {limit}): "
            fn_report.error.summary = prefix + fn_report.error.summary
            fn_report.error.brief = prefix + fn_report.error.brief
        buffer = io.StringIO()
        render_function(fn_report, console(buffer), tracebacks=False, detail=job["detail"])
        send(
            {
                "event": "function",
                "text": buffer.getvalue(),
                "stderr": error_text(fn_report.error) if fn_report.error else "",
                "row": function_row(spec_text, fn_report),
            }
        )

    for fn in functions:
        fn.on_call = on_call
    try:
        report = run_check(
            functions, W, X, y, regs=job["regs"], delta=job["delta"],
            coords=[tuple(c) for c in job["coords"]], h=job["h"], tol=job["tol"],
            seed=job["seed"], source=job["source"], point=job["point"], on_function=on_function,
        )  # fmt: skip
    except UserInterrupted as exc:
        send({"event": "error", "status": "crashed", "summary": str(exc), "exit_code": 130})
        return 0
    plotted = None
    if job.get("plot"):
        plotted = _plot(job["plot"], report, functions, W, X, y, job["h"], send)
    buffer = io.StringIO()
    render_comparison(report, console(buffer))
    document = user_check_json(report)
    document["plot"] = plotted
    send(
        {
            "event": "done",
            "report": document,
            "exit_code": report.exit_code,
            "tail": buffer.getvalue(),
            "plot": plotted,
        }
    )
    return 0


def _plot(plot: str, report, functions, W, X, y, h, send) -> str | None:
    """The worst kink among every function's checks, drawn with that function's loss."""
    from svmtool.core import gradcheck as gc
    from svmtool.io import images
    from svmtool.io.files import write_atomic

    candidates = [
        (worst, fn, rc.reg, fr.delta)
        for fn, fr in zip(functions, report.functions, strict=True)
        for rc in fr.regs
        if rc.gradcheck is not None and (worst := gc.worst_kink(rc.gradcheck.checks)) is not None
    ]
    if not candidates:
        send({"event": "notice", "text": f"no checked coordinate straddled a kink, so {plot}"
              " was not written"})  # fmt: skip
        return None
    worst, fn, reg, delta = max(candidates, key=lambda c: c[0].rel_error)
    curve = gc.kink_curve(W, X, y, worst, reg=reg, delta=delta, h=h, loss_fn=fn)
    write_atomic(Path(plot), lambda f: images.kink_plot(curve, f))
    send({"event": "notice", "text": f"the loss along W[{worst.d}, {worst.c}] around its kink:"
          f" {plot}"})  # fmt: skip
    return plot


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def main(argv: list[str]) -> None:
    """Check SPEC (argv: FOLDER INDEX SPEC FD) and send the report on FD."""
    from svmtool.io.usercode import guarded

    folder_arg, index_arg, spec_arg, fd_arg = argv
    try:
        with guarded():
            code = _child(Path(folder_arg), int(index_arg), spec_arg, int(fd_arg))
    except MemoryError:
        code = 0
        with contextlib.suppress(Exception):
            os.write(
                int(fd_arg),
                json.dumps({"event": "error", "status": "out of memory", "exit_code": 3,
                            "summary": "out of memory"}).encode() + b"\n",
            )  # fmt: skip
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    # python -m svmtool.sandbox_child FOLDER INDEX SPEC FD (started by sandbox.run_files only)
    main(sys.argv[1:5])
