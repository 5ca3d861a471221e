"""The jobs behind the commands: load, split, preprocess, train, evaluate.

Each function returns plain results; the CLI renders them.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool import __version__
from svmtool.core.features import KINDS, Features
from svmtool.core.train import (
    SettingError,
    StepFn,
    accuracy,
    check_settings,
    divergence_cause,
    sgd_grid,
)
from svmtool.errors import BadValue, SvmtoolError, check_choice
from svmtool.io.data import (
    CIFAR100,
    DOWNLOADABLE,
    NAMED_DATASETS,
    Dataset,
    Split,
    default_data_dir,
    load_dataset,
    mean_image,
    preprocess,
    split,
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
# After selection, the chosen reg is solved once more on train + val (all the
# labelled data), as scikit-learn's GridSearchCV refits.
REFIT = True

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


def cifar_folder(data_dir: Path | None) -> Path:
    """The folder CIFAR-10 is read from, absolute, as the model file records it."""
    return (data_dir if data_dir is not None else default_data_dir()).expanduser().resolve()


def load_split(
    source: str,
    data_dir: Path | None,
    seed: int,
    image_size: tuple[int, int] | None = None,
    progress: ProgressFn | None = None,
    labels: str = "fine",
    **sizes: int | None,
) -> tuple[Dataset, Split]:
    dataset = load_dataset(
        source, data_dir, image_size=image_size, progress=progress, labels=labels
    )
    return dataset, split(dataset, seed=seed, **sizes)


@dataclass
class PreparedData:
    """Preprocessed rows for training: X_train in a seeded random order."""

    X_train: np.ndarray  # (num_train, D+1)
    y_train: np.ndarray
    X_val: np.ndarray  # (num_val, D+1)
    y_val: np.ndarray
    mean: np.ndarray  # (H, W, C) float64
    class_names: list[str]
    load_seconds: float
    split_rule: str = "cs231n"
    split_description: str = ""
    test_count: int = 0  # test images the data holds (evaluate uses them, train does not)
    data_dir: Path | None = None  # where CIFAR-10 was read from; None for other data
    warnings: list[str] = field(default_factory=list)
    data_report: dict | None = None  # what loading an image folder found (for --json)
    features: Features = field(default_factory=Features)
    notes: list[str] = field(default_factory=list)  # for the user, before training
    feature_seconds: float = 0.0
    feature_timings: dict = field(default_factory=dict)  # dictionary / extraction seconds
    batch_size: int = 0  # what SGD will use: the request, or all rows if there are fewer


FILE_CHANNELS = (1, 3)  # what an image file becomes: grayscale or RGB


def model_uses(image_shape: tuple[int, ...]) -> list[str]:
    """What a model of images of this shape cannot be used for, said at train time
    (a warning), not discovered later by predict."""
    channels = image_shape[2]
    if channels in FILE_CHANNELS:
        return []
    fix = (
        " If they are RGBA, save X_train=X_train[..., :3] and X_test=X_test[..., :3] to"
        " train a model that predicts image files."
        if channels == 4
        else ""
    )
    return [
        f"the images have {channels} channels: predict reads PNG and JPEG files as 1 or 3"
        " channels, so it cannot use this model (evaluate and gradcheck can; visualize shows"
        f" the channels' mean as grey).{fix}"
    ]


def prepare_training(request: TrainRequest, progress: ProgressFn | None = None) -> PreparedData:
    """Check the request, load and split the data, preprocess it (or turn it into features)."""
    check_choice("--dtype", request.dtype, DTYPES)
    check_choice("--features", request.features, KINDS)
    try:
        check_settings(request.lrs, request.regs, request.delta, request.iters, request.batch_size)
    except SettingError as exc:
        raise BadValue(option_name(exc.name), exc.problem) from None
    if not 0 < request.lr_decay <= 1:
        raise BadValue("--lr-decay", f"must be in (0, 1], got {request.lr_decay}")
    from svmtool.core.loss import LOSSES

    if request.loss not in LOSSES:
        raise BadValue("--loss", f"must be {' or '.join(LOSSES)}, got {request.loss!r}")
    if request.solver not in SOLVERS:
        raise BadValue("--solver", f"must be {' or '.join(SOLVERS)}, got {request.solver!r}")
    check_seed(request.seed)
    if not (request.init_scale >= 0 and np.isfinite(request.init_scale)):
        raise BadValue("--init-scale", f"must be >= 0, got {request.init_scale}")
    for name in ("num_train", "num_val"):
        value = getattr(request, name)
        least = 1 if name == "num_train" else 0
        if value is not None and value < least:
            raise BadValue(option_name(name), f"must be >= {least}, got {value}")
    _check_feature_options(request)
    dtype = DTYPES[request.dtype]
    t0 = time.perf_counter()
    downloaded = request.data in DOWNLOADABLE
    folder = cifar_folder(request.data_dir) if downloaded else request.data_dir
    dataset, parts = load_split(
        request.data,
        folder,
        request.seed,
        image_size=request.image_size,
        progress=progress,
        labels=request.labels,
        num_train=request.num_train,
        num_val=request.num_val,
    )
    configurations = len(request.lrs) * len(request.regs)
    if configurations > 1 and parts.val.size == 0:
        # The best of a grid is chosen by validation accuracy; by training
        # accuracy it would be the least regularized, not the best.
        raise SvmtoolError(
            f"a grid of {configurations} configurations is chosen by validation accuracy, and"
            f" there are no validation images (--num-val 0): give --num-val N, or one --lr and"
            " one --reg"
        )
    if request.features == "kmeans" and request.patches is None:
        request = dataclasses.replace(
            request, patches=default_patches(int(parts.train.size), request.centroids)
        )
    _check_feature_request(request, dataset.image_shape)
    check_memory(request, dataset.image_shape, parts, len(dataset.class_names))
    mean = mean_image(dataset.train_images, parts.train)
    labels = np.asarray(dataset.train_labels)
    uses = model_uses(dataset.image_shape)
    if request.features != "pixels":
        t1 = time.perf_counter()
        built = build_features(dataset, parts, request, dtype, progress)
        prepared = PreparedData(
            X_train=built.X_train,
            y_train=labels[parts.train],
            X_val=built.X_val,
            y_val=labels[parts.val],
            mean=mean,
            class_names=list(dataset.class_names),
            load_seconds=t1 - t0,
            split_rule=parts.rule,
            split_description=parts.description,
            test_count=int(dataset.test_images.shape[0]),
            data_dir=folder if downloaded else None,
            warnings=list(parts.warnings) + uses,
            features=built.features,
            notes=built.notes,
            feature_seconds=time.perf_counter() - t1,
            feature_timings=built.timings,
        )
    else:
        # parts.train is a seeded permutation: the rows come out shuffled at no
        # extra cost, and SGD walks them as views.
        prepared = PreparedData(
            X_train=preprocess(dataset.train_images, mean, parts.train, dtype),
            y_train=labels[parts.train],
            X_val=preprocess(dataset.train_images, mean, parts.val, dtype),
            y_val=labels[parts.val],
            mean=mean,
            class_names=list(dataset.class_names),
            load_seconds=0.0,
            split_rule=parts.rule,
            split_description=parts.description,
            test_count=int(dataset.test_images.shape[0]),
            data_dir=folder if downloaded else None,
            warnings=list(parts.warnings) + uses,
        )
        prepared.load_seconds = time.perf_counter() - t0
    prepared.notes[:0] = dataset.notes
    prepared.data_report = dataset.report
    n = prepared.X_train.shape[0]
    prepared.batch_size = min(request.batch_size, n)
    if request.batch_size > n and request.solver == "sgd":
        prepared.notes.append(
            f"--batch-size {request.batch_size} is larger than the {n} training images:"
            f" every step uses all {n} (full-batch gradient descent)"
        )
    return prepared


# --- memory -------------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def check_memory(
    request: TrainRequest, image_shape: tuple[int, ...], parts: Split, num_classes: int
) -> None:
    """Refuse, before anything is allocated, sizes that cannot fit in the memory this
    process may use, naming the options that ask for it (estimates of the big
    arrays; small ones and Python's own are left out)."""
    from svmtool.core import features as F
    from svmtool.core import kmeans as K
    from svmtool.io.npzfile import usable_memory

    limit = usable_memory()
    if limit is None:
        return
    itemsize = np.dtype(DTYPES[request.dtype]).itemsize
    n_train, n = int(parts.train.size), int(parts.train.size + parts.val.size)

    def refuse(what: str, parts_: list[tuple[str, int]], advice: str) -> None:
        total = sum(b for _, b in parts_)
        if total <= limit:
            return
        big = [(label, b) for label, b in sorted(parts_, key=lambda p: -p[1]) if b >= total / 100]
        shown = ", ".join(f"{label}: {_gb(b)}" for label, b in big)
        raise SvmtoolError(
            f"{what} needs about {_gb(total)} of memory ({shown}), more than the"
            f" {_gb(limit)} this process may use; {advice}"
        )

    if request.features == "kmeans":
        fit = K.fit_bytes(request.centroids, request.patches, image_shape[2])
        refuse(
            f"k-means with --centroids {request.centroids} and --patches {request.patches}",
            [(f"{request.patches} patches", fit["patches"]),
             (f"{request.centroids} centroids", fit["centroids"])],
            "use a smaller --centroids or --patches",
        )  # fmt: skip
        width = 4 * request.centroids
    elif request.features == "hog":
        width = F.hog_dim(image_shape)
    else:
        width = int(np.prod(image_shape))
    if request.features != "pixels":
        extraction = n * width * 4
        if request.features == "kmeans":
            extraction += K.extract_bytes(request.centroids, image_shape)
        option = f"--centroids {request.centroids}" if request.features == "kmeans" else "hog"
        refuse(
            f"{width} features per image ({option}) for {n} images",
            [("the raw features", extraction),
             ("their standardized rows", n * (width + 1) * itemsize)],
            "use a smaller --centroids or --num-train" if request.features == "kmeans"
            else "use a smaller --num-train",
        )  # fmt: skip
    configs = len(request.lrs) * len(request.regs)
    d = width + 1
    grid = f"{configs} configurations of --lr x --reg" if configs > 1 else "the model"
    refuse(
        f"training {grid} for --iters {request.iters}",
        [
            (f"the rows ({n} images x {d} values, --num-train)", n * d * itemsize),
            (f"a loss per step and configuration (--iters {request.iters})",
             request.iters * configs * 8),
            (f"W for {grid}", 3 * configs * d * num_classes * itemsize),
            ("the batch scores (--batch-size)",
             3 * min(request.batch_size, n_train) * configs * num_classes * itemsize),
        ],
        "use a smaller --iters, fewer --lr/--reg values or a smaller --num-train",
    )  # fmt: skip


# --- features -----------------------------------------------------------------------------


def feature_cache(cache_dir: Path | None = None):
    """The feature cache: ``cache_dir`` (--cache-dir), else $SVMTOOL_CACHE_DIR, else the
    user's cache folder. Never the data folder: a dataset inside a student's
    assignment tree must not gain gigabytes beside it."""
    from svmtool.io.featurecache import FeatureCache, default_cache_dir

    return FeatureCache(cache_dir if cache_dir is not None else default_cache_dir())


def feature_params(request: TrainRequest, image_shape: tuple[int, ...] = (32, 32, 3)) -> dict:
    """The settings that define a feature pipeline (and key its cache entries)."""
    from svmtool.core import features as F
    from svmtool.core import kmeans as K

    if request.features == "hog":
        return {
            "orientations": F.ORIENTATIONS,
            "cell": F.hog_cell_size(image_shape[:2]),
            "power": F.HOG_POWER,
            "colour": True,
            "hue_bins": F.HUE_BINS,
            "unsigned": True,
            "std_eps": F.HOG_STD_EPS,
        }
    return {
        "centroids": request.centroids,
        "patches": request.patches,
        "kmeans_iters": request.kmeans_iters,
        "seed": request.seed,
        "patch": K.PATCH,
        "norm_eps": K.NORM_EPS,
        "whiten_eps": K.WHITEN_EPS,
        "std_eps": 0.01,
        # Absent (models and cache entries from before the early stop): 0, every iteration.
        **({"kmeans_tol": request.kmeans_tol} if request.kmeans_tol > 0 else {}),
    }


@dataclass
class BuiltFeatures:
    X_train: np.ndarray  # (num_train, F+1), standardized, bias last, parts.train order
    X_val: np.ndarray  # (num_val, F+1)
    features: Features
    notes: list[str]
    timings: dict = field(default_factory=dict)


def _check_feature_options(request: TrainRequest) -> None:
    """The k-means options, before any data is loaded."""
    if request.features == "kmeans":
        if request.centroids < 1:
            raise BadValue("--centroids", f"must be >= 1, got {request.centroids}")
        if request.patches is not None and request.patches < request.centroids:
            raise BadValue(
                "--patches", f"must be >= --centroids ({request.centroids}), got {request.patches}"
            )
        if request.kmeans_iters < 1:
            raise BadValue("--kmeans-iters", f"must be >= 1, got {request.kmeans_iters}")


def _check_feature_request(request: TrainRequest, image_shape: tuple[int, ...]) -> None:
    from svmtool.core.kmeans import PATCH

    _check_feature_options(request)
    if request.features == "kmeans" and min(image_shape[:2]) < PATCH:
        raise SvmtoolError(
            f"k-means features need images of at least {PATCH} x {PATCH}, got"
            f" {image_shape[0]} x {image_shape[1]}"
        )


def build_features(
    dataset: Dataset,
    parts: Split,
    request: TrainRequest,
    dtype: type,
    progress: ProgressFn | None = None,
) -> BuiltFeatures:
    """Fit the feature pipeline on the training split and turn train and val into rows.

    The fitted pipeline (k-means) and the raw features of the train + val
    images are read from the feature cache when an entry with the same data
    fingerprint and settings exists, and stored there otherwise.
    """
    from svmtool.core import features as F
    from svmtool.io.featurecache import fingerprint

    _check_feature_request(request, dataset.image_shape)
    params = feature_params(request, dataset.image_shape)
    cache = feature_cache(request.cache_dir) if request.use_cache else None
    source = data_source_name(request.data)
    notes: list[str] = []
    images = dataset.train_images
    train_sorted = np.sort(parts.train)

    arrays: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    if request.features == "kmeans":
        key = {
            "what": "kmeans-fit",
            "data": fingerprint(images, train_sorted),
            "params": params,
        }
        found = cache.load(key, dictionary_layout(request, dataset.image_shape)) if cache else None
        if found is not None and dictionary_problem(found) is not None:
            problem = dictionary_problem(found)
            notes.append(
                f"the feature cache entry {cache.path(key)} is damaged (whiten {problem});"
                " learning the dictionary again"
            )
            found = None
        elif found is None and cache is not None and cache.damage:
            notes.append(f"{cache.damage}; learning the dictionary again")
        if found is not None:
            arrays = {k: np.array(v) for k, v in found.items()}
            notes.append(f"k-means dictionary read from the feature cache ({cache.path(key)})")
        else:
            from svmtool.core import kmeans as K

            ran = [0]

            def on_iteration(done: int, total: int) -> None:
                ran[0] = done
                if progress:
                    progress("k-means", done, total)

            arrays = K.fit(
                images[train_sorted],
                request.centroids,
                request.patches,
                request.kmeans_iters,
                np.random.default_rng(request.seed),
                on_iteration,
                tol=request.kmeans_tol,
            )
            if ran[0] < request.kmeans_iters:
                notes.append(
                    f"k-means converged after {ran[0]} of {request.kmeans_iters} iterations"
                    f" ({request.patches} patches)"
                )
            if cache:
                about = (
                    f"k-means dictionary (K = {request.centroids}) of {train_sorted.size}"
                    f" training images of {source}"
                )
                where = store_in_cache(cache, key, arrays, notes, about)
                if where is not None:
                    notes.append(f"k-means dictionary stored in the feature cache ({where})")

    features = Features(request.features, params, arrays)
    rows = np.sort(np.concatenate([parts.train, parts.val]))
    t1 = time.perf_counter()
    raw = cached_raw_features(features, images, rows, cache, notes, progress, source)
    t2 = time.perf_counter()
    pos_train = np.searchsorted(rows, parts.train)
    pos_val = np.searchsorted(rows, parts.val)
    mean, scale = F.standardization(raw, eps=params["std_eps"], rows=pos_train)
    features.arrays = {**arrays, "mean": mean, "scale": scale}
    return BuiltFeatures(
        X_train=F.standardized_rows(raw, mean, scale, pos_train, dtype),
        X_val=F.standardized_rows(raw, mean, scale, pos_val, dtype),
        features=features,
        notes=notes,
        timings={
            "dictionary_seconds": t1 - t0,
            "extraction_seconds": t2 - t1,
            "standardization_seconds": time.perf_counter() - t2,
        },
    )


def cached_raw_features(
    features: Features,
    images: np.ndarray,
    rows: np.ndarray,
    cache,
    notes: list[str],
    progress: ProgressFn | None = None,
    source: str = "",
) -> np.ndarray:
    """Raw features (len(rows), F) of images[rows], from the cache when it has them;
    ``source`` names the data in the entry's description."""
    from svmtool.core import features as F
    from svmtool.io.featurecache import array_digest, fingerprint

    fitted = {k: v for k, v in features.arrays.items() if k not in ("mean", "scale")}
    key = {
        "what": "features",
        "kind": features.kind,
        "params": features.params,
        "fit": array_digest(fitted),
        "data": fingerprint(images, rows),
    }
    if cache is not None:
        width = F.feature_dim(features, tuple(images.shape[1:]))
        found = cache.load(key, {"raw": ((int(rows.size), width), np.float32)})
        if found is None and cache.damage:
            notes.append(f"{cache.damage}; computing the features again")
        if found is not None:
            where = cache.path(key)
            notes.append(f"features of {rows.size} images read from the feature cache ({where})")
            return found["raw"]

    def on_images(done: int, total: int) -> None:
        if progress:
            progress("features", done, total)

    raw = F.raw_features(Features(features.kind, features.params, fitted), images[rows], on_images)
    if cache is not None:
        about = f"{features.kind} features of {rows.size} images" + (
            f" of {source}" if source else ""
        )
        where = store_in_cache(cache, key, {"raw": raw}, notes, about)
        if where is not None:
            notes.append(f"features of {rows.size} images stored in the feature cache ({where})")
    return raw


def store_in_cache(
    cache, key: dict, arrays: dict[str, np.ndarray], notes: list[str], about: str = ""
):
    """``cache.store``; a cache that cannot be written is said once in ``notes``
    and the run goes on without it (None). ``about``: what the entry is."""
    from svmtool.io.featurecache import CacheNotWritten

    try:
        return cache.store(key, arrays, about)
    except CacheNotWritten as exc:
        message = f"Warning: {exc}"
        if message not in notes:
            notes.append(message)
        return None


def dictionary_layout(request: TrainRequest, image_shape: tuple[int, ...]) -> dict:
    """What a cached k-means dictionary must hold for this request: name -> (shape, dtype)."""
    from svmtool.core.kmeans import patch_dim

    p = patch_dim(image_shape[2])
    return {
        "centroids": ((request.centroids, p), np.float32),
        "whiten_mean": ((p,), np.float64),
        "whiten": ((p, p), np.float64),
    }


def dictionary_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """Why a k-means dictionary cannot be used (its values' own rules), or None."""
    from svmtool.core.kmeans import whitening_problem

    return whitening_problem(np.asarray(arrays["whiten"]))


def run_training(
    request: TrainRequest,
    prepared: PreparedData | None = None,
    on_step: StepFn | None = None,
    report_every: int = 10,
    on_point=None,
    on_iteration=None,
) -> TrainOutcome:
    """Train every (lr, reg) pair together on prepared data, then evaluate.

    ``on_step(iteration, losses)`` is called every ``report_every`` steps and at the last.
    With ``request.solver == 'lbfgs'`` the regs are solved by ``run_full_batch``
    instead (``on_point``/``on_iteration`` report its progress).
    """
    if prepared is None:
        prepared = prepare_training(request)
    if request.solver == "lbfgs":
        return run_full_batch(request, prepared, on_point, on_iteration)
    X_train, y_train = prepared.X_train, prepared.y_train
    X_val, y_val = prepared.X_val, prepared.y_val
    t1 = time.perf_counter()

    pairs = list(itertools.product(request.lrs, request.regs))
    num_classes = len(prepared.class_names)
    if y_train.max(initial=0) >= num_classes:
        raise SvmtoolError(f"labels go up to {y_train.max()} but there are {num_classes} classes")
    result = sgd_grid(
        X_train,
        y_train,
        num_classes,
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        delta=request.delta,
        iters=request.iters,
        batch_size=request.batch_size,
        rng=np.random.default_rng(request.seed),
        init_scale=request.init_scale,
        on_step=on_step,
        lr_decay=request.lr_decay,
        loss=request.loss,
        X_val=X_val,
        y_val=y_val,
        report_every=report_every,
    )
    t2 = time.perf_counter()
    train_acc = accuracy(result.weights, X_train, y_train)
    val_acc = accuracy(result.weights, X_val, y_val)
    t3 = time.perf_counter()

    grid = []
    for k, (lr, reg) in enumerate(pairs):
        diverged = bool(result.diverged_at[k] >= 0)
        history = result.losses[:, k]
        grid.append(
            {
                "lr": lr,
                "reg": reg,
                "diverged": diverged,
                "diverged_at": int(result.diverged_at[k]) if diverged else None,
                "diverged_because": divergence_cause(
                    lr,
                    reg,
                    request.delta,
                    int(result.diverged_at[k]),
                    num_classes=num_classes,
                    batch_size=result.batch_size,
                    dtype=X_train.dtype.type,
                )
                if diverged
                else None,
                "train_accuracy": None if diverged else float(train_acc[k]),
                # None, not NaN, without a validation split: undefined, in strict JSON.
                "val_accuracy": None if diverged or not X_val.shape[0] else float(val_acc[k]),
                "final_loss": None if diverged else float(history[-1]),
            }
        )
    alive = [k for k, g in enumerate(grid) if not g["diverged"]]
    best = None
    if alive:
        # Best by validation accuracy (a grid without a validation split is refused
        # in prepare_training; a single configuration is its own best).
        best = max(alive, key=lambda k: (grid[k]["val_accuracy"] or 0.0, -k))
        grid[best]["best"] = True
    train_seconds = t2 - t1
    timings = {
        "load_seconds": prepared.load_seconds,
        "feature_seconds": prepared.feature_seconds,
        **prepared.feature_timings,
        "train_seconds": train_seconds,
        "evaluate_seconds": t3 - t2,
        "iterations_per_second": request.iters / train_seconds if train_seconds > 0 else None,
    }
    sizes = {
        "train": int(X_train.shape[0]),
        "val": int(X_val.shape[0]),
        "test": prepared.test_count,
        "split": prepared.split_rule,
        "split_description": prepared.split_description,
    }
    model = None
    if best is not None:
        settings = {
            "lr": grid[best]["lr"],
            "reg": grid[best]["reg"],
            "delta": request.delta,
            "iters": request.iters,
            "batch_size": result.batch_size,
            "batch_size_requested": request.batch_size,
            "seed": request.seed,
            "dtype": request.dtype,
            "data": data_source_name(request.data),
            "data_dir": str(prepared.data_dir) if prepared.data_dir else None,
            **({"labels": request.labels} if request.data == CIFAR100 else {}),
            "split": prepared.split_rule,
            "num_train": sizes["train"],
            "num_val": sizes["val"],
            "sampling": "shuffled epochs",
            "init_scale": request.init_scale,
            "features": prepared.features.kind,
            "lr_decay": request.lr_decay,
            "loss": request.loss,
            "solver": "sgd",
        }
        from svmtool.core.solver import objective

        model = Model(
            W=result.weights[best],
            mean_image=prepared.mean,  # float64: exactly what training subtracted
            class_names=prepared.class_names,
            settings=settings,
            metrics={
                "train_accuracy": grid[best]["train_accuracy"],
                "val_accuracy": grid[best]["val_accuracy"],
                "final_loss": grid[best]["final_loss"],
                # The objective on the whole training split at the saved W (the
                # minibatch losses above are noisy estimates of it).
                "objective": objective(
                    result.weights[best],
                    X_train,
                    y_train,
                    grid[best]["reg"],
                    loss=request.loss,
                    delta=request.delta,
                ),
                **timings,
            },
            loss_history=result.losses[:, best],
            grid=grid if len(grid) > 1 else [],
            svmtool_version=__version__,
            features=prepared.features,
        )
    return TrainOutcome(
        grid=grid,
        best=best,
        model=model,
        timings=timings,
        sizes=sizes,
        diverged=[k for k, g in enumerate(grid) if g["diverged"]],
        warnings=list(prepared.warnings),
    )


def reg_path(request: TrainRequest, X_train: np.ndarray) -> list[float]:
    """The regs the full-batch solver tries, largest first: ``request.regs`` as
    given, or with ``request.tune`` a half-decade path between their ends (the
    feature set's default range when the request has no regs)."""
    from svmtool.core.solver import reg_range

    if not request.tune:
        return sorted(request.regs, reverse=True)
    if request.regs:
        top, bottom = max(request.regs), min(request.regs)
        if top == bottom:
            return [top]
        return reg_range(top, bottom)
    n = X_train.shape[0]
    sq = float(np.einsum("ij,ij->", X_train, X_train, dtype=np.float64)) / max(n, 1)
    top = TUNE_DEFAULTS[request.features]["reg_top"] * sq / max(n, 1)
    return reg_range(top, top * 10.0**-REG_DECADES)


def run_full_batch(
    request: TrainRequest, prepared: PreparedData, on_point=None, on_iteration=None
) -> TrainOutcome:
    """Solve the objective exactly (L-BFGS on all training rows) for each reg of
    ``reg_path``, warm-starting each from the last, and keep the best by
    validation accuracy. With ``request.tune`` the path stops once validation
    accuracy has not improved for 2 regs in a row; without it every reg is solved.
    """
    from svmtool.core.solver import regularization_path

    X_train, y_train = prepared.X_train, prepared.y_train
    X_val, y_val = prepared.X_val, prepared.y_val
    num_classes = len(prepared.class_names)
    if y_train.max(initial=0) >= num_classes:
        raise SvmtoolError(f"labels go up to {y_train.max()} but there are {num_classes} classes")
    regs = reg_path(request, X_train)
    free_bias = TUNE_DEFAULTS[request.features]["free_bias"]
    if len(regs) > 1 and X_val.shape[0] == 0:
        raise SvmtoolError("choosing reg needs a validation split; give --num-val or one --reg")
    refitting = bool(request.tune and X_val.shape[0] and REFIT)
    t1 = time.perf_counter()
    try:
        path = regularization_path(
            X_train,
            y_train,
            num_classes,
            regs,
            X_val if X_val.shape[0] else X_train,
            y_val if X_val.shape[0] else y_train,
            loss=request.loss,
            delta=request.delta,
            max_iters=request.iters,
            patience=2 if request.tune else len(regs),
            extend=REG_EXTEND if request.tune and not request.regs else 0,
            probe_max_iters=PROBE_MAX_ITERS if request.tune else None,
            free_bias=free_bias,
            polish=not refitting,  # the refit solves the chosen reg to full accuracy
            on_point=on_point,
            on_iteration=on_iteration,
        )
    except ValueError as exc:
        raise SvmtoolError(str(exc)) from None
    t2 = time.perf_counter()
    solution = path.solution
    refit = None
    if refitting:
        # scikit-learn's GridSearchCV refit: the chosen setting, all the data.
        # reg scales as 1/N (liblinear's C stays), from the chosen W.
        solution, refit = refit_all(
            request, prepared, path.points[path.best].reg, solution, free_bias
        )
    t3 = time.perf_counter()
    grid = []
    for k, point in enumerate(path.points):
        grid.append(
            {
                "lr": None,
                "reg": point.reg,
                "diverged": False,
                "diverged_at": None,
                "diverged_because": None,
                "train_accuracy": point.train_accuracy,
                "val_accuracy": point.val_accuracy if X_val.shape[0] else None,
                "final_loss": point.objective,
                "objective": point.objective,
                "iterations": point.iterations,
                "converged": point.converged,
                "seconds": point.seconds,
                **({"best": True} if k == path.best else {}),
            }
        )
    best = path.best
    train_seconds = t3 - t1
    timings = {
        "load_seconds": prepared.load_seconds,
        "feature_seconds": prepared.feature_seconds,
        **prepared.feature_timings,
        "train_seconds": train_seconds,
        "evaluate_seconds": 0.0,  # accuracies are measured along the path
        "iterations_per_second": (
            sum(p.iterations for p in path.points) / train_seconds if train_seconds > 0 else None
        ),
    }
    sizes = {
        "train": int(X_train.shape[0]),
        "val": int(X_val.shape[0]),
        "test": prepared.test_count,
        "split": prepared.split_rule,
        "split_description": prepared.split_description,
    }
    selection = {
        "method": "regularization path" if request.tune else "given regs",
        "range": [regs[0], regs[-1]],
        "tried": len(path.points),
        "skipped": path.skipped,
        "chosen_reg": path.points[best].reg,
        "seconds": t2 - t1,
        "extended": [p.reg for p in path.points if p.reg not in regs],
        "refit": refit,
    }
    settings = {
        "reg": refit["reg"] if refit else path.points[best].reg,
        "delta": request.delta,
        "iters": request.iters,
        # its probe's and the polish's, or the refit's
        "iterations": path.points[best].iterations + (refit["iterations"] if refit else 0),
        "batch_size": sizes["train"],
        "seed": request.seed,
        "dtype": request.dtype,
        "data": data_source_name(request.data),
        "data_dir": str(prepared.data_dir) if prepared.data_dir else None,
        "split": prepared.split_rule,
        "num_train": sizes["train"],
        "num_val": sizes["val"],
        "sampling": "full batch",
        "features": prepared.features.kind,
        "loss": request.loss,
        "solver": "lbfgs",
        "tune": request.tune,
        "bias": "free" if free_bias else "penalized",  # in the objective's penalty or not
    }
    model = Model(
        W=solution.W,
        mean_image=prepared.mean,
        class_names=prepared.class_names,
        settings=settings,
        metrics={
            # After a refit: W's accuracy on the training split, and the chosen
            # reg's validation accuracy before the refit (val is in the refit).
            "train_accuracy": (
                float(accuracy(solution.W, X_train, y_train))
                if refit
                else grid[best]["train_accuracy"]
            ),
            "val_accuracy": grid[best]["val_accuracy"],
            "final_loss": solution.objective,
            "objective": solution.objective,
            "converged": solution.converged,
            "gradient_ratio": solution.grad_ratio,
            **timings,
        },
        loss_history=solution.history,
        grid=grid if len(grid) > 1 else [],
        svmtool_version=__version__,
        features=prepared.features,
    )
    model.settings["selection"] = selection
    return TrainOutcome(
        grid=grid,
        best=best,
        model=model,
        timings=timings,
        sizes=sizes,
        warnings=list(prepared.warnings),
        selection=selection,
    )


def refit_all(request: TrainRequest, prepared: PreparedData, reg: float, solution, free_bias):
    """Solve the chosen ``reg`` again on the training and validation rows together.

    reg is scaled by N_train / N_all (the data term is a mean, so the same
    balance of fit and penalty on more rows needs a proportionally smaller
    reg: liblinear's C is unchanged). Starts from the chosen solution W.
    Returns (solution, what the refit did for ``selection['refit']``).
    """
    from svmtool.core.solver import lbfgs

    t0 = time.perf_counter()
    n, m = prepared.X_train.shape[0], prepared.X_val.shape[0]
    X_all = np.concatenate([prepared.X_train, prepared.X_val])
    y_all = np.concatenate([prepared.y_train, prepared.y_val])
    scaled = reg * n / (n + m)
    final = lbfgs(
        X_all, y_all, len(prepared.class_names), scaled, loss=request.loss, delta=request.delta,
        W0=solution.W, max_iters=request.iters, free_bias=free_bias,
    )  # fmt: skip
    return final, {
        "rows": n + m,
        "reg": scaled,
        "iterations": final.iterations,
        "converged": final.converged,
        "objective": final.objective,
        "seconds": time.perf_counter() - t0,
    }
