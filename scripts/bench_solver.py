"""Does the solver converge, and what does model selection cost? Side by side, one run.

Run: python scripts/bench_solver.py --data DATA.npz [--features kmeans] [--data-dir DIR]
     [--cache-dir DIR] [--repeats 3] [--hinge]

On DATA's training and validation splits as ``svmtool train`` makes them
(features read from the feature cache when train has stored them):
  1. model selection exactly as ``svmtool train --features F`` runs it
     (``pipeline.run_full_batch``: the reg path with warm starts and its early
     stop, then the refit of the chosen reg on train + val) against one
     training run at the chosen reg (``svmtool train --reg R``: L-BFGS from W = 0
     on the training split), alternated, medians of --repeats; wall, CPU and
     L-BFGS iterations. The ratio is what choosing reg costs.
  2. the convergence gap at the chosen reg: the objective that one run reaches
     against a high-accuracy solution of the same problem (float64, gradient
     1e-10 times its size at 0, up to 2,000 iterations), and the same for the
     model selection saves (the refit on train + val); with --hinge also for
     the multi-class hinge and the minibatch SGD default of before (lr 1e-2,
     decay 0.95 per 100 steps, 5,000 steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from benchlib import alternate, environment, load

from svmtool.core.solver import lbfgs, objective
from svmtool.core.train import sgd_grid
from svmtool.pipeline import TUNE_DEFAULTS, TrainRequest, prepare_training, run_full_batch
from svmtool.trainplan import REFIT_GTOL


def timed(fn):
    """(result, wall seconds, CPU seconds) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - w, time.process_time() - c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an .npz dataset (X_train, y_train, ...)")
    parser.add_argument("--data-dir", type=Path, default=None, help="train's --data-dir")
    parser.add_argument("--cache-dir", type=Path, default=None, help="train's --cache-dir")
    parser.add_argument("--features", default="kmeans", choices=("pixels", "hog", "kmeans"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--hinge",
        action="store_true",
        help="also the multi-class hinge (L-BFGS and the old SGD default); slow: the hinge"
        " is not smooth, so its high-accuracy solution takes thousands of iterations",
    )
    args = parser.parse_args()

    print(environment())
    print(load())
    request = TrainRequest(
        lrs=[], regs=[], data=args.data, data_dir=args.data_dir, cache_dir=args.cache_dir,
        features=args.features, solver="lbfgs", tune=True, loss="squared-hinge", iters=500,
    )  # fmt: skip
    prepared = prepare_training(request)
    for note in prepared.notes:
        print(note)
    X, y = prepared.X_train, prepared.y_train
    c = len(prepared.class_names)
    free_bias = TUNE_DEFAULTS[args.features]["free_bias"]
    print(
        f"{args.features}: {X.shape[0]} train x {X.shape[1]} values,"
        f" {prepared.X_val.shape[0]} val; bias {'free' if free_bias else 'penalized'}"
    )

    runs = {}
    runs["selection"], wall, cpu = timed(lambda: run_full_batch(request, prepared))
    reg = runs["selection"].selection["chosen_reg"]
    one = dataclasses.replace(request, tune=False, regs=[reg])
    print(f"first selection: {wall:.1f} s wall, {cpu:.1f} s CPU; chosen reg {reg:.4g}")

    cpu_seconds = {"selection": [], "single": []}

    def run(name: str, req: TrainRequest):
        def go():
            c0 = time.process_time()
            runs[name] = run_full_batch(req, prepared)
            cpu_seconds[name].append(time.process_time() - c0)

        return go

    medians = alternate({"selection": run("selection", request), "single": run("single", one)},
                        args.repeats)  # fmt: skip
    sel, single = runs["selection"], runs["single"]
    print()
    print(f"1. selection cost (medians of {args.repeats}, alternated)")
    print("   reg        iterations  val acc")
    for g in sel.grid:
        mark = "  <- chosen" if g.get("best") else ""
        print(f"   {g['reg']:<10.4g} {g['iterations']:>10}  {g['val_accuracy']:.4f}{mark}")
    refit = sel.selection["refit"]
    path_iters = sum(g["iterations"] for g in sel.grid)
    sel_iters = path_iters + (refit["iterations"] if refit else 0)
    if refit:
        print(f"   refit on {refit['rows']} rows at reg {refit['reg']:.4g}: {refit['iterations']}"
              " iterations")  # fmt: skip
    cpu_sel = float(np.median(cpu_seconds["selection"]))
    cpu_one = float(np.median(cpu_seconds["single"]))
    print(
        f"   selection ({len(sel.grid)} regs{' + refit' if refit else ''}):"
        f" {medians['selection']:.2f} s wall, {cpu_sel:.2f} s CPU, {sel_iters} iterations"
    )
    print(f"   one run at reg {reg:.4g}: {medians['single']:.2f} s wall, {cpu_one:.2f} s CPU,"
          f" {single.model.settings['iterations']} iterations")  # fmt: skip
    print(f"   ratio: {medians['selection'] / medians['single']:.2f}x wall,"
          f" {cpu_sel / cpu_one:.2f}x CPU,"
          f" {sel_iters / single.model.settings['iterations']:.2f}x iterations")  # fmt: skip

    print()
    print(f"2. convergence gap at reg {reg:.4g} (objective - optimum) / optimum")
    X64 = X.astype(np.float64)
    rows = []
    losses = ("squared-hinge", "hinge") if args.hinge else ("squared-hinge",)
    for loss in losses:
        if loss == "squared-hinge":
            ours, seconds = single.model.metrics["objective"], medians["single"]
            iters = single.model.settings["iterations"]
        else:
            t0 = time.perf_counter()
            found = lbfgs(X, y, c, reg, loss=loss, free_bias=free_bias)
            ours, iters, seconds = found.objective, found.iterations, time.perf_counter() - t0
        tight = lbfgs(X64, y, c, reg, loss=loss, gtol=1e-10, ftol=0.0, max_iters=2000,
                      free_bias=free_bias)  # fmt: skip
        rows.append((f"lbfgs {loss}", ours, iters, seconds, tight))
        if loss == "hinge":
            t0 = time.perf_counter()
            sgd = sgd_grid(X, y, c, [1e-2], [reg], iters=5000, batch_size=200,
                           rng=np.random.default_rng(0), lr_decay=0.95, loss=loss)  # fmt: skip
            t1 = time.perf_counter()
            value = objective(sgd.weights[0], X, y, reg, loss=loss)
            rows.append(("sgd hinge (old default)", value, 5000, t1 - t0, tight))
    if refit:
        # The saved model's W: the refit on train + val, at its own reg, stopped
        # at REFIT_GTOL; its optimum is solved from there (float64, gtol 1e-10).
        X_all = np.concatenate([X, prepared.X_val]).astype(np.float64)
        y_all = np.concatenate([y, prepared.y_val])
        tight = lbfgs(X_all, y_all, c, refit["reg"], gtol=1e-10, ftol=0.0, max_iters=2000,
                      W0=sel.model.W, free_bias=free_bias)  # fmt: skip
        rows.append((f"refit (gtol {REFIT_GTOL:g}, saved)", refit["objective"],
                     refit["iterations"], refit["seconds"], tight))  # fmt: skip
    print(f"   {'solver':<26} {'objective':>12} {'optimum':>12} {'gap':>9} {'iters':>6} {'s':>7}")
    for name, value, iters, seconds, tight in rows:
        gap = (value - tight.objective) / tight.objective
        print(
            f"   {name:<26} {value:>12.6g} {tight.objective:>12.6g} {gap:>8.3%}"
            f" {iters:>6} {seconds:>7.2f}"
        )
        print(f"   {'':<26} (optimum: {tight.iterations} iterations, gradient ratio"
              f" {tight.grad_ratio:.1e})")  # fmt: skip
    print(load())


if __name__ == "__main__":
    main()
