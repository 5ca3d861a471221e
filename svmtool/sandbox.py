"""Check users' loss files each in a child process, within limits.

A classroom's files are run as they are: one may loop forever, crash the
interpreter (``os.abort()``, a segfault in a C extension), eat all memory or
print megabytes. Each file is checked by ``python -m svmtool.sandbox_child`` in its
own process group, with a wall-clock limit, an address-space limit
(``RLIMIT_AS``) and a cap on the output kept; one that runs past a limit gets
a verdict of its own and the others go on. The child renders its report and
sends it, with the JSON document, as JSON lines on a pipe of its own (the
user's prints go to its stdout, which is read separately).

The same child runs a single file too, so a file's verdict does not depend on
whether it was checked alone or among others.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_TIMEOUT = 60.0
DEFAULT_MEMORY = 2 * 2**30
OUTPUT_KEPT = 64 * 1024  # of each file's own prints, shown with --verbose
OUTPUT_LIMIT = 4 * 2**20  # more than this and the file is stopped: "output flooded"
RESULT_LIMIT = 64 * 2**20  # a report is ~100 KB; more is not ours
DUMP_GRACE = 1.0  # seconds a timed-out child has to write where it was

VERDICTS = (
    "right",
    "wrong",
    "could not import",
    "raised",
    "timed out",
    "crashed",
    "out of memory",
    "output flooded",
)
"""Every verdict a row of the summary can carry."""

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])


@dataclass
class Limits:
    timeout: float = DEFAULT_TIMEOUT  # seconds of wall clock per file
    memory: int = DEFAULT_MEMORY  # bytes of address space per child (0: no limit)
    jobs: int = 1  # children at a time


@dataclass
class FunctionRow:
    """One row of the classroom summary: a function of a file."""

    file: str
    function: str
    verdict: str  # one of VERDICTS
    mistake: str  # the first finding or the error, one line; "" when right
    convention: str
    worst_rel_error: float | None  # over the coordinates no kink explains
    findings: list[str] = field(default_factory=list)
    mistake_keys: list[str] = field(default_factory=list)


@dataclass
class FileResult:
    """What came of one file."""

    spec: str  # as the user gave it (PATH.py[:FUNC])
    status: str  # "checked", or a verdict of VERDICTS[2:] for the whole file
    message: str  # one line for a file that could not be checked ("" when checked)
    exit_code: int  # as a single-file run exits: 0, 1, 2 (the spec) or 3
    rows: list[FunctionRow] = field(default_factory=list)
    sections: list[dict] = field(default_factory=list)  # {"text", "stderr"} per function
    tail: str = ""  # the naive-vs-vectorized comparison
    stderr: str = ""  # an import failure's traceback, hint and Error: line
    report: dict | None = None  # the JSON document of the check
    output: bytes = b""  # the first OUTPUT_KEPT bytes the file printed
    output_total: int = 0
    seconds: float = 0.0
    plot: str | None = None


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_memory(text: str) -> int:
    """'2G', '512M', '1.5GiB', '0' (no limit) -> bytes."""
    from svmtool.errors import BadValue

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise BadValue("--memory", f"must be a size such as 2G or 512M, got {text!r}")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " ")
    if value != 0 and value < 64 * 2**20:
        raise BadValue("--memory", f"must be at least 64M (Python alone needs it), got {text}")
    return int(value)


def size_text(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


# --- the parent ------------------------------------------------------------------------


@dataclass
class _Child:
    index: int
    spec: str
    proc: subprocess.Popen
    out_fd: int
    result_fd: int
    trace: Path
    started: float
    deadline: float
    output: bytearray = field(default_factory=bytearray)
    output_total: int = 0
    result: bytearray = field(default_factory=bytearray)
    events: list[dict] = field(default_factory=list)
    open_fds: int = 2
    killed: str | None = None  # why we stopped it: "timed out", "output flooded"
    dump_asked: float | None = None
    exited_at: float | None = None


def run_files(
    specs: Sequence[str],
    settings: dict,
    W,
    X,
    y,
    limits: Limits,
    on_event: Callable[[int, dict], None] | None = None,
) -> list[FileResult]:
    """Check each ``--loss`` spec in a child of its own, ``limits.jobs`` at a time.

    ``settings``: what run_check is given (regs, delta, coords, h, tol, seed,
    source, point) plus the rendering (width, color) and plot. W (D, C),
    X (N, D), y (N,). ``on_event(index, event)`` sees each child's events as
    they come ("start", "output", "calls", "function", "done", "error") and
    a final "finished" with the FileResult. Results come back in spec order.
    """
    import numpy as np

    results: list[FileResult | None] = [None] * len(specs)
    with tempfile.TemporaryDirectory(prefix="svmtool-check-") as tmp:
        folder = Path(tmp)
        np.save(folder / "W.npy", W)
        np.save(folder / "X.npy", X)
        np.save(folder / "y.npy", y)
        job = {
            **settings,
            "memory": limits.memory,
            "cwd": os.getcwd(),
            "sys_path": [p for p in sys.path if isinstance(p, str)],
        }
        (folder / "job.json").write_text(json.dumps(job))
        pending = list(enumerate(specs))
        running: dict[int, _Child] = {}
        selector = selectors.DefaultSelector()
        try:
            while pending or running:
                while pending and len(running) < max(1, limits.jobs):
                    index, spec = pending.pop(0)
                    child = _start(folder, index, spec, limits.timeout)
                    running[index] = child
                    selector.register(child.out_fd, selectors.EVENT_READ, (child, "out"))
                    selector.register(child.result_fd, selectors.EVENT_READ, (child, "result"))
                    if on_event:
                        on_event(index, {"event": "start", "spec": spec})
                now = time.monotonic()
                wait = min([c.deadline - now for c in running.values()] + [0.2])
                for key, _ in selector.select(max(wait, 0.01)):
                    child, kind = key.data
                    _read(selector, child, kind, limits, on_event)
                now = time.monotonic()
                for index, child in list(running.items()):
                    if _tend(child, now, limits):
                        for fd in (child.out_fd, child.result_fd):
                            with contextlib.suppress(KeyError, ValueError):
                                selector.unregister(fd)
                            with contextlib.suppress(OSError):
                                os.close(fd)
                        result = _result(child, limits)
                        results[index] = result
                        del running[index]
                        if on_event:
                            on_event(index, {"event": "finished", "result": result})
        finally:
            for child in running.values():  # Ctrl-C, or an error of ours
                _kill(child)
                with contextlib.suppress(OSError):
                    os.close(child.out_fd)
                with contextlib.suppress(OSError):
                    os.close(child.result_fd)
            selector.close()
    return [r for r in results if r is not None]


def _start(folder: Path, index: int, spec: str, timeout: float) -> _Child:
    out_r, out_w = os.pipe()
    res_r, res_w = os.pipe()
    env = dict(os.environ)
    # One BLAS thread per child: the files run side by side on the cores, and a
    # file's numbers do not depend on how many ran beside it.
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    env["PYTHONUNBUFFERED"] = "1"  # their prints arrive as they happen
    env.pop("PYTHONFAULTHANDLER", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [_PACKAGE_PARENT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    trace = folder / f"trace-{index}.txt"
    command = [
        sys.executable,
        "-m",
        "svmtool.sandbox_child",
        str(folder),
        str(index),
        spec,
        str(res_w),
    ]
    try:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=out_w,
            pass_fds=(res_w,),
            env=env,
            process_group=0,  # its own group: a timeout ends whatever it started too
        )
    finally:
        os.close(out_w)
        os.close(res_w)
    now = time.monotonic()
    return _Child(index, spec, proc, out_r, res_r, trace, now, now + timeout)


def _read(selector, child: _Child, kind: str, limits: Limits, on_event) -> None:
    fd = child.out_fd if kind == "out" else child.result_fd
    try:
        chunk = os.read(fd, 65536)
    except OSError:
        chunk = b""
    if not chunk:
        selector.unregister(fd)
        child.open_fds -= 1
        return
    if kind == "out":
        room = OUTPUT_KEPT - len(child.output)
        if room > 0:
            child.output += chunk[:room]
            if on_event:
                on_event(child.index, {"event": "output", "bytes": chunk[:room]})
        child.output_total += len(chunk)
        if child.output_total > OUTPUT_LIMIT and child.killed is None:
            child.killed = "output flooded"
            _ask_where(child)
        return
    child.result += chunk
    if len(child.result) > RESULT_LIMIT:
        child.killed = child.killed or "crashed"
        _kill(child)
        child.result.clear()
        return
    while b"\n" in child.result:
        line, _, rest = bytes(child.result).partition(b"\n")
        child.result[:] = rest
        try:
            event = json.loads(line)
        except ValueError:
            continue  # not ours: something in the child wrote to our pipe
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            child.events.append(event)
            if on_event:
                on_event(child.index, event)


def _tend(child: _Child, now: float, limits: Limits) -> bool:
    """Enforce the time limit; True once the child is over and its pipes are read."""
    if child.killed is None and now >= child.deadline and child.proc.poll() is None:
        child.killed = "timed out"
        _ask_where(child)
    asked = child.dump_asked
    if (
        asked is not None
        and child.proc.poll() is None
        and (now - asked >= DUMP_GRACE or _dumped(child.trace))
    ):
        _kill(child)
    if child.proc.poll() is None:
        return False
    child.exited_at = child.exited_at or now
    # Something it started may hold the pipes open: do not wait for that.
    if child.open_fds > 0 and now - child.exited_at < 1.0:
        return False
    _kill(child)  # its process group: whatever it left running
    return True


def _ask_where(child: _Child) -> None:
    """Ask the child where it is (its faulthandler writes the stack); _tend ends it."""
    child.dump_asked = time.monotonic()
    with contextlib.suppress(OSError):
        os.kill(child.proc.pid, signal.SIGUSR1)


def _dumped(trace: Path) -> bool:
    try:
        text = trace.read_text(errors="replace")
    except OSError:
        return False
    return "File " in text and text.endswith("\n")


def _kill(child: _Child) -> None:
    with contextlib.suppress(OSError):
        os.killpg(child.proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        child.proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.proc.wait(timeout=5)


_FRAME = re.compile(r'^\s*File "(.*)", line (\d+) in (.*)$')


def where_it_was(trace: Path, spec: str) -> str:
    """'in svm_loss_naive, line 37' from a faulthandler dump: the innermost frame
    in the user's code (not svmtool's, not the standard library's or numpy's)."""
    from svmtool.io.usercode import _is_library, _is_ours

    try:
        text = trace.read_text(errors="replace")[-200_000:]
    except OSError:
        return ""
    frames = [m.groups() for m in map(_FRAME.match, text.splitlines()) if m]
    # A dump lists the most recent call first; the last "Current thread" block is the one.
    for filename, line, name in frames:
        if not (_is_ours(filename) or _is_library(filename)):
            target = spec.rpartition(":")[0] if spec.rpartition(":")[2].isidentifier() else spec
            same = Path(filename).name == Path(target).name
            return f" in {name}, line {line}" + ("" if same else f" of {filename}")
    return ""


def _result(child: _Child, limits: Limits) -> FileResult:
    from svmtool.terminal import clean

    seconds = time.monotonic() - child.started
    result = FileResult(child.spec, "checked", "", 0, seconds=seconds)
    result.output, result.output_total = bytes(child.output), child.output_total
    done = next((e for e in child.events if e["event"] == "done"), None)
    error = next((e for e in child.events if e["event"] == "error"), None)
    result.sections = [
        {"text": str(e.get("text", "")), "stderr": str(e.get("stderr", ""))}
        for e in child.events
        if e["event"] == "function"
    ]
    rows = [_row(child.spec, e.get("row")) for e in child.events if e["event"] == "function"]
    result.rows = [r for r in rows if r is not None]
    code = child.proc.returncode

    def stopped(status: str, message: str) -> FileResult:
        result.status, result.message, result.exit_code = status, message, 3
        # Functions already reported keep their rows; the one that was running gets this.
        running = re.search(r" in (\w+),", message)
        name = running.group(1) if running else "(the file)"
        if not any(r.function == name for r in result.rows):
            result.rows.append(FunctionRow(child.spec, name, status, message, "", None))
        return result

    if child.killed == "timed out":
        where = where_it_was(child.trace, child.spec)
        return stopped("timed out", f"timed out after {limits.timeout:g} s{where}")
    if child.killed == "output flooded":
        where = where_it_was(child.trace, child.spec)
        return stopped(
            "output flooded",
            f"output flooded{where}: it printed more than {size_text(OUTPUT_LIMIT)}, so it was"
            f" stopped (kept the first {size_text(OUTPUT_KEPT)})",
        )
    if done is not None:
        result.report = done.get("report") if isinstance(done.get("report"), dict) else None
        result.exit_code = int(done.get("exit_code", 1))
        result.tail = str(done.get("tail", ""))
        result.plot = done.get("plot") if isinstance(done.get("plot"), str) else None
        result.stderr = str(done.get("stderr", ""))
        for row in result.rows:
            if row.verdict == "out of memory":
                result.status = "out of memory"
        return result
    if error is not None:
        status = str(error.get("status", "could not import"))
        result.status = status if status in VERDICTS or status == "usage error" else "crashed"
        result.message = clean(str(error.get("summary", "")))
        if result.status == "out of memory":
            limit = size_text(limits.memory)
            result.message = f"out of memory (--memory {limit}): {result.message}"
        result.exit_code = int(error.get("exit_code", 3))
        result.stderr = str(error.get("stderr", ""))
        result.report = error.get("report") if isinstance(error.get("report"), dict) else None
        if result.status != "usage error":
            result.rows.append(
                FunctionRow(child.spec, "(the file)", result.status, result.message, "", None)
            )
        return result
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        where = where_it_was(child.trace, child.spec)
        extra = ""
        if name == "SIGKILL":
            extra = " (killed from outside: the system's out-of-memory killer?)"
        return stopped("crashed", f"crashed: {name}{where}{extra}")
    return stopped("crashed", f"crashed: the process ended (exit status {code}) before its report")


def _row(spec: str, data) -> FunctionRow | None:
    if not isinstance(data, dict):
        return None
    try:
        worst = data.get("worst_rel_error")
        return FunctionRow(
            file=spec,
            function=str(data["function"]),
            verdict=str(data["verdict"]),
            mistake=str(data.get("mistake", "")),
            convention=str(data.get("convention", "")),
            worst_rel_error=None if worst is None else float(worst),
            findings=[str(f) for f in data.get("findings", [])],
            mistake_keys=[str(k) for k in data.get("mistake_keys", [])],
        )
    except (KeyError, TypeError, ValueError):
        return None


def result_json(result: FileResult) -> dict:
    """A FileResult as JSON-able values (the output as text, replacement characters for
    bytes that are not UTF-8)."""
    data = asdict(result)
    data["output"] = result.output.decode("utf-8", errors="replace")
    data["output_truncated"] = result.output_total > len(result.output)
    data.pop("sections")
    data.pop("tail")
    data.pop("stderr")
    return data
