"""The jobs that read a trained model: evaluate it on a split, predict image files,
and the rows its W scores (preprocessed, or its features standardized)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool.errors import BadValue, DataNotFound, SvmtoolError, check_choice
from svmtool.io.data import CIFAR10, DOWNLOADABLE, Dataset, load_dataset, preprocess, split
from svmtool.io.model import Model
from svmtool.pipeline import FILE_CHANNELS
from svmtool.trainfeatures import cached_raw_features, feature_cache
from svmtool.trainplan import ProgressFn, data_source_name


@dataclass
class Evaluation:
    """Accuracy of a model on one split. confusion[i, j]: true i predicted j.

    count: images evaluated; available: images the split could have held
    (the whole test set, for a test split of its first ``count``).
    """

    split: str
    accuracy: float
    per_class: list[float | None]
    confusion: np.ndarray
    count: int
    available: int = 0
    warnings: list[str] = field(default_factory=list)


def model_rows(
    model: Model,
    images: np.ndarray,
    rows: np.ndarray | None = None,
    cache=None,
    notes: list[str] | None = None,
    progress: ProgressFn | None = None,
    dtype: type | None = None,
    source: str = "",
) -> np.ndarray:
    """The rows the model's W scores: images preprocessed with the model's own mean
    image (standardized per pixel, if the model's pixels are), or turned into its
    features and standardized, in the model's dtype (or ``dtype``).

    images: (M, H, W, C) uint8; rows: which images (all if None). With a
    ``cache``, raw features are read from and stored in it.
    """
    check_image_shape(images.shape[1:], model)
    dtype = dtype or model.W.dtype.type
    if model.features.kind == "pixels" and not model.features.arrays:
        return preprocess(images, model.mean_image, rows, dtype=dtype)
    from svmtool.core.features import standardized_pixels, standardized_rows

    if model.features.kind == "pixels":
        return standardized_pixels(model.features, images, rows, dtype)

    index = np.arange(images.shape[0]) if rows is None else np.asarray(rows)
    if notes is None:
        notes = []
    raw = cached_raw_features(model.features, images, index, cache, notes, progress, source)
    a = model.features.arrays
    return standardized_rows(raw, a["mean"], a["scale"], None, dtype)


def check_image_shape(image_shape: tuple[int, ...], model: Model) -> None:
    """A model scores only images of the shape it was trained on: no option changes that."""
    if tuple(image_shape) != model.image_shape:
        raise SvmtoolError(
            f"the data's images are {tuple(image_shape)} but the model expects {model.image_shape}"
        )


def check_classes(dataset: Dataset, model: Model, ignore_names: bool = False) -> None:
    """The data must have the model's image shape (checked first: nothing overrides
    it), its number of classes and, unless ``ignore_names``, the same class names in
    the same order."""
    check_image_shape(dataset.image_shape, model)
    names = list(dataset.class_names)
    if len(names) != model.num_classes:
        raise SvmtoolError(f"the data has {len(names)} classes, the model {model.num_classes}")
    if ignore_names:
        return
    for k, (ours, theirs) in enumerate(zip(model.class_names, names, strict=True)):
        if ours != theirs:
            raise SvmtoolError(
                f"the data's classes are not the model's: label {k} is {theirs!r} in the data"
                f" but {ours!r} in the model (pass --ignore-class-names if the labels mean the"
                " same classes)"
            )


def model_data(model: Model, data: str | None, data_dir: Path | None) -> tuple[str, Path | None]:
    """The data a command reads for ``model``: ``data``, else the model's own; and
    the CIFAR-10 folder: ``data_dir``, else the folder the model was trained from."""
    recorded = model.settings.get("data", CIFAR10)
    source = data if data is not None else recorded
    folder = data_dir
    if (
        folder is None
        and source == recorded
        and source in DOWNLOADABLE
        and model.settings.get("data_dir")
    ):
        folder = Path(model.settings["data_dir"])
    return source, folder


def load_model_data(
    model: Model, data: str | None, data_dir: Path | None, progress: ProgressFn | None = None
) -> Dataset:
    """``model_data``, loaded; a recorded folder that lost its data is said as such.
    An image folder is read at the model's image size and channels."""
    source, folder = model_data(model, data, data_dir)
    h, w, c = model.image_shape
    try:
        return load_dataset(
            source, folder, image_size=(h, w), channels=c if c in (1, 3) else None,
            progress=progress, labels=str(model.settings.get("labels", "fine")),
        )  # fmt: skip
    except DataNotFound:
        if data_dir is None and folder is not None and source == CIFAR10:
            raise DataNotFound(
                f"the model was trained on CIFAR-10 from {folder}, which no longer holds it;"
                f" run: svmtool download --data-dir {folder}"
            ) from None
        if data_dir is None and folder is not None:
            raise DataNotFound(
                f"the model was trained on {source} from {folder}, which no longer holds it;"
                f" run: svmtool download --dataset {source} --data-dir {folder}"
            ) from None
        raise


def evaluate(
    model: Model,
    which: str,
    data: str | None = None,
    data_dir: Path | None = None,
    num_test: int | None = None,
    ignore_class_names: bool = False,
    progress: ProgressFn | None = None,
    notes: list[str] | None = None,
    use_cache: bool = True,
    cache_dir: Path | None = None,
) -> Evaluation:
    """Accuracy, per-class accuracy and confusion matrix on the train, val or test split.

    test: the whole test set, or its first ``num_test`` images; no training
    split is involved, so any data with the model's image shape and classes
    works. train/val: the model's own split when ``data`` is the model's data
    (same seed and sizes), else that data's default split with the model's seed.
    Feature models compute their features of the split (k-means: read from or
    stored in the feature cache; ``notes`` says which).
    """
    check_choice("--split", which, ("val", "train", "test"), "val, train or test")
    if num_test is not None and which != "test":
        raise BadValue("--num-test", f"applies to --split test, not --split {which}")
    if num_test is not None and num_test < 1:
        raise BadValue("--num-test", f"must be >= 1, got {num_test}")
    if notes is None:
        notes = []
    source, _ = model_data(model, data, data_dir)
    dataset = load_model_data(model, data, data_dir, progress)
    notes.extend(dataset.notes)
    check_classes(dataset, model, ignore_class_names)
    settings = model.settings
    if which == "test":
        available = int(dataset.test_images.shape[0])
        count = available if num_test is None else min(num_test, available)
        if num_test is not None and num_test > available:
            # CS231n's notebook asks for 1000: a smaller folder scores what it has.
            notes.append(
                f"--num-test {num_test} asks for more than the {available} test images there"
                f" are: scoring all {available}"
            )
        images, labels, rows = dataset.test_images, dataset.test_labels, np.arange(count)
    else:
        own = data_source_name(source) == settings.get("data", CIFAR10)
        sizes = (
            {"num_train": settings.get("num_train"), "num_val": settings.get("num_val")}
            if own
            else {}
        )
        parts = split(dataset, seed=int(settings.get("seed", 0)), **sizes)
        images, labels = dataset.train_images, dataset.train_labels
        rows = parts.train if which == "train" else parts.val
        available = int(rows.size)
    if rows.size == 0:
        raise SvmtoolError(f"the {which} split of {source} is empty")
    cache = feature_cache(cache_dir) if use_cache and model.features.kind == "kmeans" else None
    named = data_source_name(source)
    if cache is not None and which != "test" and tuple(images.shape[1:]) == model.image_shape:
        # train stored the features of train + val as one entry: read that one.
        from svmtool.core.features import standardized_rows

        union = np.sort(np.concatenate([parts.train, parts.val]))
        if notes is None:
            notes = []
        raw = cached_raw_features(model.features, images, union, cache, notes, progress, named)
        a = model.features.arrays
        X = standardized_rows(
            raw, a["mean"], a["scale"], np.searchsorted(union, rows), model.W.dtype.type
        )
    else:
        X = model_rows(model, images, rows, cache, notes, progress, source=named)
    y = np.asarray(labels)[rows]
    from svmtool.core.train import predict

    predicted = predict(model.W, X)
    c = model.num_classes
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    totals = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / totals[i]) if totals[i] else None for i in range(c)]
    warnings = []
    absent = [model.class_names[i] for i in range(c) if not totals[i]]
    if absent:
        shown = ", ".join(repr(n) for n in absent[:5])
        more = f" and {len(absent) - 5} more" if len(absent) > 5 else ""
        warnings.append(
            f"the {which} split ({y.size} images) has no image of {len(absent)} class(es)"
            f" ({shown}{more}): their accuracy is undefined"
        )
    return Evaluation(
        which,
        float((predicted == y).mean()),
        per_class,
        confusion,
        int(y.size),
        available,
        warnings,
    )


@dataclass
class Prediction:
    path: str
    label: str | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None


def predict_files(model: Model, paths: list[Path], top: int = 3) -> list[Prediction]:
    """Predict each image file; an unreadable file gets its own error, the rest go on."""
    from svmtool.io.images import read_image

    channels = model.image_shape[2]
    if channels not in FILE_CHANNELS:
        raise SvmtoolError(
            f"the model was trained on {channels}-channel images, and an image file gives 1 or"
            " 3 channels: predict cannot use it (evaluate it on .npz data instead)"
        )

    results = []
    for path in paths:
        try:
            image = read_image(path, model.image_shape)
        except SvmtoolError as exc:
            results.append(Prediction(str(path), error=str(exc)))
            continue
        row = model_rows(model, image[None])
        scores = (row @ model.W)[0].astype(np.float64)
        order = np.argsort(-scores, kind="stable")[:top]
        results.append(
            Prediction(
                str(path),
                label=model.class_names[order[0]],
                top=[(model.class_names[i], float(scores[i])) for i in order],
            )
        )
    return results
