"""svmtool evaluate: a model's accuracy on a split, per class, and its confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from svmtool.commands.common import err, out, print_json, say
from svmtool.commands.options import (
    CacheDir,
    Json,
    ModelDataDir,
    ModelFile,
    cache_switch,
    data_option,
)
from svmtool.errors import BadValue, check_choice


def evaluate(
    model_path: ModelFile = Path("svm_model.npz"),
    split: Annotated[
        str, typer.Option("--split", help="val, train or test.", metavar="val|train|test")
    ] = "test",
    data: Annotated[
        str | None,
        data_option(
            "Default: the data the model was trained on. Other data needs the model's image"
            " shape and classes."
        ),
    ] = None,
    data_dir: ModelDataDir = None,
    num_test: Annotated[
        int | None,
        typer.Option(
            "--num-test",
            help="Evaluate on the first N test images (CS231n: 1000; default: the whole test set).",
            metavar="N",
        ),
    ] = None,
    ignore_class_names: Annotated[
        bool,
        typer.Option(
            "--ignore-class-names",
            help="Evaluate data whose class names differ from the model's (the count must"
            " match; label k is taken to be the model's class k).",
        ),
    ] = False,
    as_json: Json = False,
    use_cache: Annotated[
        bool, cache_switch("kmeans models: read and store the split's features.")
    ] = True,
    cache_dir: CacheDir = None,
) -> None:
    """Accuracy per class, and a confusion matrix.

    The test split is the whole test set (10,000 images for CIFAR-10) unless
    --num-test asks for its first N. The train and val splits are the model's
    own, recomputed from its seed and sizes.

    Example: svmtool evaluate --split test --num-test 1000
    """
    from svmtool.evaluation import evaluate as run_evaluate
    from svmtool.io import model as model_io
    from svmtool.render.evaluation import evaluation_json, render_evaluation
    from svmtool.render.progress import feature_progress

    # What the command line cannot accept is said before any file is read.
    check_choice("--split", split, ("val", "train", "test"), "val, train or test")
    if num_test is not None and num_test < 1:
        raise BadValue("--num-test", f"must be >= 1, got {num_test}")
    model = model_io.load(model_path)
    notes: list[str] = []
    with feature_progress(err) as progress:
        result = run_evaluate(
            model, split, data, data_dir, num_test, ignore_class_names, progress, notes, use_cache,
            cache_dir=cache_dir,
        )  # fmt: skip
    for note in notes:
        say(note)
    for warning in result.warnings:
        say(f"Warning: {warning}")
    if as_json:
        print_json(evaluation_json(result, model.class_names))
        return
    render_evaluation(out, result, model.class_names)
