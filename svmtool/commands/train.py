"""svmtool train: its options, and its flow (prepare the data, train, save, render)."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated

import typer

from svmtool.commands.common import at_end, err, out, print_json, resolve_data_dir, say
from svmtool.commands.options import CacheDir, Data, DataDir, Delta, cache_switch, json_option
from svmtool.errors import BadValue, SvmtoolError, check_choice

Download = Annotated[
    bool,
    typer.Option(
        "--download",
        help="Fetch the named dataset (cifar10, cifar100, mnist...) first if it is missing.",
    ),
]
Labels = Annotated[
    str,
    typer.Option(
        "--labels",
        help="cifar100: fine (100 classes) or coarse (the 20 superclasses).",
        metavar="fine|coarse",
    ),
]
ImageSize = Annotated[
    str | None,
    typer.Option(
        "--image-size",
        help="Image folders: read every image at N x N or WIDTHxHEIGHT (default: the most"
        " common size when every image is at most 64 x 64, else 32 x 32).",
        metavar="N|WxH",
    ),
]
Lr = Annotated[
    str | None,
    typer.Option(
        "--lr",
        help="Learning rate, or a comma-separated list for a grid"
        " (default: pixels 1e-7, hog and kmeans 1e-2).",
        metavar="LR[,LR...]",
    ),
]
Reg = Annotated[
    str | None,
    typer.Option(
        "--reg",
        help="L2 strength, or a comma-separated list for a grid"
        " (default: pixels 2.5e4, hog 1e-2, kmeans 1e-4).",
        metavar="REG[,REG...]",
    ),
]
Iters = Annotated[
    int | None,
    typer.Option(
        "--iters", help="SGD steps (default: pixels 1500, hog and kmeans 5000).", metavar="N"
    ),
]
LrDecay = Annotated[
    float | None,
    typer.Option(
        "--lr-decay",
        help="Multiply the learning rate by this every 100 steps (default: pixels 1, hog and"
        " kmeans 0.95).",
        metavar="FLOAT",
    ),
]
Loss = Annotated[
    str | None,
    typer.Option(
        "--loss", help="hinge, or squared-hinge (the L2-SVM).", metavar="hinge|squared-hinge"
    ),
]
Solver = Annotated[
    str | None,
    typer.Option("--solver", help="sgd, or lbfgs (full batch, no --lr).", metavar="sgd|lbfgs"),
]
Tune = Annotated[
    bool, typer.Option("--tune", help="Choose reg (and lr with sgd) on the validation split.")
]
Features = Annotated[
    str,
    typer.Option(
        "--features",
        help="pixels (CS231n's rows), hog (HOG + hue histogram) or kmeans (Coates, Lee & Ng"
        " 2011: a learned dictionary of 6x6 patches).",
        metavar="pixels|hog|kmeans",
    ),
]
Centroids = Annotated[
    int | None,
    typer.Option(
        "--centroids",
        help="kmeans: dictionary size K (default 1600, as in the paper).",
        metavar="K",
    ),
]
Patches = Annotated[
    int | None,
    typer.Option(
        "--patches",
        help="kmeans: random training patches k-means learns from (default: 8 per training"
        " image, at least 64 per centroid, at most 400000).",
        metavar="N",
    ),
]
KmeansIters = Annotated[
    int | None,
    typer.Option("--kmeans-iters", help="kmeans: k-means iterations (default 50).", metavar="N"),
]
UseCache = Annotated[bool, cache_switch("Read and store features in the feature cache.")]
BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        help="Rows per minibatch (more than the training images: all of them).",
        metavar="N",
    ),
]
Seed = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Seeds W, the batches and, for data other than CIFAR-10, the validation split.",
        metavar="N",
    ),
]
Dtype = Annotated[
    str, typer.Option("--dtype", help="float32 (fast) or float64.", metavar="float32|float64")
]
NumTrain = Annotated[
    int | None,
    typer.Option(
        "--num-train",
        help="Training images (default: every image not in the validation split).",
        metavar="N",
    ),
]
NumVal = Annotated[
    int | None,
    typer.Option(
        "--num-val",
        help="Validation images (default: min(1000, N/10)); a grid needs at least 1.",
        metavar="N",
    ),
]
InitScale = Annotated[
    float,
    typer.Option("--init-scale", help="W starts as this times a standard normal.", metavar="FLOAT"),
]
PrintEvery = Annotated[
    int,
    typer.Option(
        "--print-every",
        help="Print the loss every N steps, as CS231n's notebook (0: only the progress bar).",
        metavar="N",
    ),
]
ModelOut = Annotated[
    Path, typer.Option("--model", help="Where to write the model.", metavar="FILE")
]


def train(
    data: Data = "cifar10",
    data_dir: DataDir = None,
    download_first: Download = False,
    labels: Labels = "fine",
    image_size: ImageSize = None,
    lr: Lr = None,
    reg: Reg = None,
    delta: Delta = 1.0,
    iters: Iters = None,
    lr_decay: LrDecay = None,
    loss: Loss = None,
    solver: Solver = None,
    tune: Tune = False,
    features: Features = "pixels",
    centroids: Centroids = None,
    patches: Patches = None,
    kmeans_iters: KmeansIters = None,
    use_cache: UseCache = True,
    cache_dir: CacheDir = None,
    batch_size: BatchSize = 200,
    seed: Seed = 0,
    dtype: Dtype = "float32",
    num_train: NumTrain = None,
    num_val: NumVal = None,
    init_scale: InitScale = 1e-3,
    print_every: PrintEvery = 0,
    model_path: ModelOut = Path("svm_model.npz"),
    as_json: Annotated[bool, json_option()] = False,
) -> None:
    """Train a linear SVM: minibatch SGD, or the L2-SVM solved by L-BFGS.

    Pixels: CS231n's recipe, but batches are shuffled epochs. hog, kmeans
    (no --lr/--reg) and --tune: the L2-SVM, reg chosen on validation
    (docs/accuracy.md). A comma-separated --lr and/or --reg trains every
    pair, keeps the best by validation. Features are cached (svmtool cache list).

    Split: CIFAR-10 keeps CS231n's (the last 1,000 training images validate);
    other data validates on a seeded, stratified sample. The test set is left
    for svmtool evaluate. How batches, splits and features work: docs/train.md.

    Example: svmtool train --lr 1e-7,5e-7 --reg 2.5e4,5e4
    """
    from svmtool.io import model as model_io
    from svmtool.pipeline import prepare_training, reg_path
    from svmtool.render.progress import feature_progress
    from svmtool.render.training import render_training, training_json, training_notices

    request = train_request(
        features, lr, reg, loss, solver, tune,
        delta=delta, iters=iters, batch_size=batch_size, seed=seed, dtype=dtype, data=data,
        data_dir=data_dir, num_train=num_train, num_val=num_val, init_scale=init_scale,
        use_cache=use_cache, cache_dir=cache_dir, lr_decay=lr_decay, image_size=image_size,
        labels=labels, centroids=centroids, patches=patches, kmeans_iters=kmeans_iters,
    )  # fmt: skip
    if print_every < 0:
        raise BadValue("--print-every", f"must be >= 0, got {print_every}")
    check_model_destination(model_path)
    # The model's temporary file is made now, so a folder that cannot take it
    # fails before training, not after; it is removed unless committed, and
    # the commit (the move into place) is the last step, after the output.
    pending = model_io.reserve(model_path)
    at_end(pending.discard)
    if download_first:
        download_if_missing(data, data_dir)
    with feature_progress(err) as progress:
        prepared = prepare_training(request, progress)
    for note in prepared.notes:
        say(note)
    for warning in prepared.warnings:
        say(f"Warning: {warning}")
    if request.solver == "lbfgs":
        outcome = train_full_batch(request, prepared, reg_path(request, prepared.X_train))
    else:
        outcome = train_sgd(request, prepared, request.iters, print_every)
    if outcome.model is None:
        raise diverged_error(outcome.grid, delta, dtype)
    model_io.save(outcome.model, pending)
    if as_json:
        print_json(training_json(model_path, outcome, prepared))
        pending.commit()
        return
    render_training(out, request, outcome, lr, reg)
    for notice in training_notices(request, outcome, lr, reg):
        say(notice)
    pending.commit()
    say(f"model written to {model_path}")


def train_request(features: str, lr, reg, loss, solver, tune: bool, *, iters, lr_decay,
                  image_size, centroids, patches, kmeans_iters, **settings):  # fmt: skip
    """The TrainRequest for these options: the plan for the feature set (defaults,
    solver, grid) with what the command line gave on top."""
    from svmtool.io.imagefolder import parse_image_size
    from svmtool.trainplan import TRAIN_DEFAULTS, TrainRequest, train_plan

    if features not in TRAIN_DEFAULTS:
        check_choice("--features", features, TRAIN_DEFAULTS)
    defaults = TRAIN_DEFAULTS[features]
    plan = train_plan(features, lr, reg, loss, solver, tune)
    return TrainRequest(
        lrs=plan["lrs"],
        regs=plan["regs"],
        loss=plan["loss"],
        solver=plan["solver"],
        tune=plan["tune"],
        iters=plan["iters"] if iters is None else iters,
        features=features,
        lr_decay=defaults["lr_decay"] if lr_decay is None else lr_decay,
        image_size=parse_image_size(image_size) if image_size is not None else None,
        **settings,
        **{
            name: value
            for name, value in (
                ("centroids", centroids),
                ("patches", patches),
                ("kmeans_iters", kmeans_iters),
            )
            if value is not None
        },
    )


def check_model_destination(model_path: Path) -> None:
    """--model must name a file in a folder that exists."""
    if model_path.is_dir():
        raise SvmtoolError(f"--model {model_path} is a folder; give a file name")
    if not model_path.parent.is_dir():
        raise SvmtoolError(f"--model {model_path}: folder {model_path.parent} does not exist")


def download_if_missing(data: str, data_dir: Path | None) -> None:
    """train --download: fetch a named dataset first when it is not in the data folder."""
    if data not in ("cifar10", "cifar100", "fashion-mnist", "mnist"):
        return
    from svmtool.commands.download import fetch_cifar
    from svmtool.io import cifar, named

    where = resolve_data_dir(data_dir)
    named_flag = "" if data == "cifar10" else f" --dataset {data}"
    try:
        cifar.load(where) if data == "cifar10" else named.load(data, where)
    except SvmtoolError:
        fetch_cifar(
            where,
            dataset=data,
            advice=(
                f"fetch it with: svmtool download{named_flag} --data-dir {where} --url"
                f" MIRROR, or import a copy with: svmtool download{named_flag} --data-dir"
                f" {where} --from-file ARCHIVE"
            ),
        )


def diverged_error(grid: list[dict], delta: float, dtype: str) -> SvmtoolError:
    """Every configuration diverged: why, and that nothing was saved."""
    from svmtool.render.training import why_diverged

    at = min(g["diverged_at"] for g in grid)
    return SvmtoolError(
        f"training diverged (loss became inf or NaN by iteration {at}): "
        + why_diverged(grid, delta, dtype)
        + ". No model was saved."
    )


def train_sgd(request, prepared, iters: int, print_every: int):
    """SGD over every (lr, reg) pair with the progress bar; returns the outcome."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Column

    from svmtool.pipeline import run_training
    from svmtool.render.progress import TimingColumn, loss_text
    from svmtool.terminal import clean

    pairs = [(lr_k, reg_k) for lr_k in request.lrs for reg_k in request.regs]
    # Only the bar shrinks with the terminal; the text that would not fit is left out.
    width = err.width
    title = "training" if len(pairs) == 1 else f"grid of {len(pairs)}"
    fixed = functools.partial(Column, no_wrap=True)
    with Progress(
        TextColumn(title if width >= 50 else "", table_column=fixed()),
        BarColumn(bar_width=None, table_column=Column(max_width=40)),
        MofNCompleteColumn(table_column=fixed()),
        TextColumn("{task.fields[loss]}", table_column=fixed()),
        TimingColumn(table_column=fixed()),
        console=err,
    ) as progress:
        task = progress.add_task("train", total=iters, loss="loss —")

        def on_step(it: int, losses, leader: int) -> None:
            if print_every and it % print_every == 0:
                # Through the progress bar's console: the lines scroll above the bar.
                for line in loss_lines(it, iters, losses, pairs):
                    progress.console.print(clean(line), soft_wrap=True)
            # The loss of the configuration leading on validation accuracy (a
            # grid's configurations differ in reg, so their losses do not compare).
            if leader < 0:
                shown = "loss —"
            elif len(pairs) == 1:
                shown = f"loss {loss_text(losses[leader])}"
            elif width >= 80:
                lr_k, reg_k = pairs[leader]
                shown = f"best lr={lr_k:g} reg={reg_k:g} loss {loss_text(losses[leader])}"
            else:
                shown = f"best loss {loss_text(losses[leader])}"
            progress.update(task, completed=it + 1, loss=shown)

        # The bar needs a report every 10 steps; --print-every N needs one every N.
        every = math.gcd(10, print_every) if print_every else 10
        outcome = run_training(request, prepared, on_step, report_every=every)
    return outcome


def train_full_batch(request, prepared, regs: list[float]):
    """L-BFGS along the reg path with a progress bar over the regs; returns the outcome."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Column

    from svmtool.pipeline import run_training

    fixed = functools.partial(Column, no_wrap=True)
    title = "L-BFGS" if len(regs) == 1 else f"reg path of {len(regs)}"
    with Progress(
        TextColumn(title if err.width >= 50 else "", table_column=fixed()),
        BarColumn(bar_width=None, table_column=Column(max_width=40)),
        MofNCompleteColumn(table_column=fixed()),
        TextColumn("{task.fields[state]}", table_column=fixed()),
        console=err,
    ) as progress:
        task = progress.add_task("train", total=len(regs), state="")
        # The path may extend past the range and stops early, so which reg is being
        # solved is not known here: the state shows the solve's iterations, then
        # each finished reg with its validation accuracy.
        done = [0]

        def on_iteration(it: int, value: float) -> None:
            if it % 5 == 0:
                progress.update(task, state=f"iteration {it}, objective {value:.6g}")

        def on_point(point) -> None:
            done[0] += 1
            state = f"reg {point.reg:g}: val accuracy {point.val_accuracy:.4f}"
            progress.update(task, completed=min(done[0], len(regs)), state=state)

        outcome = run_training(request, prepared, on_point=on_point, on_iteration=on_iteration)
        progress.update(task, completed=len(regs))
    return outcome


def loss_lines(it: int, iters: int, losses, pairs: list[tuple[float, float]]) -> list[str]:
    """CS231n's verbose line, 'iteration k / N: loss L', per configuration."""
    if len(pairs) == 1:
        return [f"iteration {it} / {iters}: loss {losses[0]:f}"]
    return [
        f"iteration {it} / {iters}: loss {loss:f} (lr {lr:g}, reg {reg:g})"
        for loss, (lr, reg) in zip(losses, pairs, strict=True)
    ]
