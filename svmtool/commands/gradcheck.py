"""svmtool gradcheck: the gradient against centered differences, every kink explained;
with --loss, the user's own loss code (commands/gradcheck_loss.py runs it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from svmtool.commands.common import err, out, print_json, say
from svmtool.commands.options import Delta, ModelDataDir, data_option, json_option, model_option
from svmtool.errors import BadValue, SvmtoolError

Reg = Annotated[
    float | None,
    typer.Option(
        "--reg",
        help="L2 strength (default 0; with --loss, 0 and then 5e1, as CS231n's notebook).",
        metavar="FLOAT",
    ),
]
Checks = Annotated[
    int, typer.Option("--checks", help="How many coordinates to draw with the seed.", metavar="N")
]
Step = Annotated[float, typer.Option("--h", help="The centered-difference step.", metavar="FLOAT")]
Seed = Annotated[
    int, typer.Option("--seed", help="Seeds W, the batch and the coordinates.", metavar="N")
]
Coord = Annotated[
    list[str] | None,
    typer.Option("--coord", help="Check coordinate d,c (repeatable).", metavar="D,C"),
]
Tol = Annotated[
    float,
    typer.Option(
        "--tol",
        help="Relative error |numeric - analytic| / (|numeric| + |analytic|) allowed on"
        " kink-free coordinates (away from kinks the check is exact up to rounding, ~1e-10;"
        " a wrong gradient term gives 1e-3 or more). A difference within the rounding of the"
        " two losses, 8 * eps * (|L+| + |L-| + 1) / 2h, passes too: at a tiny --h that"
        " allowance exceeds tol.",
        metavar="FLOAT",
    ),
]
ShowKinks = Annotated[bool, typer.Option("--show-kinks", help="List the samples behind each kink.")]
Sweep = Annotated[
    str | None,
    typer.Option(
        "--sweep-delta",
        help="Comma-separated deltas: how often kinks occur for each.",
        metavar="DELTA[,DELTA...]",
    ),
]
Data = Annotated[
    str | None,
    data_option(
        "Default: the model's data with --model; else CIFAR-10 when it is in the default"
        " folder ($SVMTOOL_DATA_DIR, else the user cache), else synthetic, with a notice. Data"
        " named by --data or --data-dir must be there."
    ),
]
AtModel = Annotated[Path | None, model_option("Check at a trained model's W.")]
Weights = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="Check at this W: a .npy file saved with np.save (D+1 x C).",
        metavar="FILE.npy",
    ),
]
Loss = Annotated[
    list[str] | None,
    typer.Option(
        "--loss",
        help="Check YOUR loss function: PATH.py:FUNC, package.module:FUNC, or PATH.py for its"
        " svm_loss_naive and svm_loss_vectorized. Called as FUNC(W, X, y, reg) -> (loss, dW)"
        " (delta too if it takes one). Loading the file runs it, as pytest does, in a process"
        " of its own. Repeat it, or give a folder (every .py file under it), to check many"
        " files: then a summary table.",
        metavar="PATH.py[:FUNC]",
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="With --loss: seconds each file may run (importing and all checks) before it is"
        " stopped and reported as timed out.",
        metavar="SECONDS",
    ),
]
Memory = Annotated[
    str,
    typer.Option(
        "--memory",
        help="With --loss: the memory (address space) each file's process may use, e.g. 2G"
        " or 512M; 0 for no limit.",
        metavar="SIZE",
    ),
]
Jobs = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        help="With several --loss files: how many to check at a time (default: the cores"
        " this process may use).",
        metavar="N",
    ),
]
Csv = Annotated[
    Path | None,
    typer.Option(
        "--csv",
        help="With --loss: write the summary, one row per file and function, to this CSV file.",
        metavar="FILE.csv",
    ),
]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        help="With --loss: every detail, the tables also for a function that is right; with"
        " several files, each file's full report and what it printed.",
    ),
]
Plot = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        help="Write a PNG of the loss along the coordinate that straddled a kink worst"
        " (needs matplotlib).",
        metavar="FILE.png",
    ),
]


def gradcheck(
    delta: Delta = 1.0,
    reg: Reg = None,
    checks: Checks = 10,
    h: Step = 1e-5,
    seed: Seed = 0,
    coord: Coord = None,
    tol: Tol = 1e-6,  # gradcheck.DEFAULT_TOL, written out so that --help needs no numpy
    show_kinks: ShowKinks = False,
    sweep: Sweep = None,
    data: Data = None,
    data_dir: ModelDataDir = None,
    model_path: AtModel = None,
    weights: Weights = None,
    loss: Loss = None,
    timeout: Timeout = 60.0,
    memory: Memory = "2G",
    jobs: Jobs = None,
    csv_path: Csv = None,
    verbose: Verbose = False,
    plot: Plot = None,
    as_json: Annotated[bool, json_option("Print everything as JSON on stdout.")] = False,
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

    from svmtool.commands import gradcheck_loss as user
    from svmtool.core import gradcheck as gc
    from svmtool.gradbatch import gradcheck_batch
    from svmtool.io import model as model_io
    from svmtool.render.progress import feature_progress
    from svmtool.trainplan import parse_floats

    check_options(h, delta, reg, checks, coord, tol)
    deltas = parse_floats(sweep, "sweep-delta") if sweep else []
    if any(v < 0 for v in deltas):
        raise BadValue("--sweep-delta", f"values must be >= 0, got {sweep}")
    if model_path and weights:
        raise BadValue("--weights", "give --model or --weights, not both")
    if plot is not None:
        check_plot_destination(plot)
    specs = user.loss_specs(loss) if loss else None
    if specs is not None:
        user.check_loss_options(specs, loss, timeout, jobs, plot, csv_path)
        limits = user.sandbox_limits(timeout, memory, jobs, len(specs))
    model = model_io.load(model_path) if model_path else None
    with feature_progress(err) as progress:
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
    given = "the model's W" if model is not None else "the given W" if weights is not None else ""
    sweep_points = sweep_at(W, X, y, deltas, h, seed, given)
    if sweep_points and plot is not None:
        write_sweep_plot(plot, sweep_points)
    if specs is not None:
        if show_kinks and not as_json:
            say(
                "--show-kinks does not apply with --loss: the samples behind each kink are in"
                " --json (regs[].checks[].kinks)"
            )
        settings = user_settings(reg, delta, coords, h, tol, seed, batch.source, point,
                                 str(plot) if plot and not deltas else None, verbose)  # fmt: skip
        if len(specs) == 1 and not user.has_folder(loss):
            user.run_one_file(specs[0], settings, W, X, y, limits, as_json, sweep_points)
        user.run_many_files(
            specs, settings, W, X, y, limits, as_json, csv_path, verbose, sweep_points
        )
        return
    check_builtin(W, X, y, coords, batch.source, point, sweep_points, plot, show_kinks, as_json,
                  reg=0.0 if reg is None else reg, delta=delta, h=h, tol=tol)  # fmt: skip


def check_options(h: float, delta: float, reg, checks: int, coord, tol: float) -> None:
    """What the command line cannot accept, said before any data is read."""
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


def user_settings(reg, delta, coords, h, tol, seed, source, point, kink_plot, verbose) -> dict:
    """What each --loss child is told: the regs, the point, the coordinates, the width."""
    from svmtool.usercheck import DEFAULT_REGS

    return {
        "regs": list(DEFAULT_REGS) if reg is None else [reg], "delta": delta,
        "coords": [list(c) for c in coords], "h": h, "tol": tol, "seed": seed,
        "source": source, "point": point, "plot": kink_plot,
        "detail": True if verbose else None,
        "width": out.width, "color": out.is_terminal and out.color_system is not None,
    }  # fmt: skip


def sweep_at(W, X, y, deltas: list[float], h: float, seed: int, given: str) -> list:
    """--sweep-delta: [(label, [SweepRow])] at the check point, and at the given W
    (``given`` names it; "" when W is the check point's own draw)."""
    import numpy as np

    from svmtool.core import gradcheck as gc

    if not deltas:
        return []
    at_check = gc.check_point(W.shape, np.random.default_rng(seed)) if given else W
    # at_check is a check_point draw: its expectation over the draw goes beside it.
    points = [("the check point", gc.sweep_delta(at_check, X, y, deltas, h, expected=True))]
    if given:
        points.append((given, gc.sweep_delta(W, X, y, deltas, h)))
    return points


def check_builtin(W, X, y, coords, source, point, sweep_points, plot, show_kinks, as_json, *,
                  reg: float, delta: float, h: float, tol: float) -> None:  # fmt: skip
    """The check of the reference hinge loss at W: report, JSON, plot; exit 1 on a FAIL."""
    from svmtool.core import gradcheck as gc
    from svmtool.render.gradcheck import gradcheck_json, render_gradcheck
    from svmtool.render.sweep import render_sweep

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
    plotted = str(plot) if plot and sweep_points else None
    if plot and not sweep_points:
        plotted = write_kink_plot(
            plot, gc.worst_kink(report.checks), W, X, y, reg=reg, delta=delta, h=h,
            advice=" (try more --checks, or --model for a trained W)",
        )  # fmt: skip
    settings = {"delta": delta, "reg": reg, "h": h, "tol": tol}
    about = {"source": source, "samples": int(X.shape[0]), "point": point, "settings": settings}
    if as_json:
        print_json(gradcheck_json(report, naive, sweep_points=sweep_points, plotted=plotted,
                                  **about))  # fmt: skip
        raise typer.Exit(1 if failed else 0)
    render_gradcheck(out, report, naive, show_kinks=show_kinks, **about)
    render_sweep(out, sweep_points)
    if failed:
        raise typer.Exit(1)


def _parse_coord(text: str) -> tuple[int, int]:
    try:
        d, c = (int(v) for v in text.split(","))
    except ValueError:
        raise BadValue("--coord", f"must be d,c (two integers), got {text!r}") from None
    return d, c


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
