"""The training result (svmtool train): its grid or reg-path table, its summary, its JSON."""

from __future__ import annotations

import shlex

from rich.console import Console
from rich.table import Table

from svmtool.terminal import fmt, literal, number_column, print_table, text_column
from svmtool.trainplan import TUNE_PATIENCE

LOSS_TEXT = {
    "hinge": "multi-class hinge",
    "squared-hinge": "squared hinge, one-vs-rest (L2-SVM)",
}

CAUSE_SHORT = {
    "delta": "--delta too large for the arithmetic",
    "start": "the loss was not finite at the start",
    "decay": "lr * reg > 1",
    "lr": "lr too large",
}


def features_text(features) -> str:
    """'pixels', 'hog (154 values)', 'kmeans (K = 1600, 6400 values)'."""
    if features.kind == "pixels":
        return "pixels, standardized per pixel" if features.arrays else "pixels"
    size = features.arrays["mean"].shape[0]
    if features.kind == "kmeans":
        return f"kmeans (K = {features.arrays['centroids'].shape[0]}, {size} values)"
    if features.kind == "hog":
        from svmtool.core.features import hog_cell

        cell = hog_cell(features)
        colour = ", cell colours" if features.params.get("colour") else ""
        return f"hog ({cell}x{cell}-pixel cells{colour}, {size} values)"
    return f"{features.kind} ({size} values)"


def training_json(model_path, outcome, prepared) -> dict:
    """Everything train prints with --json."""
    return {
        "model": str(model_path),
        "settings": outcome.model.settings,
        "metrics": outcome.model.metrics,
        "sizes": outcome.sizes,
        "grid": outcome.grid,
        # SGD: the best configuration's minibatch loss before each step (null
        # once diverged); lbfgs: the objective before each iteration.
        "loss_history": outcome.model.loss_history.tolist(),
        "selection": outcome.selection,
        "warnings": outcome.warnings,
        "data": prepared.data_report,
    }


def grid_table(grid: list[dict], full_batch: bool, tune: bool) -> Table | None:
    """The reg path (L-BFGS) or the (lr, reg) grid (SGD); None for one configuration."""
    if len(grid) <= 1:
        return None
    if full_batch:
        past = f"{TUNE_PATIENCE} reg{'s' if TUNE_PATIENCE > 1 else ''}"
        how = f"warm starts, stops {past} past the best" if tune else "warm starts"
        table = Table(title=f"reg path (L-BFGS to convergence, {how})")
        for name in ("reg", "iterations", "objective", "train acc", "val acc", "seconds"):
            number_column(table, name)
        text_column(table, "", justify="right")
        for g in grid:
            table.add_row(
                f"{g['reg']:.3g}",
                str(g["iterations"]) + ("" if g["converged"] else "+"),
                f"{g['objective']:.6g}",
                fmt(g["train_accuracy"]),
                fmt(g["val_accuracy"]),
                f"{g['seconds']:.1f}",
                "chosen" if g.get("best") else "",
                style="bold" if g.get("best") else None,
            )
        return table
    table = Table(title="grid search (same seed, same batches)")
    for name in ("lr", "reg", "train acc", "val acc", "final loss"):
        number_column(table, name)
    text_column(table, "", justify="right")
    for g in grid:
        mark = "best" if g.get("best") else ("diverged" if g["diverged"] else "")
        table.add_row(
            f"{g['lr']:g}",
            f"{g['reg']:g}",
            fmt(g["train_accuracy"]),
            fmt(g["val_accuracy"]),
            fmt(g["final_loss"]),
            mark,
            style="bold" if g.get("best") else None,
        )
    return table


def plain_pixels(request) -> bool:
    """CS231n's recipe: pixels, SGD, no --tune (its summary leaves out what it fixes)."""
    return request.features == "pixels" and not request.tune and request.solver != "lbfgs"


def cifar_settings(request, lr: str | None, reg: str | None) -> bool:
    """Whether CS231n's CIFAR-10 settings were used on other data without being asked for."""
    return plain_pixels(request) and lr is None and reg is None and request.data != "cifar10"


def summary_table(request, outcome, cifar_defaults: bool) -> Table:
    """The 'training result' table: data, split, features, settings, accuracies, times."""
    full_batch = request.solver == "lbfgs"
    best = outcome.grid[outcome.best]
    summary = Table(title="training result", show_header=False)
    text_column(summary, "")
    text_column(summary, "", justify="right")
    sizes = outcome.sizes
    summary.add_row("data", literal(request.data))  # a path the user typed: never markup
    summary.add_row(
        "split", f"{sizes['train']} train, {sizes['val']} val ({sizes['split_description']})"
    )
    summary.add_row("test set", f"{sizes['test']} images (for svmtool evaluate)")
    summary.add_row("features", features_text(outcome.model.features))
    plain = plain_pixels(request)
    if not plain or request.loss != "hinge":
        summary.add_row("loss", LOSS_TEXT[request.loss])
    metrics = outcome.model.metrics
    if full_batch:
        state = "converged" if metrics["converged"] else "stopped at --iters"
        summary.add_row(
            "solver", f"L-BFGS, full batch: {state} in {outcome.model.settings['iterations']}"
        )
        summary.add_row("reg", f"{best['reg']:.3g}")
    else:
        summary.add_row("lr, reg", f"{best['lr']:g}, {best['reg']:g}")
    if outcome.selection and outcome.selection["method"] == "regularization path":
        sel = outcome.selection
        summary.add_row(
            "chosen on val",
            f"{sel['tried']} regs in {sel['seconds']:.1f} s"
            f" (range {sel['range'][0]:.3g} .. {sel['range'][1]:.3g})",
        )
    refit = (outcome.selection or {}).get("refit")
    if refit:
        # The chosen reg solved again on all the labelled images (GridSearchCV's refit).
        summary.add_row(
            "refit on train + val",
            f"{refit['rows']} images, reg {refit['reg']:.3g} (x N_train / N_all):"
            f" {refit['iterations']} iterations",
        )
    summary.add_row(
        "train accuracy", fmt(metrics["train_accuracy"] if refit else best["train_accuracy"])
    )
    summary.add_row("val accuracy" + (" (before the refit)" if refit else ""),
                    fmt(best["val_accuracy"]))  # fmt: skip
    if full_batch:
        where = "train + val" if refit else "train split"
        summary.add_row(f"objective ({where})", f"{metrics['objective']:.6g}")
    else:
        summary.add_row("final loss", fmt(best["final_loss"]))
        if not plain:
            summary.add_row("objective (train split)", f"{metrics['objective']:.6g}")
    timings = outcome.timings
    summary.add_row("loading + preprocessing", f"{timings['load_seconds']:.2f} s")
    if outcome.model.features.kind != "pixels":
        summary.add_row("features (learn + extract)", f"{timings['feature_seconds']:.2f} s")
    summary.add_row("training time", f"{timings['train_seconds']:.2f} s")
    if not full_batch:
        summary.add_row("iterations/s", f"{timings['iterations_per_second']:.0f}")
    if cifar_defaults:
        summary.add_row("settings", "CS231n's for CIFAR-10, not chosen for this data")
    return summary


def render_training(console: Console, request, outcome, lr: str | None, reg: str | None) -> None:
    """The grid or reg-path table (when there is one), then the summary."""
    table = grid_table(outcome.grid, request.solver == "lbfgs", request.tune)
    if table is not None:
        print_table(console, table)
    print_table(console, summary_table(request, outcome, cifar_settings(request, lr, reg)))


def training_notices(request, outcome, lr: str | None, reg: str | None) -> list[str]:
    """What follows the tables on stderr: CS231n's settings on other data, diverged pairs."""
    notices = []
    if cifar_settings(request, lr, reg):
        notices.append(
            "lr 1e-7 and reg 2.5e4 are CS231n's settings for CIFAR-10; to choose them for this"
            f" data on its validation split, run: svmtool train --data"
            f" {shlex.quote(request.data)} --tune"
        )
    for g in outcome.grid:
        if g["diverged"]:
            notices.append(
                f"lr={g['lr']:g}, reg={g['reg']:g} diverged at iteration {g['diverged_at']}"
                f" ({CAUSE_SHORT[g['diverged_because']]})"
            )
    return notices


def why_diverged(configs: list[dict], delta: float, dtype: str) -> str:
    """Why these configurations diverged, naming the option to change."""
    by_cause: dict[str, list[dict]] = {}
    for g in configs:
        by_cause.setdefault(g["diverged_because"], []).append(g)
    parts = []
    if "delta" in by_cause:
        parts.append(
            f"--delta {delta:g} is too large: a batch's hinge terms overflow {dtype} before"
            " any step, so the learning rate is not the cause; use a delta near 1"
        )
    if "start" in by_cause:
        parts.append(
            "the loss was already inf or NaN at the initial weights, before any step,"
            " so the learning rate is not the cause"
        )
    if "decay" in by_cause:
        pairs = ", ".join(f"lr={g['lr']:g} reg={g['reg']:g}" for g in by_cause["decay"])
        parts.append(
            f"lr * reg is above 1 for {pairs}: every step multiplies W by 1 - 2 * lr * reg,"
            " which is more than 1 in magnitude; lower --reg or --lr"
        )
    if "lr" in by_cause:
        lrs = sorted({g["lr"] for g in by_cause["lr"]})
        parts.append(
            "with lr=" + ",".join(f"{v:g}" for v in lrs) + " the steps overshoot;"
            f" try a smaller --lr such as {min(lrs) / 10:g}"
        )
    return "; ".join(parts)
