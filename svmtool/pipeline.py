"""The training job behind svmtool train: load and split the data, preprocess it (or
make its features: trainfeatures.py), train by SGD over a grid or by L-BFGS along the
reg path, as the plan says (trainplan.py). Jobs that read a trained model are in
evaluation.py and gradbatch.py.

Each function returns plain results; svmtool/commands/ renders them.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
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
    Dataset,
    Split,
    default_data_dir,
    load_dataset,
    mean_image,
    preprocess,
    split,
)
from svmtool.io.model import Model
from svmtool.trainfeatures import (
    build_features,
    check_feature_options,
    check_feature_request,
    check_memory,
)
from svmtool.trainplan import (
    DTYPES,
    PROBE_MAX_ITERS,
    REFIT,
    REFIT_GTOL,
    REG_DECADES,
    REG_EXTEND,
    SOLVERS,
    TUNE_DEFAULTS,
    TUNE_PATIENCE,
    ProgressFn,
    TrainOutcome,
    TrainRequest,
    check_seed,
    data_source_name,
    default_patches,
    option_name,
)


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
    check_feature_options(request)
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
    check_feature_request(request, dataset.image_shape)
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
        pixels = Features()
        if request.solver == "lbfgs":
            # Raw pixel columns of very different spreads condition L-BFGS badly
            # (Fashion-MNIST's refit stopped at its iteration cap); standardized
            # as hog's features are, it converges. SGD keeps CS231n's raw rows.
            from svmtool.core.features import pixel_standardization, standardized_pixels

            pixels = pixel_standardization(dataset.train_images, parts.train)

        def rows(which: np.ndarray) -> np.ndarray:
            if pixels.arrays:
                return standardized_pixels(pixels, dataset.train_images, which, dtype)
            return preprocess(dataset.train_images, mean, which, dtype)

        prepared = PreparedData(
            X_train=rows(parts.train),
            y_train=labels[parts.train],
            X_val=rows(parts.val),
            y_val=labels[parts.val],
            features=pixels,
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
    from svmtool.core.solver import objective

    val_acc = accuracy(result.weights, X_val, y_val)
    saved_objective = None
    if len(pairs) == 1 and result.diverged_at[0] < 0 and X_train.shape[0]:
        # One configuration: the objective saved with the model and the training
        # accuracy come from one pass over X_train (~60 ms less at CIFAR's size).
        predictions = np.empty(X_train.shape[0], dtype=np.int64)
        saved_objective = objective(
            result.weights[0],
            X_train,
            y_train,
            pairs[0][1],
            loss=request.loss,
            delta=request.delta,
            predictions=predictions,
        )
        train_acc = np.array([(predictions == y_train).mean()])
    else:
        train_acc = accuracy(result.weights, X_train, y_train)
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
        if saved_objective is None:
            saved_objective = objective(
                result.weights[best],
                X_train,
                y_train,
                grid[best]["reg"],
                loss=request.loss,
                delta=request.delta,
            )
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
                "objective": saved_objective,
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
    accuracy has not improved for ``TUNE_PATIENCE`` regs in a row; without it
    every reg is solved.
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
            patience=TUNE_PATIENCE if request.tune else len(regs),
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
    reg: liblinear's C is unchanged). Starts from the chosen solution W and
    stops at ``REFIT_GTOL``.
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
        W0=solution.W, max_iters=request.iters, gtol=REFIT_GTOL, free_bias=free_bias,
    )  # fmt: skip
    return final, {
        "rows": n + m,
        "reg": scaled,
        "iterations": final.iterations,
        "converged": final.converged,
        "objective": final.objective,
        "seconds": time.perf_counter() - t0,
    }
