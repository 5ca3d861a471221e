"""k-means feature speed: extraction against the machine's matrix-multiply rate, and
`svmtool train --features kmeans` end to end on 60,000 generated CIFAR-shaped images.

Run: python scripts/bench_features.py [--images 1000] [--repeats 5] [--skip-end-to-end]

1. Extraction at K = 1600 (the paper's dictionary) on generated 32 x 32 x 3
   images, timed alternately with a float32 matrix product of 4096 x 4096 x 4096
   (numpy's BLAS, every thread) in the same run. The extraction's arithmetic is
   that of its distance products, 2 * (P + 2) * K per patch (P = 108, 729
   patches per image), plus the whitening, 2 * P * P per patch; the report is
   images/s, that rate in GFLOP/s, and its fraction of the matrix-product rate.
   The k-means dictionary (400,000 patches, 50 iterations) is timed once per
   iteration the same way.
2. End to end: scripts/shapes.py writes 50,000 training and 10,000 test images
   (not timed), then `svmtool train --features kmeans` runs as a subprocess
   (features + training + validation), then `svmtool evaluate --split test`;
   then train again, when the features come from the cache. Each is timed; the
   peak memory is the largest child's maximum resident set size.

The machine is shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import alternate, environment, fmt

from svmtool.core import kmeans as K

HERE = Path(__file__).resolve().parent
CENTROIDS, P, POSITIONS = 1600, 108, 27 * 27


def load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def extraction(args) -> None:
    sys.path.insert(0, str(HERE))
    from shapes import make

    rng = np.random.default_rng(0)
    images, _ = make(args.images, rng)
    centroids = rng.standard_normal((CENTROIDS, P)).astype(np.float32)
    a = rng.normal(0, 0.1, (P, P))
    whiten = a @ a.T + np.eye(P)
    mean = np.zeros(P)
    m = 4096
    x = rng.standard_normal((m, m), dtype=np.float32)
    y = rng.standard_normal((m, m), dtype=np.float32)
    x @ y  # warm the BLAS threads
    K.extract(images[:20], centroids, mean, whiten)
    t = alternate(
        {
            "matmul": lambda: x @ y,
            "extract": lambda: K.extract(images, centroids, mean, whiten),
        },
        args.repeats,
    )
    matmul_rate = 2 * m**3 / t["matmul"]
    flops = args.images * POSITIONS * (2 * (P + 2) * CENTROIDS + 2 * P * P)
    rate = flops / t["extract"]
    print(f"k-means extraction, K = {CENTROIDS}, {args.images} images of 32 x 32 x 3")
    print(f"  float32 matmul {m}^3          {fmt(t['matmul'])}  {matmul_rate / 1e9:7.1f} GFLOP/s")
    print(
        f"  extraction                    {fmt(t['extract'])}  {rate / 1e9:7.1f} GFLOP/s"
        f"  {args.images / t['extract']:7.1f} images/s"
    )
    print(f"  ratio: extraction runs at {rate / matmul_rate:.0%} of the matmul rate (goal >= 50%)")

    # One k-means iteration on 400,000 whitened patches, timed the same way.
    patches = K.normalize_patches(K.sample_patches(images, 400_000, rng))
    wmean, wmat = K.fit_whitening(patches)
    patches = K.whiten(patches, wmean, wmat)
    t = alternate(
        {
            "matmul": lambda: x @ y,
            "kmeans": lambda: K.kmeans(patches, CENTROIDS, 1, np.random.default_rng(0)),
        },
        max(3, args.repeats // 2),
    )
    flops = 400_000 * CENTROIDS * (P + 1) * 2
    rate = flops / t["kmeans"]
    print("k-means, one iteration on 400,000 patches, K = 1600")
    print(f"  float32 matmul {m}^3          {fmt(t['matmul'])}")
    print(f"  k-means iteration             {fmt(t['kmeans'])}  {rate / 1e9:7.1f} GFLOP/s")
    print(f"  ratio: {rate / (2 * m**3 / t['matmul']):.0%} of the matmul rate;"
          f" 50 iterations ~ {50 * t['kmeans']:.0f} s")  # fmt: skip


def run(label: str, command: list[str]) -> tuple[float, dict | None]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stderr[-2000:])
        raise SystemExit(f"{label} failed with exit code {done.returncode}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    notes = [line for line in done.stderr.splitlines() if "feature cache" in line]
    print(f"  {label:44s} {seconds:8.1f} s   (peak RSS of any child so far {peak:,.0f} MiB)")
    for line in notes:
        print(f"      {line}")
    try:
        return seconds, json.loads(done.stdout)
    except json.JSONDecodeError:
        return seconds, None


def end_to_end(args) -> None:
    sys.path.insert(0, str(HERE))
    from shapes import write

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        data = write(tmp / "shapes60k.npz", 50_000, 10_000)
        print(f"\nend to end: svmtool train --features kmeans on {data.name}"
              " (50,000 train + 10,000 test images, 32 x 32 x 3)")  # fmt: skip
        print(f"  {load()}")
        cli = [sys.executable, "-m", "svmtool"]
        # The feature cache in the scratch folder too: it is removed with it.
        common = ["--data-dir", str(tmp / "data"), "--cache-dir", str(tmp / "cache")]
        model = str(tmp / "km.npz")
        seconds, result = run(
            "train --features kmeans (49,000 + 1,000 val)",
            [*cli, "train", "--data", str(data), "--features", "kmeans", "--model", model,
             "--json", *common],
        )  # fmt: skip
        metrics = result["metrics"] if result else {}
        for key in ("load_seconds", "dictionary_seconds", "extraction_seconds",
                    "standardization_seconds", "train_seconds", "evaluate_seconds"):  # fmt: skip
            if key in metrics:
                print(f"      {key:28s} {metrics[key]:8.1f} s")
        if metrics:
            print(f"      val accuracy {metrics['val_accuracy']:.4f},"
                  f" train accuracy {metrics['train_accuracy']:.4f}")  # fmt: skip
        test_seconds, evaluation = run(
            "evaluate --split test",
            [*cli, "evaluate", "--model", model, "--split", "test", "--json", *common],
        )
        if evaluation:
            print(f"      test accuracy {evaluation['accuracy']:.4f} on {evaluation['count']}")
        print(f"  total, features + training + evaluation: {seconds + test_seconds:.1f} s"
              " (goal < 300 s)")  # fmt: skip
        run(
            "train again (features from the cache)",
            [*cli, "train", "--data", str(data), "--features", "kmeans", "--model", model,
             "--json", *common],
        )  # fmt: skip
        print(f"  {load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--skip-extraction", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="Scratch space (3 GB).")
    args = parser.parse_args()
    print(environment())
    print(f"{os.cpu_count()} CPUs, {load()}")
    if not args.skip_extraction:
        extraction(args)
    if not args.skip_end_to_end:
        end_to_end(args)


if __name__ == "__main__":
    main()
