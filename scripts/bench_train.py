"""Training speed, side by side: svmtool against a straightforward CS231n-style pipeline.

Run: python scripts/bench_train.py [--workdir DIR] [--repeats 3] [--configs 16] [--busy]
                                   [--sections losses,preprocessing,loop,end-to-end,grid]
                                   [--compare-with TREE]

The script writes full-size CIFAR-format data into --workdir (the six python
batches and svmtool's uint8 cache, about 460 MB; kept there for the next run),
then times, alternately in the same run, medians of --repeats rounds:
  1. a float32 matrix product's rate, and loss + gradient, naive against vectorized;
  2. preprocessing: the cache to float32 rows against the notebook's float64 rows,
     and the floor of writing the output once;
  3. the training loop (1500 steps of 200 rows): its floor (the step's two
     products alone, one and two BLAS threads, svmtool's own split of the rows
     over the cores, and its halves of the columns as the loop now splits them,
     on one batch in cache and on a new batch from memory every step),
     svmtool's loop, the same loop on BLAS's own threads (as before the split
     was chosen by measurement), and CS231n's LinearSVM.train loop (float64,
     np.random.choice batches, fancy-index gather, the textbook loss);
  4. end to end, each as a fresh process: `svmtool train` with the defaults
     against the CS231n-style pipeline (unpickle, float64, mean subtraction,
     bias column, LinearSVM.train, train and validation accuracy), both with
     their compiled bytecode kept, as Python does by default (and svmtool also
     without, as under PYTHONDONTWRITEBYTECODE=1), and where svmtool's time went;
  5. with --busy: the same with another process holding one core (a Python
     busy loop), alternated with the idle runs;
  6. a grid of --configs configurations trained together against the same
     configurations trained one after another, and its two products alone.
The machine may be shared: the load average is printed with every section.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
from bench_data import cs231n_notebook, write_python_batches
from benchlib import alternate, busy_core, cpu_model, environment, fmt, load

from svmtool.core import threads, train
from svmtool.core.loss import svm_loss, svm_loss_naive
from svmtool.core.threads import SplitSteps
from svmtool.io import cifar
from svmtool.io.data import mean_image, preprocess, split

ITERS, BATCH, C = 1500, 200, 10
LR, REG = 1e-7, 2.5e4
DATA_BYTES = 500 * 2**20  # what the generated data takes on disk, bounded


# --- the baseline: what a CS231n student writes -----------------------------------


def textbook_svm_loss_vectorized(W, X, y, reg):
    num_train = X.shape[0]
    scores = X.dot(W)
    correct = scores[np.arange(num_train), y].reshape(-1, 1)
    margins = np.maximum(0, scores - correct + 1)
    margins[np.arange(num_train), y] = 0
    loss = margins.sum() / num_train + reg * np.sum(W * W)
    binary = margins.copy()
    binary[margins > 0] = 1
    row_sum = binary.sum(axis=1)
    binary[np.arange(num_train), y] = -row_sum
    dW = X.T.dot(binary) / num_train + 2 * reg * W
    return loss, dW


def baseline_train(X, y, lr=LR, reg=REG, iters=ITERS, batch_size=BATCH, seed=0):
    """CS231n's LinearClassifier.train for LinearSVM: sampling with replacement."""
    np.random.seed(seed)  # noqa: NPY002 (the legacy API, as CS231n uses it)
    num_train, dim = X.shape
    W = 0.001 * np.random.randn(dim, C)  # noqa: NPY002 (LinearClassifier.train)
    history = []
    for _ in range(iters):
        idx = np.random.choice(num_train, batch_size)  # noqa: NPY002 (with replacement)
        X_batch, y_batch = X[idx], y[idx]
        loss, grad = textbook_svm_loss_vectorized(W, X_batch, y_batch, reg)
        history.append(loss)
        W -= lr * grad
    return W, history


def cs231n_pipeline(root: Path) -> None:
    """The whole notebook run: load, preprocess, train, predict train and val."""
    X_train, y_train, X_val, y_val = cs231n_notebook(root / "cifar-10-batches-py")
    W, _ = baseline_train(X_train, y_train)
    train_acc = np.mean(np.argmax(X_train.dot(W), axis=1) == y_train)
    val_acc = np.mean(np.argmax(X_val.dot(W), axis=1) == y_val)
    print(f"train accuracy {train_acc:.4f}, val accuracy {val_acc:.4f}")


# --- helpers -----------------------------------------------------------------------


def make_data(workdir: Path) -> Path:
    """Full-size CIFAR-format data in workdir/data (written once, then reused)."""
    data = workdir / "data"
    if (data / "cifar-10-cache").is_dir() and (data / "cifar-10-batches-py").is_dir():
        return data
    if shutil.disk_usage(workdir).free < 4 * DATA_BYTES:
        sys.exit(f"Error: less than {4 * DATA_BYTES >> 20} MiB free in {workdir}")
    shutil.rmtree(data, ignore_errors=True)
    dataset = write_python_batches(data / "cifar-10-batches-py", np.random.default_rng(0))
    cifar.write_cache(dataset, data)
    return data


def blas_threads(n: int):
    """BLAS held to n threads (threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(n, user_api="blas")


class Unsplit:
    """What the loop did before: no split of its own, BLAS's default threads."""

    def __init__(self, **_: object) -> None:
        pass

    def __enter__(self) -> Unsplit:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def next(self) -> None:
        pass

    matmul = staticmethod(np.matmul)

    @staticmethod
    def halves(m, work, job):
        return job(0, m // 2), job(m // 2, m)


class Recording(SplitSteps):
    """SplitSteps that keeps itself where the benchmark can read its decisions,
    and counts its steps on each number of cores; ``label`` names the contender."""

    seen: ClassVar[list[SplitSteps]] = []
    label: ClassVar[str] = ""

    def __enter__(self) -> SplitSteps:
        self.label, self.steps_at = Recording.label, {}
        Recording.seen.append(self)
        return super().__enter__()

    def next(self) -> None:
        super().next()
        self.steps_at[self.parts] = self.steps_at.get(self.parts, 0) + 1


def labelled(label: str, run):
    """run, with the loops it starts recorded under ``label``."""

    def labelled_run():
        Recording.label = label
        try:
            run()
        finally:
            Recording.label = ""

    return labelled_run


def decisions_line(label: str | None = None) -> str:
    """How svmtool's loops (those under ``label``, or all) split their products in
    this run: the probes' verdicts, the choice they left, the steps on all cores."""
    mine = [s for s in Recording.seen if s.choice and label in (None, s.label)]
    Recording.seen[:] = [s for s in Recording.seen if s not in mine]
    verdicts = [v for s in mine for v in getattr(s.choice, "verdicts", s.choice.decisions)]
    picks = [d for s in mine for d in s.choice.decisions]
    if not picks:
        return "no choice to make (one core)"
    top = max(s.choice.counts[-1] for s in mine)
    steps = sum(sum(s.steps_at.values()) for s in mine)
    on_top = sum(s.steps_at.get(top, 0) for s in mine)
    return (
        f"probes: {verdicts.count(top)} of {len(verdicts)} verdicts for {top} cores,"
        f" the choice {top} cores after {picks.count(top)} of {len(picks)};"
        f" {on_top} of {steps} steps on {top} cores ({100 * on_top / max(steps, 1):.0f}%)"
    )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


# --- the sections ----------------------------------------------------------------------


def matmul_rate(repeats: int) -> float:
    a = np.ones((2048, 2048), np.float32)
    t = alternate({"matmul": lambda: a @ a}, max(3, repeats))["matmul"]
    return 2 * 2048**3 / t / 1e9


def losses(X64, labels, X32, y32, repeats: int) -> None:
    rng = np.random.default_rng(1)
    W64 = 1e-4 * rng.standard_normal((X64.shape[1], C))
    small, ys = X64[:500], labels[:500]
    t = alternate(
        {
            "naive": lambda: svm_loss_naive(W64, small, ys, REG),
            "vectorized": lambda: svm_loss(W64, small, ys, REG),
        },
        repeats,
    )
    print(f"loss + gradient, 500 rows (float64)   {load()}")
    print(f"  naive       {fmt(t['naive'])}")
    print(f"  vectorized  {fmt(t['vectorized'])}   {ratio(t['naive'], t['vectorized'])} faster")
    W32 = W64.astype(np.float32)
    t = alternate(
        {
            "textbook64": lambda: textbook_svm_loss_vectorized(W64, X64, labels, REG),
            "svm_loss32": lambda: svm_loss(W32, X32, y32, REG),
        },
        repeats,
    )
    print("loss + gradient, 49,000 rows")
    print(f"  textbook vectorized, float64  {fmt(t['textbook64'])}")
    print(f"  svm_loss, float32             {fmt(t['svm_loss32'])}\n")


def preprocessing(data: Path, repeats: int) -> None:
    dataset = cifar.load(data)
    parts = split(dataset, seed=0)

    def ours():
        mean = mean_image(dataset.train_images, parts.train)
        preprocess(dataset.train_images, mean, parts.train)
        preprocess(dataset.train_images, mean, parts.val)

    t = alternate(
        {
            "svmtool": ours,
            "notebook": lambda: cs231n_notebook(data / "cifar-10-batches-py"),
            "floor": lambda: np.ones((49_000 + 1_000, 3073), np.float32),
        },
        repeats,
    )
    print(f"preprocessing, 49,000 + 1,000 rows   {load()}")
    print(f"  svmtool: uint8 cache -> mean, float32 rows + bias   {fmt(t['svmtool'])}")
    print(f"  CS231n: unpickle -> float64, mean, hstack bias       {fmt(t['notebook'])}")
    print(f"  floor: write 50,000 x 3,073 float32 once (np.ones)   {fmt(t['floor'])}")
    print(f"  svmtool / floor = {ratio(t['svmtool'], t['floor'])}")
    print(f"  CS231n / svmtool = {ratio(t['notebook'], t['svmtool'])}\n")


def product_floors(X32, W32) -> dict[str, object]:
    """The step's two float32 products alone, 1500 times, in every arrangement."""
    hot, coeff = X32[:BATCH].copy(), np.ones((BATCH, C), np.float32)
    views = list(train.minibatches(X32.shape[0], BATCH, ITERS, np.random.default_rng(0)))

    def plain(batches):
        for b in batches:
            b @ W32
            b.T @ coeff

    def split_over_cores(batches):
        with SplitSteps(threads.ThreadChoice([threads.cores()], probe=1)) as steps:
            for b in batches:
                steps.next()
                steps.matmul(b, W32)
                steps.matmul(b.T, coeff)

    def halves_over_cores(batches):
        # As the loop splits them: each core its half of the batches' columns, one
        # hand-off per step, the gradient's product on the batch of the step (read
        # by the last step's scores) and the scores' on the next batch.
        d = W32.shape[0]

        def job(b, following, lo, hi):
            return b[:, lo:hi].T @ coeff, following[:, lo:hi] @ W32[lo:hi]

        with SplitSteps(threads.ThreadChoice([threads.cores()], probe=1)) as steps:
            batches = iter(batches)
            b = next(batches)
            for following in batches:
                steps.next()
                steps.halves(d, BATCH * (d // 2) * C, functools.partial(job, b, following))
                b = following

    def hot_batches():
        return (hot for _ in range(ITERS))

    def memory_batches():
        return (X32[rows] for rows in views)

    def at(n, fn, batches):
        def run():
            with blas_threads(n):
                fn(batches())

        return run

    return {
        "hot, 1 BLAS thread": at(1, plain, hot_batches),
        "hot, 2 BLAS threads": at(2, plain, hot_batches),
        "hot, svmtool's split": at(1, split_over_cores, hot_batches),
        "hot, svmtool's halves": at(1, halves_over_cores, hot_batches),
        "memory, 1 BLAS thread": at(1, plain, memory_batches),
        "memory, 2 BLAS threads": at(2, plain, memory_batches),
        "memory, svmtool's split": at(1, split_over_cores, memory_batches),
        "memory, svmtool's halves": at(1, halves_over_cores, memory_batches),
    }


def ours_loop(X32, y32, k: int = 1):
    def run():
        train.sgd_grid(X32, y32, C, [LR] * k, [REG] * k, rng=np.random.default_rng(0))

    return run


def before_loop(X32, y32):
    def run():
        train.SplitSteps = Unsplit
        try:
            train.sgd_grid(X32, y32, C, [LR], [REG], rng=np.random.default_rng(0))
        finally:
            train.SplitSteps = Recording

    return run


def training_loop(X32, y32, X64, labels, repeats: int) -> dict[str, float]:
    W32 = (0.001 * np.random.default_rng(0).standard_normal((X32.shape[1], C))).astype(np.float32)
    floors = product_floors(X32, W32)
    contenders = {
        **floors,
        "svmtool": ours_loop(X32, y32),
        "before": before_loop(X32, y32),
        "cs231n": lambda: baseline_train(X64, labels),
    }
    t = alternate(contenders, repeats)
    chose = decisions_line()
    best = min(floors, key=lambda name: t[name])
    best_memory = min((n for n in floors if n.startswith("memory")), key=lambda n: t[n])
    print(f"training loop, {ITERS} steps of {BATCH} rows   {load()}")
    print("  floor: the step's two float32 products alone")
    for name in floors:
        print(f"    {name:28s} {fmt(t[name])}   {1e3 * t[name] / ITERS:.3f} ms/step")
    print(f"  svmtool sgd_grid (float32, split chosen by timing)  {fmt(t['svmtool'])}")
    print(f"      {chose}")
    print(f"  the same loop on BLAS's own threads (before)        {fmt(t['before'])}")
    print(f"  CS231n LinearSVM.train (float64, choice + gather)   {fmt(t['cs231n'])}")
    print(f"  svmtool / best floor ({best}) = {ratio(t['svmtool'], t[best])}")
    memory_ratio = ratio(t["svmtool"], t[best_memory])
    print(f"  svmtool / best floor from memory ({best_memory}) = {memory_ratio}")
    print(f"  CS231n / svmtool = {ratio(t['cs231n'], t['svmtool'])}")
    print(f"  before / svmtool = {ratio(t['before'], t['svmtool'])}\n")
    return t


PHASES = {
    "load_seconds": "loading + preprocessing",
    "train_seconds": "training loop",
    "evaluate_seconds": "accuracies (+ objective)",
}


def end_to_end(
    workdir: Path, data: Path, repeats: int, busy: bool, compare: Path | None = None
) -> None:
    from svmtool.io import model as model_io

    script = Path(__file__).resolve()
    phases: dict[str, list[tuple[float, dict]]] = {}
    # Both contenders run as Python runs by default, with compiled bytecode kept
    # (in workdir, not in the source tree) and reused; a shell with
    # PYTHONDONTWRITEBYTECODE=1 would compile every module at every start, which
    # is timed too ("no bytecode cache").
    cached = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    uncached = {**cached, "PYTHONDONTWRITEBYTECODE": "1"}
    del uncached["PYTHONPYCACHEPREFIX"]

    def svmtool_train(name: str, env: dict[str, str]):
        if name == "another checkout":
            env = {**env, "PYTHONPATH": str(compare)}

        def run():
            path = workdir / "bench_model.npz"
            command = [sys.executable, "-m", "svmtool", "train", "--data-dir", str(data),
                       "--model", str(path)]  # fmt: skip
            start = time.perf_counter()
            # From workdir: `python -m` puts the current folder first on sys.path.
            subprocess.run(command, check=True, capture_output=True, env=env, cwd=workdir)
            wall = time.perf_counter() - start
            phases.setdefault(name, []).append((wall, model_io.load(path).metrics))

        return run

    def notebook():
        command = [sys.executable, str(script), "--cs231n-pipeline", str(data)]
        subprocess.run(command, check=True, capture_output=True, env=cached)

    def start_only():
        # Python's start, the imports and the options, then a usage error before any data.
        command = [sys.executable, "-m", "svmtool", "train", "--data-dir", str(data),
                   "--iters", "0"]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=cached, cwd=workdir)
        assert done.returncode == 2 and "--iters" in done.stderr, done.stderr

    warming = [svmtool_train("warm-up", cached), notebook]
    if compare:
        warming.append(svmtool_train("another checkout", cached))
    for warm in warming:
        warm()  # writes the bytecode the timed runs will read
    phases.clear()
    contenders = {
        "svmtool": svmtool_train("svmtool", cached),
        "cs231n": notebook,
        "svmtool, no bytecode cache": svmtool_train("svmtool, no bytecode cache", uncached),
        "start only": start_only,
    }
    if compare:
        contenders["another checkout"] = svmtool_train("another checkout", cached)
    around = {}
    if busy:
        contenders["svmtool, busy core"] = svmtool_train("svmtool, busy core", cached)
        around["svmtool, busy core"] = busy_core
    t = alternate(contenders, repeats, around)
    print(f"end to end, each a new process   {load()}")
    print(f"  svmtool train (defaults: cache -> rows, 1500 steps, accuracies, model file)"
          f"  {fmt(t['svmtool'])}")  # fmt: skip
    print(f"  CS231n-style (unpickle, float64, mean, bias, LinearSVM.train, accuracies)"
          f"  {fmt(t['cs231n'])}")  # fmt: skip
    print(f"  CS231n / svmtool = {ratio(t['cs231n'], t['svmtool'])} (target >= 5x)")
    slow_start = t["svmtool, no bytecode cache"]
    print(f"  svmtool train compiling its modules at start (PYTHONDONTWRITEBYTECODE=1)"
          f"  {fmt(slow_start)}   CS231n / it = {ratio(t['cs231n'], slow_start)}")  # fmt: skip
    if busy:
        print(f"  svmtool train, another process holding a core    {fmt(t['svmtool, busy core'])}")
        print(f"  busy / idle = {ratio(t['svmtool, busy core'], t['svmtool'])} (target <= 1.5x)")
    # Where the median run's time went, from the timings train saves in the model.
    for name, runs in phases.items():
        wall, metrics = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
        print(f"  {name}, the median run ({wall:.3f} s):")
        for key, label in PHASES.items():
            print(f"    {label:26s} {fmt(metrics[key])}")
        rest = wall - sum(metrics[key] for key in PHASES)
        print(f"    {'the rest':26s} {fmt(rest)}   (Python's start, imports, options,"
              " model file, output; the objective where not with the accuracies)")  # fmt: skip
    if compare:
        other = t["another checkout"]
        where = subprocess.run(
            [sys.executable, "-c", "import svmtool; print(svmtool.__file__)"],
            capture_output=True, text=True, cwd=workdir,
            env={**cached, "PYTHONPATH": str(compare)},
        ).stdout.strip()  # fmt: skip
        print(f"  svmtool train from {where}  {fmt(other)}"
              f"   it / this = {ratio(other, t['svmtool'])}")  # fmt: skip
    print(f"  of which Python's start, the imports and the options"
          f" (train --iters 0: a usage error)  {fmt(t['start only'])}")  # fmt: skip
    print()


def busy_loops(X32, y32, repeats: int) -> None:
    contenders = {
        "svmtool": labelled("idle", ours_loop(X32, y32)),
        "svmtool, busy core": labelled("busy", ours_loop(X32, y32)),
        "before": before_loop(X32, y32),
        "before, busy core": before_loop(X32, y32),
    }
    around = {"svmtool, busy core": busy_core, "before, busy core": busy_core}
    t = alternate(contenders, repeats, around)
    idle_chose, busy_chose = decisions_line("idle"), decisions_line("busy")
    decisions_line()  # the rest (none: before's loops do not choose)
    print(f"training loop, another process holding one core (alternated)   {load()}")
    print(f"  svmtool, idle core          {fmt(t['svmtool'])}")
    slower = ratio(t["svmtool, busy core"], t["svmtool"])
    print(f"  svmtool, busy core          {fmt(t['svmtool, busy core'])}")
    print(f"  busy / idle = {slower} (target <= 1.5x)")
    print(f"      idle: {idle_chose}")
    print(f"      busy: {busy_chose}")
    print(f"  before (BLAS's threads), idle  {fmt(t['before'])}")
    print(f"  before (BLAS's threads), busy  {fmt(t['before, busy core'])}"
          f"   busy / idle = {ratio(t['before, busy core'], t['before'])}\n")  # fmt: skip


def grid(X32, y32, configs: int, repeats: int) -> None:
    side = int(np.sqrt(configs))
    lrs = np.geomspace(5e-8, 5e-7, side).tolist()
    regs = np.geomspace(5e3, 5e4, configs // side).tolist()
    pairs = [(lr, reg) for lr in lrs for reg in regs]

    def together():
        train.sgd_grid(X32, y32, C, [p[0] for p in pairs], [p[1] for p in pairs],
                       rng=np.random.default_rng(0))  # fmt: skip

    def one_by_one():
        for lr, reg in pairs:
            train.sgd_grid(X32, y32, C, [lr], [reg], rng=np.random.default_rng(0))

    def floor():
        # The step's two products alone at the grid's width, split as svmtool splits them.
        W = np.zeros((X32.shape[1], len(pairs) * C), np.float32)
        coeff = np.ones((BATCH, len(pairs) * C), np.float32)
        views = train.minibatches(X32.shape[0], BATCH, ITERS, np.random.default_rng(0))
        with SplitSteps(threads.ThreadChoice([threads.cores()], probe=1)) as steps:
            for rows in views:
                batch = X32[rows]
                steps.next()
                steps.matmul(batch, W)
                steps.matmul(batch.T, coeff)

    square = np.ones((2048, 2048), np.float32)
    contenders = {
        "sequential": labelled("sequential", one_by_one),
        "together": labelled("together", together),
        "floor": floor,
        "matmul": lambda: square @ square,  # the machine's rate, in the same rounds
    }
    t = alternate(contenders, repeats)
    rate = 2 * 2048**3 / t["matmul"]
    # The grid's products at that rate: the least time any one pass can take.
    ideal = ITERS * 2 * 2 * BATCH * X32.shape[1] * len(pairs) * C / rate
    chose = {name: decisions_line(name) for name in ("sequential", "together")}
    print(f"grid of {len(pairs)} configurations ({ITERS} steps of {BATCH} rows each)   {load()}")
    print(f"  one after another   {fmt(t['sequential'])}")
    print(f"  together, one pass  {fmt(t['together'])}")
    for name, line in chose.items():
        print(f"      {name}: {line}")
    print(f"  floor: its two products alone, svmtool's split, from memory  {fmt(t['floor'])}"
          f"   together / floor = {ratio(t['together'], t['floor'])}")  # fmt: skip
    print(f"  sequential / together = {ratio(t['sequential'], t['together'])} (target >= 4x)")
    print(f"  its products at the machine's float32 2048^3 rate ({rate / 1e9:.1f} GFLOP/s,"
          f" same rounds)  {fmt(ideal)}   sequential / it = {ratio(t['sequential'], ideal)}"
          " (the most one pass can gain)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", type=int, default=16)
    parser.add_argument("--workdir", type=Path, help="where the data goes (default: a temp dir)")
    parser.add_argument("--busy", action="store_true", help="also time with one core busy")
    parser.add_argument(
        "--sections",
        default="losses,preprocessing,loop,end-to-end,grid",
        help="which sections to run, comma-separated (default: all)",
    )
    parser.add_argument(
        "--compare-with",
        type=Path,
        metavar="TREE",
        help="also time `svmtool train` end to end from another checkout (its source folder)",
    )
    parser.add_argument("--cs231n-pipeline", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cs231n_pipeline:
        cs231n_pipeline(args.cs231n_pipeline)
        return
    train.SplitSteps = Recording
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(environment())
        print(cpu_model())
        print(load())
        start = time.perf_counter()
        data = make_data(workdir)
        rate = matmul_rate(args.repeats)
        print(f"float32 matmul 2048^3 (BLAS's default threads): {rate:.1f} GFLOP/s\n")

        dataset = cifar.load(data)
        parts = split(dataset, seed=0)
        mean = mean_image(dataset.train_images, parts.train)
        X32 = preprocess(dataset.train_images, mean, parts.train)  # svmtool: shuffled once
        y32 = np.asarray(dataset.train_labels)[parts.train]
        X64, labels, _, _ = cs231n_notebook(data / "cifar-10-batches-py")
        print(f"data: {X32.shape[0]} x {X32.shape[1]} rows, {C} classes, in {data}\n")

        sections = set(args.sections.split(","))
        if "losses" in sections:
            losses(X64, labels, X32, y32, args.repeats)
        if "preprocessing" in sections:
            preprocessing(data, args.repeats)
        if "loop" in sections:
            training_loop(X32, y32, X64, labels, args.repeats)
        del X64
        if "end-to-end" in sections:
            end_to_end(workdir, data, args.repeats, args.busy, args.compare_with)
        if args.busy:
            busy_loops(X32, y32, args.repeats)
        if "grid" in sections:
            grid(X32, y32, args.configs, args.repeats)
        print(f"\n{load()}; the whole run took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
