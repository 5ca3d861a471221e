"""Side-by-side timing for the benchmarks: alternate the contenders, report medians.

The machine is shared and noisy, so absolute times drift between runs; what
the benchmarks report are ratios of medians measured in the same run.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np


def alternate(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Run each contender once per round, in alternating order; median seconds per name."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_ in range(repeats):
        order = names if round_ % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


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
