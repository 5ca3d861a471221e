"""svmtool predict: the class of image files, by a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from svmtool.commands.common import EXIT_ERROR, out, print_json, say
from svmtool.commands.options import Json, ModelFile
from svmtool.errors import BadValue


def predict(
    images: Annotated[
        list[Path],
        typer.Argument(
            metavar="IMAGE",
            help="PNG or JPEG files, any size (transparent pixels count as white).",
        ),
    ],
    model_path: ModelFile = Path("svm_model.npz"),
    top: Annotated[int, typer.Option("--top", help="How many scores to show.", metavar="N")] = 3,
    as_json: Json = False,
) -> None:
    """Predict the class of image files.

    Each image is read as a viewer shows it (EXIF orientation applied, 16-bit
    grayscale scaled, transparency over white), resized to the model's image
    shape and converted to its channels, then preprocessed with the model's
    mean image. Only PNG and JPEG are decoded; images over Pillow's pixel
    limit are refused.

    Example: svmtool predict cat.png plane.jpg
    """
    from svmtool.evaluation import predict_files
    from svmtool.io import model as model_io
    from svmtool.render.predictions import predictions_json, render_predictions

    if top < 1:
        raise BadValue("--top", f"must be >= 1, got {top}")
    model = model_io.load(model_path)
    results = predict_files(model, images, top)
    failed = [r for r in results if r.error is not None]
    if as_json:
        print_json(predictions_json(model_path, results))
    for r in failed:
        say(f"Error: {r.error}")
    if as_json or (failed and len(failed) == len(results)):
        raise typer.Exit(EXIT_ERROR if failed else 0)
    render_predictions(out, results, min(top, model.num_classes))
    if failed:
        raise typer.Exit(EXIT_ERROR)
