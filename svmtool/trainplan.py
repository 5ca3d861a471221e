"""What svmtool train is asked to do: the defaults per feature set, the request and
its checks, the plan (solver, loss, grid or reg path) and the outcome's shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool.errors import BadValue, check_choice
from svmtool.io.data import (
    NAMED_DATASETS,
)
from svmtool.io.model import Model

DTYPES = {"float32": np.float32, "float64": np.float64}

# Training defaults per feature set. Pixels: CS231n's. Standardized features
# (every column mean 0, variance 1, so |x|^2 is about D) need a learning rate
# and a regularization orders of magnitude away from those: one step moves a
# batch's scores by about lr * D / batch_size * (active margins), which at
# lr 1e-2 is well under one margin unit for D = 154 (hog) and ~0.3 for
# D = 6400 (kmeans, K = 1600). The values come from grids on generated data
# (README: "Training defaults for features").
TRAIN_DEFAULTS = {
    "pixels": {"lr": 1e-7, "reg": 2.5e4, "iters": 1500, "lr_decay": 1.0},
    "hog": {"lr": 1e-2, "reg": 1e-2, "iters": 5000, "lr_decay": 0.95},
    "kmeans": {"lr": 1e-2, "reg": 1e-4, "iters": 5000, "lr_decay": 0.95},
}
KMEANS_DEFAULTS = {"centroids": 1600, "patches": 400_000, "kmeans_iters": 50}
# Without --patches, k-means learns from Coates et al.'s 8 patches per training
# image (400,000 for 50,000 images), at least 64 per centroid, at most 400,000;
# and it stops when an iteration improves the mean distance by less than
# KMEANS_TOL (docs/accuracy.md: what fewer patches and the stop cost in accuracy).
PATCHES_PER_IMAGE = 8
PATCHES_PER_CENTROID = 64
KMEANS_TOL = 1e-4


def default_patches(num_train: int, centroids: int) -> int:
    """The k-means sample size for ``num_train`` training images and K ``centroids``."""
    wanted = max(PATCHES_PER_IMAGE * num_train, PATCHES_PER_CENTROID * centroids)
    return max(min(wanted, KMEANS_DEFAULTS["patches"]), centroids)


SOLVERS = ("sgd", "lbfgs")
# Model selection (``--tune``, and hog/kmeans without --lr/--reg): the loss and
# the top of the reg path per feature set, from measurements on real data
# (docs/accuracy.md). The top is ``REG_TOP * mean(|x|^2) / N``: reg scales with
# the square of the rows' size and, for a fixed amount of overfitting, with
# 1 / N, so one factor fits 4,000 and 50,000 images. The path walks down from
# there half a decade at a time, at most ``REG_DECADES`` decades.
# free_bias: the full-batch solver leaves the bias (the rows' last column of
# ones) out of the penalty, as scikit-learn's lbfgs models do. Raw pixels of
# +-100 beside a bias of 1 otherwise pin it near 0; on the standardized
# features (values about 1) penalizing it measured as well or better on
# validation (docs/accuracy.md).
TUNE_DEFAULTS = {
    "pixels": {"loss": "squared-hinge", "reg_top": 10.0, "free_bias": True},
    "hog": {"loss": "squared-hinge", "reg_top": 300.0, "free_bias": False},
    "kmeans": {"loss": "squared-hinge", "reg_top": 10.0, "free_bias": False},
}
REG_DECADES = 6
LBFGS_MAX_ITERS = 500
# The default path may go this many half-decade steps past either end of its
# range when the best reg is at that end (a range given with --reg bounds it).
REG_EXTEND = 4
# Each reg of a path is solved for ranking to a gradient 1e-3 times its initial
# size or this many L-BFGS iterations, whichever comes first (the regs past
# the best are the ill-conditioned ones; 1% of the optimum takes ~30 from W = 0
# on kmeans features), so selection costs about 3 single runs (docs/accuracy.md).
PROBE_MAX_ITERS = 50
# The path stops this many regs past the best validation accuracy (on the real
# CIFAR-10 and Fashion-MNIST paths validation accuracy rises to one peak and
# falls, and the regs past the best are the costliest to solve).
TUNE_PATIENCE = 1
# After selection, the chosen reg is solved once more on train + val (all the
# labelled data), as scikit-learn's GridSearchCV refits, from the chosen W to
# a gradient REFIT_GTOL times its size at W = 0: on real CIFAR-10 the objective
# is then 7e-7 (kmeans) and 1e-5 (hog) above the optimum (scripts/bench_solver.py).
# 3e-3 measured 7e-6 / 1.4e-4 in fewer iterations, but on Fashion-MNIST it left
# the refit at the chosen probe (1 to 12 iterations) and 0.2 points lower on
# held-out training images (docs/accuracy.md).
REFIT = True
REFIT_GTOL = 1e-3

ProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)`` while features are learned or extracted;
stage is 'k-means' (iterations) or 'features' (images)."""


@dataclass
class TrainRequest:
    """What ``svmtool train`` was asked for."""

    lrs: list[float]
    regs: list[float]
    delta: float = 1.0
    iters: int = 1500
    batch_size: int = 200
    seed: int = 0
    dtype: str = "float32"
    data: str = "cifar10"
    data_dir: Path | None = None
    num_train: int | None = None
    num_val: int | None = None
    init_scale: float = 1e-3  # CS231n's LinearClassifier.train: W = 0.001 * randn
    features: str = "pixels"
    centroids: int = KMEANS_DEFAULTS["centroids"]
    patches: int | None = None  # None: default_patches(training images, centroids)
    kmeans_iters: int = KMEANS_DEFAULTS["kmeans_iters"]
    kmeans_tol: float = KMEANS_TOL  # stop k-means early (0: every --kmeans-iters)
    use_cache: bool = True
    lr_decay: float = 1.0
    loss: str = "hinge"
    solver: str = "sgd"  # sgd (minibatches, lr) or lbfgs (full batch, to convergence)
    tune: bool = False  # choose reg (lbfgs) or lr and reg (sgd) on the validation split
    cache_dir: Path | None = None  # the feature cache (default: the user's cache folder)
    image_size: tuple[int, int] | None = None  # (height, width) an image folder is read at
    labels: str = "fine"  # cifar100: fine (100 classes) or coarse (20 superclasses)


@dataclass
class TrainOutcome:
    """Every configuration's result, and the best model (None if all diverged)."""

    grid: list[dict]
    best: int | None
    model: Model | None
    timings: dict
    sizes: dict
    diverged: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    selection: dict | None = None  # how the settings were chosen (lbfgs path / tuned grid)


def option_name(name: str) -> str:
    """'batch_size' -> '--batch-size': a setting as the user types it."""
    return "--" + name.replace("_", "-")


def parse_floats(text: str, name: str) -> list[float]:
    """'1e-7,5e-7' -> [1e-7, 5e-7]; ``name`` is the option ("lr", "sweep-delta")."""
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            values.append(float(part))
        except ValueError:
            raise BadValue(
                option_name(name), f"{text!r} is not a number or a comma-separated list of numbers"
            ) from None
    if len(set(values)) != len(values):
        raise BadValue(option_name(name), f"{text!r} lists a value twice")
    return values


def log_between(values: list[float], count: int = 3) -> list[float]:
    """``count`` log-spaced values from min(values) to max(values); one if they agree."""
    lo, hi = min(values), max(values)
    if lo <= 0 or lo == hi:
        return sorted(set(values))
    return [float(v) for v in np.logspace(np.log10(lo), np.log10(hi), count)]


def train_plan(
    features: str,
    lr: str | None,
    reg: str | None,
    loss: str | None,
    solver: str | None,
    tune: bool,
) -> dict:
    """What ``train`` does with the options as typed (None: not given).

    Returns lrs, regs (for the solver to try), loss, solver, tune and the
    default iteration budget. The rules: pixels without --tune keep CS231n's
    recipe (SGD, hinge, lr 1e-7, reg 2.5e4); --lr means SGD; otherwise L-BFGS.
    With neither --lr nor --reg, hog and kmeans (and --tune anywhere) choose
    their settings on the validation split; --lr/--reg given with --tune bound it.
    """
    from svmtool.core.loss import LOSSES

    check_choice("--features", features, TRAIN_DEFAULTS)
    if solver is not None:
        check_choice("--solver", solver, SOLVERS)
    if loss is not None:
        check_choice("--loss", loss, LOSSES)
    defaults = TRAIN_DEFAULTS[features]
    lrs = parse_floats(lr, "lr") if lr is not None else None
    regs = parse_floats(reg, "reg") if reg is not None else None
    if solver is None:
        solver = "sgd" if lr is not None or (features == "pixels" and not tune) else "lbfgs"
    if solver == "lbfgs" and lrs is not None:
        raise BadValue("--lr", "applies to --solver sgd: lbfgs (full batch) has no learning rate")
    selecting = tune or (lr is None and reg is None and (features != "pixels" or solver == "lbfgs"))
    if loss is None:
        # SGD keeps the notes' hinge (its default learning rates are tuned for it;
        # the squared hinge's larger gradients make them overshoot).
        loss = TUNE_DEFAULTS[features]["loss"] if solver == "lbfgs" else "hinge"
    if solver == "lbfgs":
        return {
            "lrs": [],
            "regs": regs or [],
            "loss": loss,
            "solver": solver,
            "tune": selecting,
            "iters": LBFGS_MAX_ITERS,
        }
    if selecting:
        # A one-pass SGD grid around the defaults (or between the given bounds).
        lrs = log_between(lrs) if lrs else [defaults["lr"] * f for f in (1 / 3, 1, 3)]
        regs = log_between(regs) if regs else [defaults["reg"] * f for f in (0.1, 1, 10)]
    return {
        "lrs": lrs or [defaults["lr"]],
        "regs": regs or [defaults["reg"]],
        "loss": loss,
        "solver": solver,
        "tune": selecting,
        "iters": defaults["iters"],
    }


def check_seed(seed: int) -> None:
    """numpy seeds must be non-negative; say so before anything is loaded."""
    if seed < 0:
        raise BadValue("--seed", f"must be >= 0, got {seed}")


def data_source_name(source: str) -> str:
    """How the model file records its data: a user's .npz by absolute path, so
    evaluate and gradcheck find it from any folder."""
    if source in NAMED_DATASETS:
        return source
    return str(Path(source).expanduser().resolve())
