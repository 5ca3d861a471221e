"""The model file: a plain .npz that loads with allow_pickle=False."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool import __version__
from svmtool.errors import SvmtoolError
from svmtool.features import Features, feature_dim
from svmtool.npzfile import read_npz

# 2: the feature pipeline (``features`` JSON and ``feature_*`` arrays). Format 1
# files have neither and load as pixel models.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
FEATURE_PREFIX = "feature_"
DEFAULT_MODEL = Path("svm_model.npz")


@dataclass
class Model:
    """A trained linear SVM.

    W: (F+1, C), bias row last; F = prod(image_shape) for pixels, else the
    feature length. mean_image: image_shape (the training mean; what pixel
    models subtract). features: the pipeline that turns images into rows.
    settings/metrics/grid: JSON-able; loss_history: (iters,).
    """

    W: np.ndarray
    mean_image: np.ndarray
    class_names: list[str]
    settings: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    loss_history: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid: list[dict] = field(default_factory=list)
    svmtool_version: str = __version__
    features: Features = field(default_factory=Features)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.mean_image.shape)

    @property
    def num_classes(self) -> int:
        return self.W.shape[1]


def write_atomic(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then
    rename it into place: a crash never leaves a half-written ``path``."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise SvmtoolError(f"cannot write {path}: folder {directory} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(model: Model, path: Path) -> Path:
    """Write the model to ``path`` atomically."""
    if Path(path).is_dir():
        raise SvmtoolError(f"cannot write the model to {path}: it is a folder")
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "svmtool_version": np.array(model.svmtool_version),
        "W": model.W,
        "mean_image": model.mean_image,
        "image_shape": np.array(model.image_shape, dtype=np.int64),
        "class_names": np.array(model.class_names, dtype=str),
        "settings": np.array(json.dumps(model.settings)),
        "metrics": np.array(json.dumps(model.metrics)),
        "loss_history": np.asarray(model.loss_history, dtype=np.float64),
        "grid": np.array(json.dumps(model.grid)),
        "features": np.array(
            json.dumps({"kind": model.features.kind, "params": model.features.params})
        ),
    }
    for name, array in model.features.arrays.items():
        arrays[FEATURE_PREFIX + name] = np.asarray(array)
    write_atomic(Path(path), lambda f: np.savez(f, **arrays))
    return Path(path)


REQUIRED = (
    "format_version", "svmtool_version", "W", "mean_image", "image_shape",
    "class_names", "settings", "metrics", "loss_history", "grid",
)  # fmt: skip


def load(path: Path) -> Model:
    """Read and check a model file; every problem is one ``SvmtoolError`` line."""
    path = Path(path)
    if not path.exists():
        raise SvmtoolError(f"model file not found: {path} (train one with: svmtool train)")
    raw = read_npz(path, "model")
    if "format_version" in raw and raw["format_version"].shape == ():
        found = raw["format_version"].item()
        if found not in READABLE_VERSIONS:
            raise SvmtoolError(
                f"{path} has model format {found}; this svmtool reads formats"
                f" {', '.join(map(str, READABLE_VERSIONS))}"
            )
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise SvmtoolError(f"{path} is not an svmtool model: it lacks {', '.join(missing)}")

    W, mean_image = raw["W"], raw["mean_image"]
    image_shape = tuple(int(v) for v in raw["image_shape"])
    class_names = [str(n) for n in raw["class_names"]]
    features = _load_features(path, raw, image_shape)
    if (
        W.ndim != 2
        or not np.issubdtype(W.dtype, np.floating)
        or mean_image.shape != image_shape
        or W.shape[0] != feature_dim(features, image_shape) + 1
        or W.shape[1] != len(class_names)
        or len(class_names) < 2
    ):
        raise SvmtoolError(
            f"{path} is inconsistent: W {W.shape}, image shape {image_shape},"
            f" mean image {mean_image.shape}, {len(class_names)} class names"
        )
    try:
        settings = json.loads(str(raw["settings"]))
        metrics = json.loads(str(raw["metrics"]))
        grid = json.loads(str(raw["grid"]))
    except json.JSONDecodeError as exc:
        raise SvmtoolError(f"{path} has damaged metadata: {exc}") from None
    return Model(
        W=W,
        mean_image=mean_image,
        class_names=class_names,
        settings=settings,
        metrics=metrics,
        loss_history=raw["loss_history"],
        grid=grid,
        svmtool_version=str(raw["svmtool_version"]),
        features=features,
    )


def _load_features(path: Path, raw: dict[str, np.ndarray], image_shape: tuple) -> Features:
    """The model's feature pipeline, checked; a file without one is a pixel model."""
    from svmtool.features import check

    arrays = {k[len(FEATURE_PREFIX) :]: v for k, v in raw.items() if k.startswith(FEATURE_PREFIX)}
    if "features" not in raw:
        spec = {"kind": "pixels", "params": {}}
    else:
        try:
            spec = json.loads(str(raw["features"]))
        except json.JSONDecodeError as exc:
            raise SvmtoolError(f"{path} has a damaged feature description: {exc}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("params", {}), dict):
        raise SvmtoolError(f"{path} has a damaged feature description")
    features = Features(str(spec.get("kind")), dict(spec.get("params", {})), arrays)
    try:
        check(features, image_shape)
    except ValueError as exc:
        raise SvmtoolError(f"{path}: {exc}") from None
    return features
