"""The batch a gradient check runs on (svmtool gradcheck, with or without --loss):
the dev sample of the chosen data, or of a model's data, in float64, and the point W."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool.errors import DataNotFound
from svmtool.evaluation import check_classes, load_model_data, model_data, model_rows
from svmtool.io.data import CIFAR10, default_data_dir, load_dataset, mean_image, preprocess, split
from svmtool.io.model import Model
from svmtool.trainplan import ProgressFn, check_seed


@dataclass
class GradcheckBatch:
    """The point and batch a gradient check runs on (float64)."""

    W: np.ndarray  # (D+1, C)
    X: np.ndarray  # (N, D+1)
    y: np.ndarray  # (N,)
    source: str
    notice: str | None = None
    notes: list[str] = field(default_factory=list)  # what loading the data found


def gradcheck_batch(
    data: str | None,
    data_dir: Path | None,
    model: Model | None,
    seed: int,
    progress: ProgressFn | None = None,
) -> GradcheckBatch:
    """The dev sample (500 images) of the chosen data, preprocessed in float64.

    ``data``/``data_dir`` are what the user typed (None when absent). With a
    model: the model's own data and folder unless told otherwise. With neither
    model nor data option: CIFAR-10 from the default folder ($SVMTOOL_DATA_DIR,
    else the user cache) when it is there, else synthetic data with a notice.
    Any data the user named must be there: no silent fallback.
    """
    from svmtool.io import cifar
    from svmtool.io.data import SYNTHETIC

    check_seed(seed)
    notice = None
    dataset = None
    if model is not None:
        source, _ = model_data(model, data, data_dir)
        dataset = load_model_data(model, data, data_dir, progress)
    elif data is not None:
        source = data
    elif data_dir is not None:
        source = CIFAR10  # an explicit folder: it must hold CIFAR-10
    else:
        where = default_data_dir()
        try:
            dataset = cifar.load(where)  # kept: an extracted folder is not parsed twice
            source = CIFAR10
        except DataNotFound:
            source = SYNTHETIC
            notice = (
                f"CIFAR-10 is not downloaded in {where}; checking on a synthetic"
                " CIFAR-shaped batch (svmtool download fetches the real one)"
            )
    if dataset is None:
        dataset = load_dataset(source, data_dir, progress=progress)
    parts = split(dataset, seed=seed)
    if model is not None:
        check_classes(dataset, model, ignore_names=True)  # names do not enter the loss
        if model.features.kind == "pixels":
            X = model_rows(model, dataset.train_images, parts.dev, dtype=np.float64)
        else:
            # A feature model is checked on the rows it scores: the dev images' features.
            X = model_rows(model, dataset.train_images, parts.dev).astype(np.float64)
        W = model.W.astype(np.float64)
    else:
        mean = mean_image(dataset.train_images, parts.train)
        X = preprocess(dataset.train_images, mean, parts.dev, np.float64)
        from svmtool.core.gradcheck import check_point

        W = check_point((X.shape[1], len(dataset.class_names)), np.random.default_rng(seed))
    y = np.asarray(dataset.train_labels)[parts.dev]
    return GradcheckBatch(W, X, y, source, notice, list(dataset.notes))
