"""The svmtool command line: parse options, call one library function, render.

numpy and the library modules are imported inside the commands so that
``svmtool --help`` starts quickly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shlex
import sys
import warnings
from pathlib import Path

import typer
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from svmtool import __version__
from svmtool.errors import BadValue, DataNotFound, SvmtoolError, check_choice
from svmtool.terminal import (
    clean,
    fits,
    literal,
    literal_lines,
    make_console,
    number_column,
    print_table,
    text_column,
)

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import BadParameter, NoArgsIsHelpError, UsageError
    from typer._click.globals import get_current_context
except ImportError:  # pragma: no cover
    from click import get_current_context
    from click.exceptions import BadParameter, NoArgsIsHelpError, UsageError

# Exit codes (the README lists them in one place).
EXIT_ERROR = 1  # bad input, a failed download, a FAIL in gradcheck, an image predict could not read
EXIT_USAGE = 2  # the command line itself: an unknown option, a value of the wrong type
EXIT_USER_CODE = 3  # gradcheck --loss: the user's code could not be imported, or raised
EXIT_INTERRUPTED = 130  # Ctrl-C


class OneLineUsageError(UsageError):
    """Click's usage error, shown as one ``Error:`` line like every other error."""

    def __init__(self, error: UsageError) -> None:
        super().__init__(error.format_message(), error.ctx)

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        say(f"Error: {self.format_message()}{hint}")


class Group(TyperGroup):
    """Usage errors (raised while parsing, for the group or a command) become one line."""

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except NoArgsIsHelpError:
            raise
        except UsageError as exc:
            raise OneLineUsageError(exc) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (NoArgsIsHelpError, OneLineUsageError):
            raise
        except UsageError as exc:
            raise OneLineUsageError(exc) from None


class Command(TyperCommand):
    """Help shows metavars (FILE, N), never Python types: typer writes an
    argument's type as ``<list[Path]>`` whatever its metavar. The type is left
    out before the help is laid out, so wrapped lines line up under the first."""

    def get_help(self, ctx) -> str:
        for param in self.params:
            if getattr(param, "param_type_name", "") == "argument":
                param.display_type_rich = lambda ctx: None
        return re.sub(r" <[A-Za-z_]+(?:\[[A-Za-z_, ]*\])?>", "", super().get_help(ctx))


app = typer.Typer(
    cls=Group,
    help="The multi-class linear SVM on CIFAR-10: download, train, gradcheck, visualize.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain usage errors: "Error: ..." on one line, like the tool's own errors.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Markup and emoji codes off: text from files and arguments is printed as written.
out = make_console()
err = make_console(stderr=True)

DATA_HELP = (
    "cifar10, synthetic (offline, seeded), a path to an .npz with"
    " X_train, y_train, X_test, y_test, or an image folder (CLASS/*.png|jpg, or"
    " train/CLASS and test/CLASS)."
)
DATA_DIR_HELP = (
    "Where CIFAR-10 lives: its cache, or an extracted cifar-10-batches-bin/-py folder"
    " (default: $SVMTOOL_DATA_DIR, else the platform's user cache folder)."
)
MODEL_DATA_DIR_HELP = (
    "Where CIFAR-10 lives (default: the folder the model was trained from, else"
    " $SVMTOOL_DATA_DIR, else the platform's user cache folder)."
)

# What each command adds to "CIFAR-10 is not in ...": only options that command has.
MISSING_DATA_ADVICE = {
    "train": " (or pass --download, or --data synthetic to try the tool offline)",
    "evaluate": " (or pass --data-dir FOLDER if it is elsewhere)",
    "gradcheck": " (or pass --data-dir FOLDER if it is elsewhere, or --data synthetic)",
}
OUT_OF_MEMORY_ADVICE = {"train": "; try a smaller --num-train or --batch-size"}
DATA_METAVAR = "DATA"


def say(message: str) -> None:
    """A message for the user on stderr, on one line whatever the width; control
    characters from paths or names in it are shown as escapes."""
    err.print(clean(message), soft_wrap=True)


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    say(f"Error: {message}")
    return typer.Exit(code)


_at_end: list = []


def at_end(cleanup) -> None:
    """Call ``cleanup()`` when the running command ends, however it ends."""
    _at_end.append(cleanup)


def handle_errors(command):
    """Library errors become one line and exit code 1, never a traceback; no
    Python warning reaches the user (the math that may overflow says so with
    np.errstate; this is the net for the rest)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            if not os.environ.get("SVMTOOL_DEBUG"):
                warnings.simplefilter("ignore")
            return _run(command, *args, **kwargs)

    return wrapper


def _run(command, *args, **kwargs):
    try:
        return command(*args, **kwargs)
    except (typer.Exit, typer.Abort):
        raise
    except BadValue as exc:
        # click's own usage error, with the running command's context: the same
        # one line as a value of the wrong type, and exit code 2.
        raise BadParameter(
            exc.problem, ctx=get_current_context(silent=True), param_hint=f"'{exc.option}'"
        ) from None
    except DataNotFound as exc:
        raise fail(str(exc) + MISSING_DATA_ADVICE.get(command.__name__, "")) from None
    except SvmtoolError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # The reader went away (svmtool ... | head): stop quietly.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (lives until exit)
        raise typer.Exit(EXIT_ERROR) from None
    except MemoryError:
        raise fail("out of memory" + OUT_OF_MEMORY_ADVICE.get(command.__name__, "")) from None
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise fail(f"{exc.strerror or exc}{where}") from None
    except Exception as exc:
        if os.environ.get("SVMTOOL_DEBUG"):
            raise
        raise fail(
            f"internal error: {type(exc).__name__}: {exc}"
            " (set SVMTOOL_DEBUG=1 for the traceback, and please report it)"
        ) from None
    finally:
        while _at_end:
            _at_end.pop()()


def version_callback(value: bool) -> None:
    if value:
        print(f"svmtool {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(
        False, "--version", callback=version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """The multi-class linear SVM on CIFAR-10: download, train, gradcheck, visualize."""


CACHE_DIR_HELP = (
    "The feature cache (default: $SVMTOOL_CACHE_DIR, else the platform's user cache folder;"
    " svmtool cache list shows it)."
)


def cache_dir_option():
    return typer.Option(None, "--cache-dir", help=CACHE_DIR_HELP, metavar="DIR")


def data_dir_option(help: str = DATA_DIR_HELP):
    # No envvar= here: $SVMTOOL_DATA_DIR is read by default_data_dir(), so the
    # commands can tell a folder the user typed (which must hold the data) from
    # the standing default (where gradcheck may find nothing and say so).
    return typer.Option(None, "--data-dir", help=help, metavar="DIR")


def resolve_data_dir(data_dir: Path | None) -> Path:
    from svmtool.io.data import default_data_dir

    return data_dir if data_dir is not None else default_data_dir()


def json_ready(value):
    """NaN and infinities become null: the output must be strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def print_json(value) -> None:
    print(json.dumps(json_ready(value), indent=2))


# --- download ---------------------------------------------------------------------


def _download_progress():
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]downloading"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


DOWNLOAD_ADVICE = "use --url MIRROR or --from-file ARCHIVE"


def fetch_cifar(data_dir: Path, advice: str = DOWNLOAD_ADVICE, dataset: str = "cifar10", **options):
    """``cifar.download`` (or ``named.download`` for another ``dataset``; same
    options) with a Rich progress bar on stderr, a line for each retry, and
    ``advice`` (which must work from the command that called it) after a failed
    download."""
    from svmtool.io import cifar, named
    from svmtool.io.download import DownloadFailed

    bar = None
    task = None

    def report(done: int, total: int | None) -> None:
        nonlocal bar, task
        if bar is None:
            # Shown from the first byte on, so a refused or 404 request prints no bar.
            bar = _download_progress()
            bar.start()
            task = bar.add_task("download", total=total)
        bar.update(task, completed=done, total=total)

    def retrying(reason: str, delay: float, attempt: int, tries: int) -> None:
        say(f"{reason}, retrying in {delay:g} s ({attempt}/{tries})")

    try:
        if dataset != "cifar10":
            return named.download(dataset, data_dir, progress=report, on_retry=retrying, **options)
        return cifar.download(data_dir, progress=report, on_retry=retrying, **options)
    except DownloadFailed as exc:
        raise SvmtoolError(f"{exc}; {advice}") from None
    finally:
        if bar is not None:
            bar.stop()


@app.command(cls=Command)
@handle_errors
def download(
    data_dir: Path | None = data_dir_option(),
    dataset: str = typer.Option(
        "cifar10",
        "--dataset",
        help="cifar10, cifar100, fashion-mnist or mnist.",
        metavar="NAME",
    ),
    format: str = typer.Option(
        "binary",
        "--format",
        help="binary (plain records, the default) or python (CS231n's pickles).",
        metavar="binary|python",
    ),
    url: str | None = typer.Option(
        None, "--url", help="A mirror to fetch from; the checksum still applies.", metavar="URL"
    ),
    md5: str | None = typer.Option(
        None, "--md5", help="The md5 of a different archive.", metavar="HEX"
    ),
    from_file: Path | None = typer.Option(
        None,
        "--from-file",
        help="Import an archive you already have (offline machines); for mnist and"
        " fashion-mnist, a folder holding their four .gz files.",
        metavar="ARCHIVE",
    ),
    force: bool = typer.Option(False, "--force", help="Start over even if the data is there."),
    keep_archive: bool = typer.Option(False, "--keep-archive", help="Keep the .tar.gz afterwards."),
) -> None:
    """Fetch CIFAR-10 (or --dataset cifar100, fashion-mnist, mnist), verify it, and cache it.

    Every file's md5 is checked before anything is extracted or parsed; the
    images are then converted once into a uint8 cache that loads in milliseconds.

    Interrupted downloads resume. Proxies and CA bundles come from the usual
    environment variables (HTTPS_PROXY, REQUESTS_CA_BUNDLE).

    Example: svmtool download --data-dir ./data
    """
    from svmtool.io.data import DOWNLOADABLE

    where = resolve_data_dir(data_dir)
    check_choice("--dataset", dataset, DOWNLOADABLE)
    if dataset != "cifar10":
        if format != "binary":
            raise BadValue("--format", f"applies to cifar10, not {dataset}")
        result = fetch_cifar(
            where, dataset=dataset, url=url, md5=md5, from_file=from_file, force=force,
            keep_archive=keep_archive,
        )  # fmt: skip
        if result.already:
            say(f"{dataset} is already in {result.cache} (use --force to fetch it again)")
        else:
            say(
                f"verified and converted: {result.train_count} training,"
                f" {result.test_count} test images ({result.cache})"
            )
        return
    result = fetch_cifar(
        where,
        fmt=format,
        url=url,
        md5=md5,
        from_file=from_file,
        force=force,
        keep_archive=keep_archive,
    )
    if result.note:
        say(result.note)
    if result.already:
        say(f"CIFAR-10 is already in {result.cache} (use --force to fetch it again)")
    else:
        say(
            f"verified and converted: {result.train_count} training,"
            f" {result.test_count} test images"
        )
        if result.archive_kept:
            say(f"archive kept at {result.archive_kept}")
    print(clean(result.cache))


# --- train -------------------------------------------------------------------------


def _features_text(features) -> str:
    """'pixels', 'hog (154 values)', 'kmeans (K = 1600, 6400 values)'."""
    if features.kind == "pixels":
        return "pixels"
    size = features.arrays["mean"].shape[0]
    if features.kind == "kmeans":
        return f"kmeans (K = {features.arrays['centroids'].shape[0]}, {size} values)"
    if features.kind == "hog":
        from svmtool.core.features import hog_cell

        cell = hog_cell(features)
        colour = ", cell colours" if features.params.get("colour") else ""
        return f"hog ({cell}x{cell}-pixel cells{colour}, {size} values)"
    return f"{features.kind} ({size} values)"


@contextlib.contextmanager
def feature_progress():
    """A progress callback for feature learning and extraction: one bar per stage
    (k-means iterations; images, with images/s and ETA), on stderr."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            unit = task.fields.get("unit", "")
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} {unit}/s")

    bar = None
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                Rate(),
                TimeRemainingColumn(),
                console=err,
            )
            bar.start()
        if stage not in tasks:
            unit = "iterations" if stage == "k-means" else "images"
            tasks[stage] = bar.add_task(stage, total=total, unit=unit)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        yield report
    finally:
        if bar is not None:
            bar.stop()


def _fmt(value, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if abs(value) >= 1e6:
        return format(value, ".4e")  # a loss of 1e36 in 4 significant digits, not 37
    return format(value, spec)


def _loss_text(value: float) -> str:
    """A minibatch loss for the progress bar."""
    return _fmt(value) if math.isfinite(value) else "diverged"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def TimingColumn(**options):
    """'eta 0:42' while running, 'in 1:05' once done."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Timing(ProgressColumn):
        def render(self, task) -> Text:
            if task.finished and task.finished_time is not None:
                return Text(f"in {_clock(task.finished_time)}")
            left = task.time_remaining
            return Text("eta " + ("-:--" if left is None else _clock(left)))

    return Timing(**options)


_LOSS_TEXT = {
    "hinge": "multi-class hinge",
    "squared-hinge": "squared hinge, one-vs-rest (L2-SVM)",
}

_CAUSE_SHORT = {
    "delta": "--delta too large for the arithmetic",
    "start": "the loss was not finite at the start",
    "decay": "lr * reg > 1",
    "lr": "lr too large",
}


def _why_diverged(configs: list[dict], delta: float, dtype: str) -> str:
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


@app.command(cls=Command)
@handle_errors
def train(
    data: str = typer.Option("cifar10", "--data", help=DATA_HELP, metavar=DATA_METAVAR),
    data_dir: Path | None = data_dir_option(),
    download_first: bool = typer.Option(
        False,
        "--download",
        help="Fetch the named dataset (cifar10, cifar100, mnist...) first if it is missing.",
    ),
    labels: str = typer.Option(
        "fine",
        "--labels",
        help="cifar100: fine (100 classes) or coarse (the 20 superclasses).",
        metavar="fine|coarse",
    ),
    image_size: str | None = typer.Option(
        None,
        "--image-size",
        help="Image folders: read every image at N x N or WIDTHxHEIGHT (default: the most"
        " common size when every image is at most 64 x 64, else 32 x 32).",
        metavar="N|WxH",
    ),
    lr: str | None = typer.Option(
        None,
        "--lr",
        help="Learning rate, or a comma-separated list for a grid"
        " (default: pixels 1e-7, hog and kmeans 1e-2).",
        metavar="LR[,LR...]",
    ),
    reg: str | None = typer.Option(
        None,
        "--reg",
        help="L2 strength, or a comma-separated list for a grid"
        " (default: pixels 2.5e4, hog 1e-2, kmeans 1e-4).",
        metavar="REG[,REG...]",
    ),
    delta: float = typer.Option(1.0, "--delta", help="The hinge margin.", metavar="FLOAT"),
    iters: int | None = typer.Option(
        None,
        "--iters",
        help="SGD steps (default: pixels 1500, hog and kmeans 5000).",
        metavar="N",
    ),
    lr_decay: float | None = typer.Option(
        None,
        "--lr-decay",
        help="Multiply the learning rate by this every 100 steps (default: pixels 1, hog and"
        " kmeans 0.95).",
        metavar="FLOAT",
    ),
    loss: str | None = typer.Option(
        None, "--loss", help="hinge, or squared-hinge (the L2-SVM).", metavar="hinge|squared-hinge"
    ),
    solver: str | None = typer.Option(
        None, "--solver", help="sgd, or lbfgs (full batch, no --lr).", metavar="sgd|lbfgs"
    ),
    tune: bool = typer.Option(
        False, "--tune", help="Choose reg (and lr with sgd) on the validation split."
    ),
    features: str = typer.Option(
        "pixels",
        "--features",
        help="pixels (CS231n's rows), hog (HOG + hue histogram) or kmeans (Coates, Lee & Ng"
        " 2011: a learned dictionary of 6x6 patches).",
        metavar="pixels|hog|kmeans",
    ),
    centroids: int | None = typer.Option(
        None,
        "--centroids",
        help="kmeans: dictionary size K (default 1600, as in the paper).",
        metavar="K",
    ),
    patches: int | None = typer.Option(
        None,
        "--patches",
        help="kmeans: random training patches k-means learns from (400000).",
        metavar="N",
    ),
    kmeans_iters: int | None = typer.Option(
        None, "--kmeans-iters", help="kmeans: k-means iterations (default 50).", metavar="N"
    ),
    use_cache: bool = typer.Option(
        True,
        "--cache/--no-cache",
        help="Read and store features in the feature cache.",
    ),
    cache_dir: Path | None = cache_dir_option(),
    batch_size: int = typer.Option(
        200,
        "--batch-size",
        help="Rows per minibatch (more than the training images: all of them).",
        metavar="N",
    ),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seeds W, the batches and, for data other than CIFAR-10, the validation split.",
        metavar="N",
    ),
    dtype: str = typer.Option(
        "float32", "--dtype", help="float32 (fast) or float64.", metavar="float32|float64"
    ),
    num_train: int | None = typer.Option(
        None,
        "--num-train",
        help="Training images (default: every image not in the validation split).",
        metavar="N",
    ),
    num_val: int | None = typer.Option(
        None,
        "--num-val",
        help="Validation images (default: min(1000, N/10)); a grid needs at least 1.",
        metavar="N",
    ),
    init_scale: float = typer.Option(
        1e-3,
        "--init-scale",
        help="W starts as this times a standard normal.",
        metavar="FLOAT",
    ),
    print_every: int = typer.Option(
        0,
        "--print-every",
        help="Print the loss every N steps, as CS231n's notebook (0: only the progress bar).",
        metavar="N",
    ),
    model_path: Path = typer.Option(
        Path("svm_model.npz"), "--model", help="Where to write the model.", metavar="FILE"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Train a linear SVM: minibatch SGD, or the L2-SVM solved by L-BFGS.

    Pixels: CS231n's recipe. hog, kmeans (no --lr/--reg) and --tune: the
    L2-SVM, reg chosen on validation (docs/accuracy.md). A comma-separated
    --lr and/or --reg trains every pair and saves the best by validation
    accuracy. Features are cached (svmtool cache list).

    Split: CIFAR-10 keeps CS231n's (the last 1,000 training images validate);
    other data validates on a seeded, stratified sample. The test set is left
    for svmtool evaluate. How batches, splits and features work: docs/train.md.

    Example: svmtool train --lr 1e-7,5e-7 --reg 2.5e4,5e4
    """

    from svmtool.io import model as model_io
    from svmtool.io.imagefolder import parse_image_size
    from svmtool.pipeline import (
        TRAIN_DEFAULTS,
        TrainRequest,
        prepare_training,
        reg_path,
        train_plan,
    )

    if features not in TRAIN_DEFAULTS:
        check_choice("--features", features, TRAIN_DEFAULTS)
    defaults = TRAIN_DEFAULTS[features]
    plan = train_plan(features, lr, reg, loss, solver, tune)
    iters = plan["iters"] if iters is None else iters
    request = TrainRequest(
        lrs=plan["lrs"],
        regs=plan["regs"],
        loss=plan["loss"],
        solver=plan["solver"],
        tune=plan["tune"],
        delta=delta,
        iters=iters,
        batch_size=batch_size,
        seed=seed,
        dtype=dtype,
        data=data,
        data_dir=data_dir,
        num_train=num_train,
        num_val=num_val,
        init_scale=init_scale,
        features=features,
        use_cache=use_cache,
        cache_dir=cache_dir,
        lr_decay=defaults["lr_decay"] if lr_decay is None else lr_decay,
        image_size=parse_image_size(image_size) if image_size is not None else None,
        labels=labels,
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
    if print_every < 0:
        raise BadValue("--print-every", f"must be >= 0, got {print_every}")
    if model_path.is_dir():
        raise SvmtoolError(f"--model {model_path} is a folder; give a file name")
    if not model_path.parent.is_dir():
        raise SvmtoolError(f"--model {model_path}: folder {model_path.parent} does not exist")
    # The model's temporary file is made now, so a folder that cannot take it
    # fails before training, not after; it is removed unless committed, and
    # the commit (the move into place) is the last step, after the output.
    pending = model_io.reserve(model_path)
    at_end(pending.discard)
    if download_first and data in ("cifar10", "cifar100", "fashion-mnist", "mnist"):
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
    with feature_progress() as progress:
        prepared = prepare_training(request, progress)
    for note in prepared.notes:
        say(note)
    for warning in prepared.warnings:
        say(f"Warning: {warning}")
    if request.solver == "lbfgs":
        outcome = _train_full_batch(request, prepared, reg_path(request, prepared.X_train))
    else:
        outcome = _train_sgd(request, prepared, iters, print_every)
    grid = outcome.grid
    if outcome.model is None:
        at = min(g["diverged_at"] for g in grid)
        raise SvmtoolError(
            f"training diverged (loss became inf or NaN by iteration {at}): "
            + _why_diverged(grid, delta, dtype)
            + ". No model was saved."
        )
    model_io.save(outcome.model, pending)
    best = grid[outcome.best]
    if as_json:
        print_json(
            {
                "model": str(model_path),
                "settings": outcome.model.settings,
                "metrics": outcome.model.metrics,
                "sizes": outcome.sizes,
                "grid": grid,
                # SGD: the best configuration's minibatch loss before each step (null
                # once diverged); lbfgs: the objective before each iteration.
                "loss_history": outcome.model.loss_history.tolist(),
                "selection": outcome.selection,
                "warnings": outcome.warnings,
                "data": prepared.data_report,
            }
        )
        pending.commit()
        return
    full_batch = request.solver == "lbfgs"
    if full_batch and len(grid) > 1:
        how = "warm starts, stops 2 regs past the best" if request.tune else "warm starts"
        table = Table(title=f"reg path (L-BFGS to convergence, {how})")
        for name in ("reg", "iterations", "objective", "train acc", "val acc", "seconds"):
            number_column(table, name)
        text_column(table, "", justify="right")
        for g in grid:
            table.add_row(
                f"{g['reg']:.3g}",
                str(g["iterations"]) + ("" if g["converged"] else "+"),
                f"{g['objective']:.6g}",
                _fmt(g["train_accuracy"]),
                _fmt(g["val_accuracy"]),
                f"{g['seconds']:.1f}",
                "chosen" if g.get("best") else "",
                style="bold" if g.get("best") else None,
            )
        print_table(out, table)
    elif len(grid) > 1:
        table = Table(title="grid search (same seed, same batches)")
        for name in ("lr", "reg", "train acc", "val acc", "final loss"):
            number_column(table, name)
        text_column(table, "", justify="right")
        for g in grid:
            mark = "best" if g.get("best") else ("diverged" if g["diverged"] else "")
            table.add_row(
                f"{g['lr']:g}",
                f"{g['reg']:g}",
                _fmt(g["train_accuracy"]),
                _fmt(g["val_accuracy"]),
                _fmt(g["final_loss"]),
                mark,
                style="bold" if g.get("best") else None,
            )
        print_table(out, table)
    timings = outcome.timings
    summary = Table(title="training result", show_header=False)
    text_column(summary, "")
    text_column(summary, "", justify="right")
    sizes = outcome.sizes
    summary.add_row("data", literal(data))  # a path the user typed: never markup
    summary.add_row(
        "split", f"{sizes['train']} train, {sizes['val']} val ({sizes['split_description']})"
    )
    summary.add_row("test set", f"{sizes['test']} images (for svmtool evaluate)")
    summary.add_row("features", _features_text(outcome.model.features))
    plain_pixels = request.features == "pixels" and not request.tune and not full_batch
    if not plain_pixels or request.loss != "hinge":
        summary.add_row("loss", _LOSS_TEXT[request.loss])
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
    summary.add_row("train accuracy", _fmt(best["train_accuracy"]))
    summary.add_row("val accuracy", _fmt(best["val_accuracy"]))
    if full_batch:
        summary.add_row("objective (train split)", f"{metrics['objective']:.6g}")
    else:
        summary.add_row("final loss", _fmt(best["final_loss"]))
        if not plain_pixels:
            summary.add_row("objective (train split)", f"{metrics['objective']:.6g}")
    summary.add_row("loading + preprocessing", f"{timings['load_seconds']:.2f} s")
    if outcome.model.features.kind != "pixels":
        summary.add_row("features (learn + extract)", f"{timings['feature_seconds']:.2f} s")
    summary.add_row("training time", f"{timings['train_seconds']:.2f} s")
    if not full_batch:
        summary.add_row("iterations/s", f"{timings['iterations_per_second']:.0f}")
    cifar_settings = plain_pixels and lr is None and reg is None and data != "cifar10"
    if cifar_settings:
        summary.add_row("settings", "CS231n's for CIFAR-10, not chosen for this data")
    print_table(out, summary)
    if cifar_settings:
        say(
            "lr 1e-7 and reg 2.5e4 are CS231n's settings for CIFAR-10; to choose them for this"
            f" data on its validation split, run: svmtool train --data {shlex.quote(data)} --tune"
        )
    for g in grid:
        if g["diverged"]:
            say(
                f"lr={g['lr']:g}, reg={g['reg']:g} diverged at iteration {g['diverged_at']}"
                f" ({_CAUSE_SHORT[g['diverged_because']]})"
            )
    pending.commit()
    say(f"model written to {model_path}")


def _train_sgd(request, prepared, iters: int, print_every: int):
    """SGD over every (lr, reg) pair with the progress bar; returns the outcome."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Column

    from svmtool.pipeline import run_training

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
                shown = f"loss {_loss_text(losses[leader])}"
            elif width >= 80:
                lr_k, reg_k = pairs[leader]
                shown = f"best lr={lr_k:g} reg={reg_k:g} loss {_loss_text(losses[leader])}"
            else:
                shown = f"best loss {_loss_text(losses[leader])}"
            progress.update(task, completed=it + 1, loss=shown)

        # The bar needs a report every 10 steps; --print-every N needs one every N.
        every = math.gcd(10, print_every) if print_every else 10
        outcome = run_training(request, prepared, on_step, report_every=every)
    return outcome


def _train_full_batch(request, prepared, regs: list[float]):
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
        current = {"reg": regs[0], "done": 0}

        def on_iteration(it: int, value: float) -> None:
            if it % 5 == 0:
                state = f"reg {current['reg']:g}: iteration {it}, objective {value:.6g}"
                progress.update(task, state=state)

        def on_point(point) -> None:
            current["done"] += 1
            if current["done"] < len(regs):
                current["reg"] = regs[current["done"]]
            progress.update(task, completed=current["done"])

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


# --- evaluate / predict ------------------------------------------------------------


MATRIX_MAX_CLASSES = 20  # above this a confusion matrix is unreadable on a terminal
CONFUSED_PAIRS = 20


def most_confused(confusion, top: int) -> list[tuple[int, int, int]]:
    """The ``top`` largest off-diagonal cells as (true, predicted, count), largest first."""
    import numpy as np

    off = confusion.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    rows, cols = np.unravel_index(flat, off.shape)
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(rows, cols, strict=True) if off[i, j]]


@app.command(cls=Command)
@handle_errors
def evaluate(
    model_path: Path = typer.Option(
        Path("svm_model.npz"), "--model", help="The model file.", metavar="FILE"
    ),
    split: str = typer.Option(
        "test", "--split", help="val, train or test.", metavar="val|train|test"
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Default: the data the model was trained on. Other data needs the model's image"
        " shape and classes.",
        metavar=DATA_METAVAR,
    ),
    data_dir: Path | None = data_dir_option(MODEL_DATA_DIR_HELP),
    num_test: int | None = typer.Option(
        None,
        "--num-test",
        help="Evaluate on the first N test images (CS231n: 1000; default: the whole test set).",
        metavar="N",
    ),
    ignore_class_names: bool = typer.Option(
        False,
        "--ignore-class-names",
        help="Evaluate data whose class names differ from the model's (the count must match;"
        " label k is taken to be the model's class k).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    use_cache: bool = typer.Option(
        True, "--cache/--no-cache", help="kmeans models: read and store the split's features."
    ),
    cache_dir: Path | None = cache_dir_option(),
) -> None:
    """Accuracy per class, and a confusion matrix.

    The test split is the whole test set (10,000 images for CIFAR-10) unless
    --num-test asks for its first N. The train and val splits are the model's
    own, recomputed from its seed and sizes.

    Example: svmtool evaluate --split test --num-test 1000
    """
    from svmtool.io import model as model_io
    from svmtool.pipeline import evaluate as run_evaluate

    # What the command line cannot accept is said before any file is read.
    check_choice("--split", split, ("val", "train", "test"), "val, train or test")
    if num_test is not None and num_test < 1:
        raise BadValue("--num-test", f"must be >= 1, got {num_test}")
    model = model_io.load(model_path)
    notes: list[str] = []
    with feature_progress() as progress:
        result = run_evaluate(
            model, split, data, data_dir, num_test, ignore_class_names, progress, notes, use_cache,
            cache_dir=cache_dir,
        )  # fmt: skip
    for note in notes:
        say(note)
    for warning in result.warnings:
        say(f"Warning: {warning}")
    names = model.class_names
    if as_json:
        print_json(
            {
                "split": result.split,
                "count": result.count,
                "available": result.available,
                "accuracy": result.accuracy,
                "per_class": dict(zip(names, result.per_class, strict=True)),
                "class_names": names,
                "confusion": result.confusion.tolist(),
            }
        )
        return
    if split != "test":
        scope = ""
    elif result.count == result.available:
        scope = " (the whole test set)"
    else:
        scope = f" (the first {result.count} of {result.available} test images)"
    out.print(f"{split} accuracy: {result.accuracy:.4f} on {result.count} images{scope}")
    per = Table(title="per-class accuracy")
    text_column(per, "class")
    number_column(per, "accuracy")
    for name, acc in zip(names, result.per_class, strict=True):
        per.add_row(literal(name), _fmt(acc))
    print_table(out, per)
    conf = Table(title="confusion matrix (rows: true, columns: predicted)")
    text_column(conf, "")
    for i in range(len(names)):
        number_column(conf, str(i))
    for i, row in enumerate(result.confusion):
        conf.add_row(literal(f"{i} {names[i]}"), *[str(v) for v in row])
    if len(names) <= MATRIX_MAX_CLASSES and fits(out, conf):
        print_table(out, conf)
        return
    why = (
        f"{len(names)} classes"
        if len(names) > MATRIX_MAX_CLASSES
        else f"a {out.width}-column terminal is too narrow"
    )
    pairs = most_confused(result.confusion, CONFUSED_PAIRS)
    conf = Table(title=f"the {len(pairs)} most confused pairs")
    text_column(conf, "true class")
    text_column(conf, "predicted as")
    number_column(conf, "images")
    number_column(conf, "share")
    totals = result.confusion.sum(axis=1)
    for i, j, count in pairs:
        conf.add_row(literal(names[i]), literal(names[j]), str(count), f"{count / totals[i]:.1%}")
    print_table(out, conf)
    out.print(
        f"({why}: the whole {len(names)} x {len(names)} confusion matrix is in the output"
        " of --json)"
    )


@app.command(cls=Command)
@handle_errors
def predict(
    images: list[Path] = typer.Argument(
        ...,
        metavar="IMAGE",
        help="PNG or JPEG files, any size (transparent pixels count as white).",
    ),
    model_path: Path = typer.Option(
        Path("svm_model.npz"), "--model", help="The model file.", metavar="FILE"
    ),
    top: int = typer.Option(3, "--top", help="How many scores to show.", metavar="N"),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Predict the class of image files.

    Each image is read as a viewer shows it (EXIF orientation applied, 16-bit
    grayscale scaled, transparency over white), resized to the model's image
    shape and converted to its channels, then preprocessed with the model's
    mean image. Only PNG and JPEG are decoded; images over Pillow's pixel
    limit are refused.

    Example: svmtool predict cat.png plane.jpg
    """
    from svmtool.io import model as model_io
    from svmtool.pipeline import predict_files

    if top < 1:
        raise BadValue("--top", f"must be >= 1, got {top}")
    model = model_io.load(model_path)
    results = predict_files(model, images, top)
    failed = [r for r in results if r.error is not None]
    if as_json:
        print_json(
            {
                "model": str(model_path),
                "predictions": [
                    {
                        "image": r.path,
                        "prediction": r.label,
                        "scores": [{"class": n, "score": v} for n, v in r.top],
                        "error": r.error,
                    }
                    for r in results
                ],
            }
        )
    for r in failed:
        say(f"Error: {r.error}")
    if as_json or (failed and len(failed) == len(results)):
        raise typer.Exit(EXIT_ERROR if failed else 0)
    table = Table()
    text_column(table, "image")
    text_column(table, "prediction")
    text_column(table, f"top {min(top, model.num_classes)} scores")
    for r in results:
        if r.error is None:
            scores = ", ".join(f"{n} {s:.2f}" for n, s in r.top)
            table.add_row(literal(r.path), literal(r.label), literal(scores))
    print_table(out, table)
    if failed:
        raise typer.Exit(EXIT_ERROR)


# --- gradcheck ----------------------------------------------------------------------


def _parse_coord(text: str) -> tuple[int, int]:
    try:
        d, c = (int(v) for v in text.split(","))
    except ValueError:
        raise BadValue("--coord", f"must be d,c (two integers), got {text!r}") from None
    return d, c


def _interpretation(report) -> list[str]:
    checks = report.checks
    fails = [c for c in checks if c.status == "FAIL"]
    kinks = [c for c in checks if c.status == "kink"]
    straddled = [c for c in checks if c.straddled]
    lines = []
    if fails:
        lines.append(
            f"{len(fails)} coordinate(s) disagree beyond tol={report.tol:g} and no straddled"
            " kink explains it: the analytic gradient is likely wrong there."
        )
    if kinks:
        verified = [c.kink_free_rel_error for c in kinks if c.kink_free_rel_error is not None]
        tail = (
            f" Without those samples they agree to {max(verified):.1e}."
            if verified
            else " Every sample straddled, so nothing was left to recheck on."
        )
        lines.append(
            f"{len(kinks)} coordinate(s) mismatch because the ±h step moved a margin across the"
            " hinge's kink, where the loss has no derivative: the centered difference averages"
            " two slopes there." + tail + " This is not a bug and not a reason for concern."
        )
    if not fails and not kinks:
        lines.append(
            "Every checked coordinate agrees (worst relative error"
            f" {report.worst_kink_free_error:.1e}"
            " among kink-free ones): the analytic gradient is right at this point."
        )
    lines.append(
        f"{report.near_kink_fraction:.2%} of the margins lie within h*max|x| ="
        f" {report.near_kink_distance:.2g} of their kink; {len(straddled)} of {len(checks)}"
        " checked coordinates straddled one. A larger delta keeps margins of a small W away"
        " from 0 (fewer kinks); at a trained W many margins sit near 0 (more)."
    )
    return lines


@app.command(cls=Command)
@handle_errors
def gradcheck(
    delta: float = typer.Option(1.0, "--delta", help="The hinge margin.", metavar="FLOAT"),
    reg: float | None = typer.Option(
        None,
        "--reg",
        help="L2 strength (default 0; with --loss, 0 and then 5e1, as CS231n's notebook).",
        metavar="FLOAT",
    ),
    checks: int = typer.Option(
        10, "--checks", help="How many coordinates to draw with the seed.", metavar="N"
    ),
    h: float = typer.Option(1e-5, "--h", help="The centered-difference step.", metavar="FLOAT"),
    seed: int = typer.Option(
        0, "--seed", help="Seeds W, the batch and the coordinates.", metavar="N"
    ),
    coord: list[str] | None = typer.Option(
        None, "--coord", help="Check coordinate d,c (repeatable).", metavar="D,C"
    ),
    tol: float = typer.Option(
        1e-6,  # gradcheck.DEFAULT_TOL, written out so that --help needs no numpy
        "--tol",
        help="Relative error |numeric - analytic| / (|numeric| + |analytic|) allowed on"
        " kink-free coordinates (away from kinks the check is exact up to rounding, ~1e-10;"
        " a wrong gradient term gives 1e-3 or more). A difference within the rounding of the"
        " two losses, 8 * eps * (|L+| + |L-| + 1) / 2h, passes too: at a tiny --h that"
        " allowance exceeds tol.",
        metavar="FLOAT",
    ),
    show_kinks: bool = typer.Option(
        False, "--show-kinks", help="List the samples behind each kink."
    ),
    sweep: str | None = typer.Option(
        None,
        "--sweep-delta",
        help="Comma-separated deltas: how often kinks occur for each.",
        metavar="DELTA[,DELTA...]",
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Default: the model's data with --model; else CIFAR-10 when it is in the default"
        " folder ($SVMTOOL_DATA_DIR, else the user cache), else synthetic, with a notice. Data"
        " named by --data or --data-dir must be there.",
        metavar=DATA_METAVAR,
    ),
    data_dir: Path | None = data_dir_option(MODEL_DATA_DIR_HELP),
    model_path: Path | None = typer.Option(
        None, "--model", help="Check at a trained model's W.", metavar="FILE"
    ),
    weights: Path | None = typer.Option(
        None,
        "--weights",
        help="Check at this W: a .npy file saved with np.save (D+1 x C).",
        metavar="FILE.npy",
    ),
    loss: list[str] | None = typer.Option(
        None,
        "--loss",
        help="Check YOUR loss function: PATH.py:FUNC, package.module:FUNC, or PATH.py for its"
        " svm_loss_naive and svm_loss_vectorized. Called as FUNC(W, X, y, reg) -> (loss, dW)"
        " (delta too if it takes one). Loading the file runs it, as pytest does, in a process"
        " of its own. Repeat it, or give a folder (every .py file under it), to check many"
        " files: then a summary table.",
        metavar="PATH.py[:FUNC]",
    ),
    timeout: float = typer.Option(
        60.0,
        "--timeout",
        help="With --loss: seconds each file may run (importing and all checks) before it is"
        " stopped and reported as timed out.",
        metavar="SECONDS",
    ),
    memory: str = typer.Option(
        "2G",
        "--memory",
        help="With --loss: the memory (address space) each file's process may use, e.g. 2G"
        " or 512M; 0 for no limit.",
        metavar="SIZE",
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        help="With several --loss files: how many to check at a time (default: the cores"
        " this process may use).",
        metavar="N",
    ),
    csv_path: Path | None = typer.Option(
        None,
        "--csv",
        help="With --loss: write the summary, one row per file and function, to this CSV file.",
        metavar="FILE.csv",
    ),
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="With --loss: every detail, the tables also for a function that is right; with"
        " several files, each file's full report and what it printed.",
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Write a PNG of the loss along the coordinate that straddled a kink worst"
        " (needs matplotlib).",
        metavar="FILE.png",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON on stdout."),
) -> None:
    """Check the gradient; explain every kink. With --loss, check YOUR code.

    Compares the analytic gradient with centered differences, per coordinate.

    Runs in float64 on the 500-image dev sample: in float32 the rounding of a
    loss difference over h=1e-5 would swamp the comparison. Each coordinate is
    ok, kink (the step crossed a margin's kink, which explains the mismatch) or
    FAIL.

    With --loss, your function is also held against the multi-class hinge loss
    under both regularization conventions (reg*sum(W*W) and 0.5*reg*sum(W*W));
    a mismatch is named after the known mistake that reproduces it. It is run
    at other shapes (7 classes, N < D and N > D), and checked for changing its
    inputs in place.

    Each --loss file runs in a process of its own, within --timeout and
    --memory; one that hangs, crashes, runs out of memory or floods its output
    gets that verdict. Many files (--loss repeated, or a folder) are checked
    side by side on the cores and summed up in one table (--csv, --json).

    Exit status: 0 right; 1 wrong (a FAIL, or with --loss any finding; with
    many files: anything not right); 2 the command line (--loss included)
    cannot be understood; 3 your code could not be imported, raised, timed
    out, crashed or ran out of memory; 130 interrupted.

    Examples: svmtool gradcheck --delta 1.0 --sweep-delta 0,1e-3,0.1,1,10;
    svmtool gradcheck --loss cs231n/classifiers/linear_svm.py
    """
    import numpy as np

    from svmtool.core import gradcheck as gc
    from svmtool.io import model as model_io
    from svmtool.pipeline import gradcheck_batch, parse_floats
    from svmtool.report import check_json, gradcheck_table, sweep_interpretation, sweep_json

    if not (0 < h <= 0.1):
        # A step beyond 0.1 straddles nearly every kink: the check would say nothing.
        raise BadValue("--h", f"must be in (0, 0.1], got {h}")
    if not (delta >= 0 and math.isfinite(delta)):
        raise BadValue("--delta", f"must be >= 0, got {delta}")
    if reg is not None and not (reg >= 0 and math.isfinite(reg)):
        raise BadValue("--reg", f"must be >= 0, got {reg}")
    if checks < 1 and not coord:
        raise BadValue("--checks", f"must be >= 1, got {checks}")
    if not tol > 0:
        raise BadValue("--tol", f"must be > 0, got {tol}")
    deltas = parse_floats(sweep, "sweep-delta") if sweep else []
    if any(v < 0 for v in deltas):
        raise BadValue("--sweep-delta", f"values must be >= 0, got {sweep}")
    if model_path and weights:
        raise BadValue("--weights", "give --model or --weights, not both")
    if plot is not None:
        check_plot_destination(plot)
    specs = loss_specs(loss) if loss else None
    if specs is not None:
        check_loss_options(specs, loss, timeout, jobs, plot, csv_path)
        limits = sandbox_limits(timeout, memory, jobs, len(specs))
    model = model_io.load(model_path) if model_path else None
    with feature_progress() as progress:
        batch = gradcheck_batch(data, data_dir, model, seed, progress)
    for note in batch.notes:
        say(note)
    if batch.notice:
        say(batch.notice)
    W, X, y = batch.W, batch.X, batch.y
    point = "a trained model's W" if model else "W = 1e-4 * N(0, 1)"
    if weights is not None:
        W = weights_for(weights, X.shape[1], int(W.shape[1]))
        point = f"W from {weights}"
    if coord:
        coords = [_parse_coord(t) for t in coord]
    else:
        coords = gc.draw_coordinates(W.shape, checks, np.random.default_rng(seed + 1))
    sweep_points = []
    if deltas:
        given = model is not None or weights is not None
        at_check = gc.check_point(W.shape, np.random.default_rng(seed)) if given else W
        # at_check is a check_point draw: its expectation over the draw goes beside it.
        at_sweep = gc.sweep_delta(at_check, X, y, deltas, h, expected=True)
        sweep_points = [("the check point", at_sweep)]
        if given:
            label = "the model's W" if model is not None else "the given W"
            sweep_points.append((label, gc.sweep_delta(W, X, y, deltas, h)))
        if plot is not None:
            write_sweep_plot(plot, sweep_points)
    if specs is not None:
        from svmtool.usercheck import DEFAULT_REGS

        if show_kinks and not as_json:
            say(
                "--show-kinks does not apply with --loss: the samples behind each kink are in"
                " --json (regs[].checks[].kinks)"
            )
        kink_plot = str(plot) if plot and not deltas else None
        settings = {
            "regs": list(DEFAULT_REGS) if reg is None else [reg], "delta": delta,
            "coords": [list(c) for c in coords], "h": h, "tol": tol, "seed": seed,
            "source": batch.source, "point": point, "plot": kink_plot,
            "detail": True if verbose else None,
            "width": out.width, "color": out.is_terminal and out.color_system is not None,
        }  # fmt: skip
        if len(specs) == 1 and not _has_folder(loss):
            run_one_file(specs[0], settings, W, X, y, limits, as_json, sweep_points)
        run_many_files(specs, settings, W, X, y, limits, as_json, csv_path, verbose, sweep_points)
        return
    reg = 0.0 if reg is None else reg
    try:
        report = gc.gradcheck(W, X, y, coords, reg=reg, delta=delta, h=h, tol=tol)
    except ValueError as exc:
        raise SvmtoolError(str(exc)) from None
    if not math.isfinite(report.loss):
        raise SvmtoolError(
            f"the loss is {report.loss} at this point, so no difference of it means anything:"
            f" --delta {delta:g} or --reg {reg:g} is too large"
        )
    naive = gc.compare_naive(W, X, y, reg, delta)
    failed = any(c.status == "FAIL" for c in report.checks)
    plotted = str(plot) if plot and deltas else None
    if plot and not deltas:
        plotted = write_kink_plot(
            plot, gc.worst_kink(report.checks), W, X, y, reg=reg, delta=delta, h=h,
            advice=" (try more --checks, or --model for a trained W)",
        )  # fmt: skip

    if as_json:
        print_json(
            {
                "data": batch.source,
                "samples": int(X.shape[0]),
                "point": point,
                "delta": delta,
                "reg": reg,
                "h": h,
                "tol": tol,
                "loss": report.loss,
                "checks": [check_json(c) for c in report.checks],
                "summary": {
                    "worst_kink_free_rel_error": report.worst_kink_free_error,
                    "straddled_coordinates": sum(1 for c in report.checks if c.straddled),
                    "near_kink_fraction": report.near_kink_fraction,
                    "near_kink_distance": report.near_kink_distance,
                    "interpretation": _interpretation(report),
                },
                "sweep_delta": sweep_json(sweep_points) if sweep_points else [],
                "sweep_interpretation": sweep_interpretation(sweep_points) if deltas else [],
                "naive_vs_vectorized": vars(naive),
                "plot": plotted,
                "passed": not failed,
            }
        )
        raise typer.Exit(1 if failed else 0)

    out.print(
        clean(
            f"gradient check on {X.shape[0]} samples of {batch.source} (float64) at {point};"
            f" delta={delta:g}, reg={reg:g}, h={h:g}, tol={tol:g}, loss={report.loss:.6f}"
        ),
        soft_wrap=True,
    )
    print_table(out, gradcheck_table(report))
    if show_kinks:
        for c in report.checks:
            if not c.kinks:
                continue
            kt = Table(title=f"kinks straddled by ({c.d}, {c.c})")
            for name in ("sample", "label", "class j", "margin", "h*|x_nd|"):
                number_column(kt, name)
            for k in c.kinks:
                kt.add_row(
                    str(k.sample), str(k.label), str(k.cls), f"{k.margin:.3e}", f"{k.step:.3e}"
                )
            print_table(out, kt)
    worst = report.worst_kink_free_error
    worst_text = "none is kink-free" if math.isnan(worst) else f"{worst:.2e}"
    out.print(
        f"worst relative error among kink-free coordinates: {worst_text}\n"
        f"coordinates that straddled a kink: {sum(1 for c in report.checks if c.straddled)}"
        f" of {len(report.checks)}\n"
        f"margins within h*max|x| = {report.near_kink_distance:.3g} of zero:"
        f" {report.near_kink_fraction:.4%}",
        markup=False,
    )
    for line in _interpretation(report):
        out.print(line, markup=False)
    out.print(
        f"naive vs vectorized: loss difference {naive.loss_difference:.2e}, gradient difference"
        f" (Frobenius) {naive.gradient_difference:.2e}; naive {naive.naive_seconds * 1e3:.1f} ms,"
        f" vectorized {naive.vectorized_seconds * 1e3:.2f} ms"
        f" ({naive.naive_seconds / max(naive.vectorized_seconds, 1e-9):.0f}x)",
        markup=False,
    )
    render_sweep(sweep_points)
    if failed:
        raise typer.Exit(1)


def render_sweep(points) -> None:
    """The delta sweep's table and what its numbers show (nothing without --sweep-delta)."""
    from svmtool.report import _print_lines, sweep_interpretation, sweep_table

    if not points:
        return
    print_table(out, sweep_table(points))
    _print_lines(out, sweep_interpretation(points))


def write_sweep_plot(plot: Path, points) -> None:
    from svmtool.io import images
    from svmtool.io.files import write_atomic

    write_atomic(plot, lambda f: images.sweep_plot(points, f))
    say(f"the fraction of coordinates straddling a kink against delta: {plot}")


def check_plot_destination(plot: Path) -> None:
    """Fail before any work if --plot cannot be written."""
    from svmtool.io import images

    if not images.plots_available():
        raise SvmtoolError("--plot needs matplotlib: pip install 'svmtool[plots]'")
    if plot.is_dir():
        raise SvmtoolError(f"--plot {plot} is a folder; give a file name such as kink.png")
    parent = plot.parent if str(plot.parent) else Path(".")
    if not parent.is_dir():
        raise SvmtoolError(f"--plot {plot}: folder {parent} does not exist")


def write_kink_plot(
    plot: Path, worst, W, X, y, *, reg, delta, h, loss_fn=None, advice=""
) -> str | None:
    """Draw the loss around the kink-straddling coordinate ``worst`` (a CoordCheck,
    or None when nothing straddled) into ``plot``."""
    from svmtool.core import gradcheck as gc
    from svmtool.io import images
    from svmtool.io.model import write_atomic

    if worst is None:
        say(f"no checked coordinate straddled a kink, so {plot} was not written{advice}")
        return None
    curve = gc.kink_curve(W, X, y, worst, reg=reg, delta=delta, h=h, loss_fn=loss_fn)
    write_atomic(plot, lambda f: images.kink_plot(curve, f))
    say(f"the loss along W[{worst.d}, {worst.c}] around its kink: {plot}")
    return str(plot)


def weights_for(path: Path, rows: int, classes: int):
    """W from a .npy (np.save in a notebook), checked against the data: (D+1, C) floats."""
    import numpy as np

    from svmtool.io.npzfile import read_npy

    W = read_npy(path, "weights")
    if W.ndim != 2 or W.dtype.kind not in "fiu":
        raise SvmtoolError(
            f"--weights {path}: expected a 2-D array of numbers, got {W.dtype} {W.shape}"
        )
    if W.shape != (rows, classes):
        hint = ""
        if W.shape == (classes, rows):
            hint = " (transposed: C x D is the 2015 assignment's layout; use W.T)"
        elif W.shape == (rows - 1, classes):
            hint = " (one row short: the bias row goes last)"
        raise SvmtoolError(
            f"--weights {path} is {W.shape[0]} x {W.shape[1]}, the data needs {rows} x"
            f" {classes}{hint}"
        )
    W = W.astype(np.float64)
    if not np.all(np.isfinite(W)):
        raise SvmtoolError(f"--weights {path} holds NaN or infinite values")
    return W


def _folder_spec(text: str) -> tuple[Path, str | None] | None:
    """(folder, FUNC or None) when ``--loss`` names a folder (FOLDER or FOLDER:FUNC)."""
    head, sep, tail = text.rpartition(":")
    for target, func in ((text, None), (head, tail if sep and tail.isidentifier() else None)):
        if target and (func or target == text):
            folder = Path(target).expanduser()
            if folder.is_dir() and not folder.is_symlink():
                return folder, func
    return None


def _has_folder(loss: list[str]) -> bool:
    return any(_folder_spec(text) is not None for text in loss)


def loss_specs(loss: list[str]) -> list[str]:
    """Every --loss as PATH.py[:FUNC] or module:FUNC: a folder becomes each .py file
    under it, in sorted order (links and hidden folders left out); usage errors exit 2."""
    from svmtool.io.usercode import SpecError, parse_spec

    specs: list[str] = []
    for text in loss:
        folder_spec = _folder_spec(text)
        if folder_spec is None:
            try:
                parse_spec(text)
            except SpecError as exc:
                raise fail(str(exc), EXIT_USAGE) from None
            specs.append(text)
            continue
        folder, func = folder_spec
        found = []
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
            for name in files:
                path = Path(root) / name
                if name.endswith(".py") and not path.is_symlink() and path.is_file():
                    found.append(path)
        if not found:
            raise fail(f"--loss {text}: the folder holds no .py file", EXIT_USAGE)
        for path in sorted(found):
            specs.append(f"{path}:{func}" if func else str(path))
    return specs


def check_loss_options(specs, loss, timeout, jobs, plot, csv_path) -> None:
    if not (timeout > 0 and math.isfinite(timeout)):
        raise BadValue("--timeout", f"must be > 0 seconds, got {timeout:g}")
    if jobs is not None and jobs < 1:
        raise BadValue("--jobs", f"must be >= 1, got {jobs}")
    if plot is not None and (len(specs) > 1 or _has_folder(loss)):
        raise fail("--plot draws one file's kink: give one --loss file with it", EXIT_USAGE)
    if csv_path is not None:
        if csv_path.is_dir():
            raise SvmtoolError(f"--csv {csv_path} is a folder; give a file name such as marks.csv")
        parent = csv_path.parent if str(csv_path.parent) else Path(".")
        if not parent.is_dir():
            raise SvmtoolError(f"--csv {csv_path}: folder {parent} does not exist")


def sandbox_limits(timeout: float, memory: str, jobs: int | None, files: int):
    from svmtool import sandbox

    size = sandbox.parse_memory(memory)  # a BadValue: a usage error, exit 2
    cores = sandbox.available_cores()
    return sandbox.Limits(timeout, size, min(files, jobs or cores))


_OUTPUT_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _their_output(data: bytes) -> str:
    """What a user's file printed, decoded, control characters (but newlines, tabs) escaped."""
    text = data.decode("utf-8", errors="replace")
    return _OUTPUT_UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def run_one_file(spec, settings, W, X, y, limits, as_json, sweep_points=()) -> None:
    """gradcheck --loss FILE: the report of each function as soon as it is done (a
    loop-based loss takes a while); the file runs in a child process within the limits."""
    import time

    from svmtool import sandbox
    from svmtool.report import render_header
    from svmtool.usercheck import UserCheckReport

    started = time.monotonic()
    status = err.status("", spinner="dots") if err.is_terminal and not as_json else None

    def on_event(index: int, event: dict) -> None:
        kind = event["event"]
        if kind == "output":
            # Their prints go to stderr, as they come: stdout carries the report.
            sys.stderr.write(_their_output(event["bytes"]))
            sys.stderr.flush()
        elif kind == "calls" and status is not None:
            status.update(
                f"checking {clean(event.get('function'))}: call {event.get('calls')},"
                f" {time.monotonic() - started:.0f} s"
            )
        elif kind == "notice":
            say(str(event.get("text", "")))
        elif kind == "function" and not as_json:
            if status is not None:
                status.stop()
            sys.stdout.write(str(event.get("text", "")))
            sys.stdout.flush()
            if event.get("stderr"):
                err.print(literal_lines(event["stderr"]), soft_wrap=True)
            if status is not None:
                status.start()

    if not as_json:
        shape = W.shape
        header = UserCheckReport([], None, X.shape[0], shape, settings["source"],
                                 settings["point"], settings["h"], settings["tol"])  # fmt: skip
        render_header(header, out)
    if status is not None:
        status.start()
    try:
        (result,) = sandbox.run_files([spec], settings, W, X, y, limits, on_event)
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    finally:
        if status is not None:
            status.stop()
    if result.output and not result.output.endswith(b"\n"):
        sys.stderr.write("\n")
    if result.output_total > len(result.output):
        say(f"(it printed {result.output_total} bytes; the first {len(result.output)} are shown)")
    if result.exit_code == EXIT_INTERRUPTED:
        raise fail(result.message or "interrupted", EXIT_INTERRUPTED)
    if result.status == "usage error":
        raise fail(result.message, EXIT_USAGE)
    if as_json:
        document = dict(result.report or {"functions": [], "exit_code": result.exit_code})
        document.update(status=result.status, message=result.message or None,
                        exit_code=result.exit_code, passed=result.exit_code == 0)  # fmt: skip
        if sweep_points:
            from svmtool.report import sweep_json

            document["sweep_delta"] = sweep_json(sweep_points)
        print_json(document)
        for section in result.sections:
            if section["stderr"]:
                err.print(literal_lines(section["stderr"]), soft_wrap=True)
    if result.stderr:
        err.print(literal_lines(result.stderr), soft_wrap=True)
    elif result.message:
        say(f"Error: {spec}: {result.message}")
    if not as_json and result.tail:
        sys.stdout.write(result.tail)
    if not as_json:
        render_sweep(sweep_points)
        from svmtool.report import render_verdicts

        # Right and wrong say why; any other verdict is explained by the Error: line.
        render_verdicts(
            out,
            [
                (r.function, r.verdict, r.mistake if r.verdict in ("right", "wrong") else "")
                for r in result.rows
            ],
        )
    raise typer.Exit(result.exit_code)


def _convention_short(text: str) -> str:
    if text.startswith("0.5 * reg"):
        return "0.5*reg*sum(W*W)"
    if text.startswith("reg * sum"):
        return "reg*sum(W*W)"
    return "" if not text or text == "unknown" else text


def _common_folder(specs: list[str]) -> str:
    """The folder every spec's file is under ("" when none, or for module specs)."""
    paths = []
    for spec in specs:
        head, sep, tail = spec.rpartition(":")
        path = head if sep and tail.isidentifier() else spec
        if not path.endswith(".py"):
            return ""
        paths.append(os.path.dirname(path) or ".")
    try:
        common = os.path.commonpath(paths) if len(paths) > 1 else ""
    except ValueError:  # absolute and relative paths mixed
        return ""
    return "" if common in ("", ".", os.sep) else common


def _short_reason(verdict: str, text: str, width: int = 70) -> str:
    """The table's reason: without the verdict it repeats, cut to ``width``."""
    for prefix in (f"{verdict}: ", f"{verdict} "):
        text = text.removeprefix(prefix)
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def run_many_files(
    specs, settings, W, X, y, limits, as_json, csv_path, verbose, sweep_points=()
) -> None:
    """gradcheck with many --loss files: each in its own child, side by side on the
    cores; a progress bar, then one summary row per file and function."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from svmtool import sandbox
    from svmtool.report import render_header, sweep_json
    from svmtool.usercheck import UserCheckReport

    progress = None
    if err.is_terminal and not as_json:
        progress = Progress(
            TextColumn("checking"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.description}"), console=err, transient=True,
        )  # fmt: skip
    task = progress.add_task("", total=len(specs)) if progress else None
    current: dict[int, str] = {}

    def on_event(index: int, event: dict) -> None:
        if progress is None:
            return
        if event["event"] == "start":
            current[index] = specs[index]
        elif event["event"] == "finished":
            current.pop(index, None)
            progress.advance(task)
        else:
            return
        progress.update(task, description=clean(", ".join(current.values())))

    if not as_json:
        header = UserCheckReport([], None, X.shape[0], W.shape, settings["source"],
                                 settings["point"], settings["h"], settings["tol"])  # fmt: skip
        render_header(header, out)
        say(
            f"checking {len(specs)} files, {limits.jobs} at a time, each within"
            f" --timeout {limits.timeout:g} s and --memory {sandbox.size_text(limits.memory)}"
            if limits.memory
            else f"checking {len(specs)} files, {limits.jobs} at a time"
        )
    try:
        if progress is not None:
            progress.start()
        results = sandbox.run_files(specs, settings, W, X, y, limits, on_event)
    except KeyboardInterrupt:
        raise fail("interrupted", EXIT_INTERRUPTED) from None
    finally:
        if progress is not None:
            progress.stop()
    rows = [row for r in results for row in r.rows]
    counts = {v: sum(1 for r in rows if r.verdict == v) for v in sandbox.VERDICTS}
    usage = [r for r in results if r.status == "usage error"]
    failed = bool(usage) or any(r.verdict != "right" for r in rows) or not rows
    if csv_path is not None:
        write_summary_csv(csv_path, rows)
    if as_json:
        print_json(
            {
                "files": [
                    {**sandbox.result_json(r), "report": r.report, "rows": None} for r in results
                ],
                "rows": [vars(row) for row in rows],
                "counts": counts,
                "limits": vars(limits),
                "sweep_delta": sweep_json(sweep_points) if sweep_points else [],
                "exit_code": int(failed),
                "passed": not failed,
            }
        )
        raise typer.Exit(int(failed))
    if verbose:
        for r in results:
            out.print()
            out.rule(literal(r.spec))
            for section in r.sections:
                sys.stdout.write(section["text"])
                if section["stderr"]:
                    out.print(literal_lines(section["stderr"]), soft_wrap=True)
            if r.stderr:
                out.print(literal_lines(r.stderr), soft_wrap=True)
            elif r.message:
                out.print(literal(r.message, "bold red"), soft_wrap=True)
            if r.tail:
                sys.stdout.write(r.tail)
            if r.output:
                cut = r.output_total > len(r.output)
                out.print(
                    f"it printed {r.output_total} bytes"
                    + (f", the first {len(r.output)} of them:" if cut else ":"),
                    markup=False,
                )
                out.print(literal_lines(_their_output(r.output)), soft_wrap=True)
        out.print()
    table = Table(title="summary")
    text_column(table, "file")
    text_column(table, "function")
    text_column(table, "verdict")
    text_column(table, "mistake or reason")
    text_column(table, "regularization")
    number_column(table, "worst rel error")
    styles = {"right": "green", "wrong": "bold red"}
    folder = _common_folder(specs)
    if folder:
        out.print(literal(f"files under {folder}{os.sep}:"), soft_wrap=True)
    for row in rows:
        table.add_row(
            literal(os.path.relpath(row.file, folder) if folder else row.file),
            literal(row.function),
            literal(row.verdict, styles.get(row.verdict, "bold yellow")),
            literal(_short_reason(row.verdict, row.mistake)),
            literal(_convention_short(row.convention)),
            "" if row.worst_rel_error is None else f"{row.worst_rel_error:.1e}",
        )
    print_table(out, table)
    for r in usage:
        say(f"Error: {r.message}")
    said = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    out.print(
        literal(f"{len(results)} files, {len(rows)} functions: {said or 'none checked'}"),
        soft_wrap=True,
    )
    render_sweep(sweep_points)
    if csv_path is not None:
        say(f"wrote {len(rows)} rows to {csv_path}")
    raise typer.Exit(int(failed))


CSV_FIELDS = ("file", "function", "verdict", "mistake", "convention", "worst_rel_error",
              "mistake_keys", "findings")  # fmt: skip


def write_summary_csv(path: Path, rows) -> None:
    """One row per file and function, for a spreadsheet; written to a temporary name
    and moved into place."""
    import csv
    import io

    from svmtool.io.files import write_atomic

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_FIELDS)
    for row in rows:
        writer.writerow(
            [
                row.file,
                row.function,
                row.verdict,
                row.mistake,
                row.convention,
                "" if row.worst_rel_error is None else f"{row.worst_rel_error:.3e}",
                ";".join(row.mistake_keys),
                " | ".join(row.findings),
            ]
        )
    data = buffer.getvalue().encode("utf-8")
    write_atomic(path, lambda f: f.write(data))


# --- cache ----------------------------------------------------------------------------

cache_app = typer.Typer(
    cls=Group,
    help="The feature cache: what is in it, and clearing it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cache_app, name="cache")

_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))


def parse_age(text: str) -> float:
    """'30d', '12h', '45m', '90s' (or plain seconds) -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not match:
        raise BadValue("--older-than", f"{text!r} is not an age such as 30d, 12h, 45m or 90s")
    unit = dict(_UNITS).get(match.group(2) or "s", 1)
    return float(match.group(1)) * unit


def size_text(count: int) -> str:
    """Bytes as people read them: '812 B', '4.2 MB', '1.3 GB'."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def age_text(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.0f} s"


def _cache_root(cache_dir: Path | None) -> Path:
    from svmtool.io.featurecache import default_cache_dir

    return cache_dir if cache_dir is not None else default_cache_dir()


def _entry_json(entry) -> dict:
    return {
        "name": entry.path.name,
        "path": str(entry.path),
        "bytes": entry.bytes,
        "age_seconds": entry.age_seconds,
        "about": entry.about,
    }


@cache_app.command("list", cls=Command)
@handle_errors
def cache_list(
    cache_dir: Path | None = cache_dir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """List the feature cache's entries: size, age (since stored), what each is.

    Example: svmtool cache list
    """
    from svmtool.io.featurecache import entries

    root = _cache_root(cache_dir)
    found = entries(root)
    total = sum(e.bytes for e in found)
    if as_json:
        print_json(
            {"cache_dir": str(root), "bytes": total, "entries": [_entry_json(e) for e in found]}
        )
        return
    out.print(
        literal(f"feature cache in {root}: {len(found)} entries, {size_text(total)}"),
        soft_wrap=True,
    )
    if not found:
        return
    table = Table()
    text_column(table, "entry")
    number_column(table, "size")
    number_column(table, "age")
    text_column(table, "what")
    for e in found:
        table.add_row(
            literal(e.path.name[:12]), size_text(e.bytes), age_text(e.age_seconds), literal(e.about)
        )
    print_table(out, table)


@cache_app.command("clear", cls=Command)
@handle_errors
def cache_clear(
    older_than: str | None = typer.Option(
        None,
        "--older-than",
        help="Only entries stored longer ago than this: 30d, 12h, 45m, 90s.",
        metavar="AGE",
    ),
    cache_dir: Path | None = cache_dir_option(),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Remove the feature cache's entries (all, or the old ones).

    Only svmtool's own entries are removed: anything else in the folder (a link,
    a file, another folder) is left alone, and no link is followed. An entry
    removed is computed again the next time it is needed.

    Example: svmtool cache clear --older-than 30d
    """
    from svmtool.io.featurecache import entries, remove

    limit = parse_age(older_than) if older_than is not None else None
    root = _cache_root(cache_dir)
    chosen = [e for e in entries(root) if limit is None or e.age_seconds > limit]
    for entry in chosen:
        remove(entry)
    freed = sum(e.bytes for e in chosen)
    if as_json:
        print_json(
            {"cache_dir": str(root), "bytes": freed, "removed": [_entry_json(e) for e in chosen]}
        )
        return
    say(f"removed {len(chosen)} entries ({size_text(freed)}) from {root}")


# --- visualize -----------------------------------------------------------------------


@app.command(cls=Command)
@handle_errors
def visualize(
    model_path: Path = typer.Option(
        Path("svm_model.npz"), "--model", help="The model file.", metavar="FILE"
    ),
    out_dir: Path = typer.Option(
        Path("templates"), "--out-dir", help="Where the PNGs go.", metavar="DIR"
    ),
    scale: str = typer.Option(
        "global",
        "--scale",
        help="global (one range for all classes, so they compare) or per-class.",
        metavar="global|per-class",
    ),
    zoom: int = typer.Option(
        4, "--zoom", help="Enlarge each template this many times.", metavar="N"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Write class templates and plots as PNGs.

    Files: NN_classname.png per class, templates.png, and with matplotlib
    (pip install 'svmtool[plots]') loss.png and, after a grid search, grid.png.
    A hog model has no image template: its files show each class's weight per
    HOG cell (NN_classname_hog_cells.png, hog_cells.png). A kmeans model's
    centroids.png shows its dictionary as 6x6 patches.

    What an earlier visualize wrote into the same folder and this run does not
    write (another model's classes, an old grid.png) is removed; other files
    are left alone. The list lives in the folder's .svmtool-visualize.json.

    Example: svmtool visualize --out-dir templates
    """
    from svmtool.io import images
    from svmtool.io import model as model_io

    if not 1 <= zoom <= 64:
        raise BadValue("--zoom", f"must be in 1..64, got {zoom}")
    check_choice("--scale", scale, ("global", "per-class"), "global or per-class")
    if out_dir.exists() and not out_dir.is_dir():
        raise SvmtoolError(f"--out-dir {out_dir} exists and is not a folder")
    model = model_io.load(model_path)
    if len(model.image_shape) != 3:
        raise SvmtoolError(f"{model_path}: image shape {model.image_shape} is not H x W x C")
    files: dict[str, object] = {}
    kind = model.features.kind
    if kind == "pixels":
        pictures = images.templates(model.W, model.image_shape, scale)
        tiles = [images.to_pil(p, zoom) for p in pictures]
        for i, (tile, name) in enumerate(zip(tiles, model.class_names, strict=True)):
            files[f"{i:02d}_{images.safe_filename(name)}.png"] = tile
        files["templates.png"] = images.montage(tiles, model.class_names)
    elif kind == "hog":
        from svmtool.core.features import hog_cell

        cell = hog_cell(model.features)
        say(
            "a hog model has no image template: W weighs HOG cells and hue bins, not"
            f" pixels. Writing each class's weight per {cell}x{cell} cell (sum over the 9"
            " orientations; red for, blue against the class, one scale for all classes)"
            " instead."
        )
        maps = images.diverging(images.hog_cell_maps(model.W, model.image_shape, cell))
        cell_zoom = zoom * cell
        tiles = [images.to_pil(m, cell_zoom) for m in maps]
        for i, (tile, name) in enumerate(zip(tiles, model.class_names, strict=True)):
            files[f"{i:02d}_{images.safe_filename(name)}_hog_cells.png"] = tile
        files["hog_cells.png"] = images.montage(tiles, model.class_names)
    else:
        a = model.features.arrays
        say(
            "a kmeans model's W weighs pooled centroid activations, not pixels. Writing its"
            f" {a['centroids'].shape[0]} centroids mapped back through the whitening as 6x6"
            " patches (each stretched to full contrast)."
        )
        patches = images.centroid_patches(
            a["centroids"], a["whiten_mean"], a["whiten"], model.image_shape[2]
        )
        files["centroids.png"] = images.patch_montage(patches, zoom)
    if images.plots_available():
        if len(model.loss_history):
            files["loss.png"] = functools.partial(images.loss_plot, model.loss_history)
        if model.grid:
            files["grid.png"] = functools.partial(images.grid_heatmap, model.grid)
    else:
        say("loss.png and grid.png need matplotlib: pip install 'svmtool[plots]'")
    result = images.write_outputs(out_dir, files)
    if as_json:
        print_json(
            {
                "out_dir": str(out_dir),
                "files": [str(p) for p in result.written],
                "removed": [str(p) for p in result.removed],
            }
        )
        return
    for path in result.written:
        print(clean(path))
    if result.removed:
        say(
            f"removed {len(result.removed)} file(s) an earlier visualize wrote here: "
            + ", ".join(p.name for p in result.removed)
        )


def main() -> None:
    """Console-script entry point."""
    app(prog_name="svmtool")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
