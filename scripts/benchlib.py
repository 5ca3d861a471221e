"""Side-by-side timing for the benchmarks: alternate the contenders, report medians.

The machine is shared and noisy, so absolute times drift between runs; what
the benchmarks report are ratios of medians measured in the same run.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import numpy as np


def alternate(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    around: dict[str, Callable[[], AbstractContextManager]] | None = None,
) -> dict[str, float]:
    """Run each contender once per round, in alternating order; median seconds per name.

    ``around[name]()`` is a context entered before that contender's timing starts
    and left after it ends (for example a busy process holding a core)."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(repeats):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            with (around or {}).get(name, nullcontext)():
                start = time.perf_counter()
                contenders[name]()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def load() -> str:
    """The load average, printed next to every figure (the machine is shared)."""
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def cpu_model() -> str:
    """The CPU's model name, family and model numbers (Linux), else the platform's."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in info:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return (
        f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')},"
        f" model {fields.get('model', '?')}), {os.cpu_count()} CPUs"
    )


@contextmanager
def busy_core() -> Iterator[None]:
    """Another process holding one core (a Python busy loop) while the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        yield
    finally:
        proc.kill()
        proc.wait()


def environment() -> str:
    """One line about the machine and the BLAS, printed at the top of every benchmark."""
    line = f"python {platform.python_version()}, numpy {np.__version__}"
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool.get("user_api") == "blas":
                line += (
                    f", {pool['internal_api']} {pool.get('version')}"
                    f" ({pool.get('architecture')}, {pool['num_threads']} threads)"
                )
    except ImportError:
        pass
    return line


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:9.2f} ms" if seconds < 1 else f"{seconds:9.3f} s "
