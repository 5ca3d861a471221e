"""svmtool visualize: class templates (or what stands in for them) and plots, as PNGs."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from svmtool.commands.common import print_json, say
from svmtool.commands.options import Json, ModelFile
from svmtool.errors import BadValue, SvmtoolError, check_choice
from svmtool.terminal import clean


def visualize(
    model_path: ModelFile = Path("svm_model.npz"),
    out_dir: Annotated[
        Path, typer.Option("--out-dir", help="Where the PNGs go.", metavar="DIR")
    ] = Path("templates"),
    scale: Annotated[
        str,
        typer.Option(
            "--scale",
            help="global (one range for all classes, so they compare) or per-class.",
            metavar="global|per-class",
        ),
    ] = "global",
    zoom: Annotated[
        int, typer.Option("--zoom", help="Enlarge each template this many times.", metavar="N")
    ] = 4,
    as_json: Json = False,
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
    files = pictures_of(model, scale, zoom)
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


def pictures_of(model, scale: str, zoom: int) -> dict[str, object]:
    """File name -> picture: pixel templates, a hog model's cell weights, or a kmeans
    model's dictionary (saying on stderr what stands in for the templates)."""
    from svmtool.io import images

    files: dict[str, object] = {}
    kind = model.features.kind
    if kind == "pixels":
        W = model.W
        if model.features.arrays:
            # Trained on standardized pixels: W / scale weighs the pixels themselves
            # (minus the mean image), so the templates read as a plain pixel model's.
            import numpy as np

            W = np.array(W, dtype=np.float64)
            W[:-1] /= model.features.arrays["scale"][:, None]
            say(
                "this model's pixels were standardized for training: the templates show"
                " each weight divided by its pixel's scale (the weight on the pixel value)."
            )
        pictures = images.templates(W, model.image_shape, scale)
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
    return files
