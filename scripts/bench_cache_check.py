"""What checking a feature cache entry costs: the finiteness check on a memory-mapped
raw.npy against one plain read pass over it (the column sums standardization makes).

Run: python scripts/bench_cache_check.py [--rows 20000] [--width 6400] [--repeats 5]

A float32 array of rows x width (6400 is K = 1600's width) is written into a
temporary folder and memory-mapped as the cache maps it; both passes are timed
alternately in the same run, medians of --repeats.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
from benchlib import alternate, environment, fmt

from svmtool.io.featurecache import all_finite
from svmtool.io.npzfile import map_npy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--width", type=int, default=6400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(environment())
    print(f"{os.cpu_count()} CPUs, load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "raw.npy"
        rng = np.random.default_rng(0)
        np.save(path, rng.standard_normal((args.rows, args.width), dtype=np.float32))
        array = map_npy(path, "feature cache file")
        times = alternate(
            {
                "finiteness check": lambda: all_finite(array),
                "one read pass": lambda: array.sum(axis=0, dtype=np.float64),
            },
            args.repeats,
        )
    print(f"raw.npy {args.rows} x {args.width} float32 ({args.rows * args.width * 4 / 1e9:.2f} GB)")
    for name, seconds in times.items():
        print(f"  {name:18s} {fmt(seconds)}")
    print(
        "  ratio: the check costs"
        f" {times['finiteness check'] / times['one read pass']:.2f}x a read pass"
    )


if __name__ == "__main__":
    main()
