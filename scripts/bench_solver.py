"""Does the solver converge, and what does model selection cost? Side by side, one run.

Run: python scripts/bench_solver.py --data DATA.npz [--features kmeans] [--data-dir DIR]
     [--repeats 3]

On the training split of DATA (features read from the feature cache under
--data-dir when train has stored them):
  1. model selection as ``svmtool train`` runs it (the reg path, L-BFGS with
     warm starts, stopping 2 regs past the best) against one L-BFGS run from
     W = 0 at the chosen reg, timed alternately; the ratio is the selection's cost;
  2. the convergence gap at the chosen reg: the objective svmtool's solver
     reaches against a high-accuracy solution of the same problem (float64,
     gradient 1e-10 times its size at 0, up to 2,000 iterations), for the
     L2-SVM; with --hinge also for the multi-class hinge, and for the minibatch
     SGD that was the default before (lr 1e-2, decay 0.95 per 100 steps, 5,000 steps).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from benchlib import alternate, environment

from svmtool.core.solver import lbfgs, objective, regularization_path
from svmtool.core.train import sgd_grid
from svmtool.pipeline import TrainRequest, prepare_training, reg_path


def prepared_rows(args):
    request = TrainRequest(
        lrs=[],
        regs=[],
        data=args.data,
        data_dir=args.data_dir,
        features=args.features,
        solver="lbfgs",
        tune=True,
        loss="squared-hinge",
    )
    prepared = prepare_training(request)
    for note in prepared.notes:
        print(note)
    return request, prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an .npz dataset (X_train, y_train, ...)")
    parser.add_argument("--data-dir", type=Path, default=None, help="where the feature cache is")
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
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    request, prepared = prepared_rows(args)
    X, y, X_val, y_val = prepared.X_train, prepared.y_train, prepared.X_val, prepared.y_val
    c = len(prepared.class_names)
    regs = reg_path(request, X)
    print(f"{args.features}: {X.shape[0]} train x {X.shape[1]} values, {X_val.shape[0]} val")

    chosen = {}

    def selection():
        path = regularization_path(X, y, c, regs, X_val, y_val, loss="squared-hinge")
        chosen["reg"] = path.points[path.best].reg
        chosen["path"] = path

    selection()  # once first: the single run needs the chosen reg
    reg = chosen["reg"]

    def single():
        chosen["single"] = lbfgs(X, y, c, reg, loss="squared-hinge")

    cpu0 = time.process_time()
    medians = alternate({"selection": selection, "single": single}, args.repeats)
    cpu = time.process_time() - cpu0
    cpu_single = time.process_time()
    single()
    cpu_single = time.process_time() - cpu_single
    cpu_selection = time.process_time()
    selection()
    cpu_selection = time.process_time() - cpu_selection
    path = chosen["path"]
    print()
    print(f"1. selection cost (medians of {args.repeats}, alternated; CPU {cpu:.1f} s in all)")
    print("   reg        iterations  val acc")
    for p in path.points:
        mark = "  <- chosen" if p.reg == reg else ""
        print(f"   {p.reg:<10.4g} {p.iterations:>10}  {p.val_accuracy:.4f}{mark}")
    print(f"   selection ({len(path.points)} regs): {medians['selection']:.2f} s")
    print(f"   one run at reg {reg:.4g}:      {medians['single']:.2f} s")
    print(f"   ratio: {medians['selection'] / medians['single']:.2f}x wall")
    print(
        f"   CPU seconds: selection {cpu_selection:.1f}, single {cpu_single:.1f}:"
        f" {cpu_selection / cpu_single:.2f}x"
    )
    iters = sum(p.iterations for p in path.points)
    print(
        f"   L-BFGS iterations: selection {iters}, single {chosen['single'].iterations}:"
        f" {iters / chosen['single'].iterations:.2f}x"
    )

    print()
    print(f"2. convergence gap at reg {reg:.4g} (objective - optimum) / optimum")
    X64 = X.astype(np.float64)
    rows = []
    for loss in ("squared-hinge", "hinge") if args.hinge else ("squared-hinge",):
        t0 = time.perf_counter()
        ours = lbfgs(X, y, c, reg, loss=loss)
        t1 = time.perf_counter()
        tight = lbfgs(X64, y, c, reg, loss=loss, gtol=1e-10, ftol=0.0, max_iters=2000)
        rows.append((f"lbfgs {loss}", ours.objective, ours.iterations, t1 - t0, tight))
        if loss == "hinge":
            t0 = time.perf_counter()
            sgd = sgd_grid(X, y, c, [1e-2], [reg], iters=5000, batch_size=200,
                           rng=np.random.default_rng(0), lr_decay=0.95, loss=loss)  # fmt: skip
            t1 = time.perf_counter()
            value = objective(sgd.weights[0], X, y, reg, loss=loss)
            rows.append(("sgd hinge (old default)", value, 5000, t1 - t0, tight))
    print(f"   {'solver':<26} {'objective':>12} {'optimum':>12} {'gap':>9} {'iters':>6} {'s':>7}")
    for name, value, iters, seconds, tight in rows:
        gap = (value - tight.objective) / tight.objective
        print(
            f"   {name:<26} {value:>12.6g} {tight.objective:>12.6g} {gap:>8.3%}"
            f" {iters:>6} {seconds:>7.2f}"
        )
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
