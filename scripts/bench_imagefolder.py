"""Image-folder decoding speed on 1 and 2 worker processes, side by side.

Run: python scripts/bench_imagefolder.py [--images 10000] [--repeats 3] [--workdir DIR]

Writes ``--images`` 32 x 32 RGB PNGs into 10 class folders (smooth gradients plus
noise, so they compress like photos, not like constant squares), then times,
alternately in the same run, the decoding stage svmtool runs on a first load
(predict's reader on every file, plus a BLAKE2b digest of its bytes) on 1 worker
and on 2 workers, and the whole first load (listing, header pass, decoding,
split) and a second load from the cache.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import alternate, environment, fmt
from PIL import Image

from svmtool.io import imagefolder


def write_pngs(root: Path, count: int, rng: np.random.Generator) -> None:
    yy, xx = np.mgrid[0:32, 0:32]
    for i in range(count):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        base = (xx * rng.uniform(2, 6) + yy * rng.uniform(2, 6))[..., None] + rng.uniform(0, 99, 3)
        image = np.clip(base + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{i:05d}.png")


def timed_decode(paths: list[str], shape: tuple[int, int, int]) -> list[tuple]:
    """svmtool's decoding task, plus the CPU seconds its process spent on it (the
    workers are the forkserver's children, so getrusage in the parent misses them)."""
    start = time.process_time()
    out = imagefolder.decode_files(paths, shape)
    return [*out, ("cpu", time.process_time() - start)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-imagefolder-"))
    work.mkdir(parents=True, exist_ok=True)
    root = work / "pngs"
    try:
        if not root.exists():
            write_pngs(root, args.images, np.random.default_rng(0))
        listing = imagefolder.scan(root)
        paths = [str(root / f.rel) for f in listing.files]
        shape = (32, 32, 3)
        n = len(paths)
        print(environment())
        print(f"cores available: {imagefolder.default_workers()}; load: {os.getloadavg()}")
        print(f"{n} PNGs of 32 x 32 in {root}")

        cpu: dict[int, list[float]] = {1: [], 2: []}

        def decode(workers: int):
            def run() -> None:
                results = imagefolder._run(timed_decode, paths, (shape,), workers, "decoding", None)
                cpu[workers].append(sum(r[1] for r in results if r[0] == "cpu"))

            return run

        medians = alternate({"1 worker": decode(1), "2 workers": decode(2)}, args.repeats)
        for (name, seconds), workers in zip(medians.items(), (1, 2), strict=True):
            used = statistics.median(cpu[workers])
            print(
                f"decoding, {name:9s}: {fmt(seconds)}  {n / seconds:8,.0f} images/s,"
                f" {used:6.2f} CPU-s ({used / seconds:.2f} cores busy on average)"
            )
        speedup = medians["1 worker"] / medians["2 workers"]
        print(f"2 workers / 1 worker: {speedup:.2f}x")

        cache = work / "cache"
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        imagefolder.load(root, cache)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = imagefolder.load(root, cache)
        second = time.perf_counter() - t0
        assert again.report["cache"] == "read"
        print(f"first load (every core): {fmt(first)}; second load (cache): {fmt(second)}")
        print(f"load after: {os.getloadavg()}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
