"""The model file: a plain .npz that loads with allow_pickle=False."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool import __version__
from svmtool.core.features import Features, feature_dim
from svmtool.errors import SvmtoolError
from svmtool.io.dataset import class_names_problem
from svmtool.io.files import PendingFile, write_atomic
from svmtool.io.npzfile import read_npz

# 2: the feature pipeline (``features`` JSON and ``feature_*`` arrays). Format 1
# files have neither and load as pixel models.
# 3: standardized pixels (``feature_mean`` and ``feature_scale`` beside a pixels
# pipeline); only such models are written as 3, so an svmtool that would ignore
# the scale refuses them instead of predicting wrong classes.
FORMAT_VERSION = 2
STANDARDIZED_PIXELS_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
FEATURE_PREFIX = "feature_"
DEFAULT_MODEL = Path("svm_model.npz")
KEEP_PIXELS = ("mean", "scale")
KEEP_HOG = ("mean", "scale")
KEEP_KMEANS = ("centroids", "whiten_mean", "whiten", "mean", "scale")


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

    @property
    def loss(self) -> str:
        """The loss W was trained on; files from before the option are hinge models."""
        return self.settings.get("loss", "hinge")


def reserve(path: Path) -> PendingFile:
    """A temporary file beside ``path``, created now: a folder that cannot take
    the model fails before training, not after. ``save(model, pending)`` writes
    it; ``pending.commit()`` moves it into place."""
    return PendingFile(Path(path))


def _arrays(model: Model) -> dict[str, np.ndarray]:
    arrays = {
        "format_version": np.array(
            STANDARDIZED_PIXELS_VERSION
            if model.features.kind == "pixels" and model.features.arrays
            else FORMAT_VERSION
        ),
        "svmtool_version": np.array(model.svmtool_version),
        "W": model.W,
        "mean_image": model.mean_image,
        "image_shape": np.array(model.image_shape, dtype=np.int64),
        "class_names": np.array(model.class_names, dtype=str),
        "settings": np.array(_strict_json(model.settings)),
        "metrics": np.array(_strict_json(model.metrics)),
        "loss_history": np.asarray(model.loss_history, dtype=np.float64),
        "grid": np.array(_strict_json(model.grid)),
        "features": np.array(
            json.dumps({"kind": model.features.kind, "params": model.features.params})
        ),
    }
    for name, array in model.features.arrays.items():
        arrays[FEATURE_PREFIX + name] = np.asarray(array)
    return arrays


def _finite_or_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value


def _strict_json(value) -> str:
    """JSON text with NaN and infinities as null: an undefined metric (no validation
    split) is null in the file, as in --json, never the non-standard NaN."""
    return json.dumps(_finite_or_null(value), allow_nan=False)


def save(model: Model, path: Path | PendingFile) -> Path:
    """Write the model to ``path`` atomically; given a ``PendingFile``, write it
    there and leave the move into place to the caller.

    The arrays to be written are first checked by the rules ``load`` applies, so
    a model that is written is a model that loads; anything else is refused and
    nothing is written.
    """
    arrays = _arrays(model)
    target = path.path if isinstance(path, PendingFile) else Path(path)
    try:
        loaded = _from_arrays(arrays, target, _damaged(target))
        if loaded.class_names != list(model.class_names):
            raise SvmtoolError("a class name does not survive the file unchanged")
    except SvmtoolError as exc:
        raise SvmtoolError(
            f"refusing to write {target}: the model would not load ({exc})"
        ) from None
    if isinstance(path, PendingFile):
        path.write(lambda f: np.savez(f, **arrays))
        return path.path
    if Path(path).is_dir():
        raise SvmtoolError(f"cannot write the model to {path}: it is a folder")
    return write_atomic(Path(path), lambda f: np.savez(f, **arrays))


REQUIRED = (
    "format_version", "svmtool_version", "W", "mean_image", "image_shape",
    "class_names", "settings", "metrics", "loss_history", "grid",
)  # fmt: skip


MAX_JSON_DEPTH = 16
_NUMBER = (int, float)
# The settings that svmtool reads back, and the JSON types each may have.
SETTING_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,),
    "data_dir": (str, type(None)),
    "dtype": (str,),
    "sampling": (str,),
    "seed": (int,),
    "iters": (int,),
    "batch_size": (int,),
    "num_train": (int, type(None)),
    "num_val": (int, type(None)),
    "num_test": (int, type(None)),
    "lr": _NUMBER,
    "reg": _NUMBER,
    "delta": _NUMBER,
    "init_scale": _NUMBER,
    "loss": (str,),
    "solver": (str,),
}


def _depth(value) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(item, dict):
            item = list(item.values())
        children = item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _json(raw: dict, key: str, expected: type, damaged, label: str | None = None):
    label = label or f"metadata in {key}"
    value = raw[key]
    if value.shape != () or value.dtype.kind != "U":
        raise damaged(f"{key} is {value.dtype} {value.shape}, not a JSON text")
    try:
        parsed = json.loads(str(value))
    except RecursionError:
        raise damaged(f"{key} is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, and numbers too long to convert
        raise damaged(f"damaged {label}: {exc}") from None
    if not isinstance(parsed, expected):
        kind = "object" if expected is dict else "list"
        raise damaged(f"{key} must be a JSON {kind}, got {type(parsed).__name__}")
    if _depth(parsed) > MAX_JSON_DEPTH:
        raise damaged(f"{key} is nested more than {MAX_JSON_DEPTH} levels deep")
    return parsed


def _finite_number(value) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool) and math.isfinite(value)


def _check_settings(settings: dict, damaged) -> None:
    for key, types in SETTING_TYPES.items():
        if key not in settings:
            continue
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, types):
            kind = {str: "a string", int: "an integer"}.get(types[0], "a number")
            raise damaged(f"setting {key} is {value!r:.40}, not {kind}")
        if isinstance(value, float) and not math.isfinite(value):
            raise damaged(f"setting {key} is {value!r}, not a finite number")
        if isinstance(value, int) and key not in ("lr", "reg", "delta") and value < 0:
            raise damaged(f"setting {key} is {value}, which is negative")
    from svmtool.core.loss import LOSSES

    if settings.get("loss", "hinge") not in LOSSES:
        raise damaged(f"setting loss is {settings['loss']!r:.40}, not {' or '.join(LOSSES)}")


def _check_grid(grid: list, damaged, full_batch: bool = False) -> None:
    for i, entry in enumerate(grid):
        if not isinstance(entry, dict):
            raise damaged(f"grid entry {i} is not an object")
        # lr is null for the full-batch solver (lbfgs), which has none.
        lr = entry.get("lr")
        lr_ok = lr is None if full_batch else _finite_number(lr)
        if not (lr_ok and _finite_number(entry.get("reg"))):
            raise damaged(f"grid entry {i} lacks a finite lr and reg")
        accuracy = entry.get("val_accuracy")
        if accuracy is not None and not _finite_number(accuracy):
            raise damaged(f"grid entry {i} has val_accuracy {accuracy!r}")


def load(path: Path) -> Model:
    """Read and check a model file; every problem is one ``SvmtoolError`` line.

    Every field is checked: a model that loads can be used by every command.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise SvmtoolError(f"model file not found: {path} (train one with: svmtool train)")
    return _from_arrays(read_npz(path, "model"), path, _damaged(path))


def _damaged(path: Path):
    def damaged(problem: str) -> SvmtoolError:
        return SvmtoolError(f"{path} is not a usable svmtool model: {problem}")

    return damaged


def _from_arrays(raw: dict[str, np.ndarray], path: Path, damaged) -> Model:
    """The model the arrays of a model file describe, every field checked (the rules
    of ``load``, which ``save`` applies too)."""
    if "format_version" in raw:
        version = raw["format_version"]
        if version.shape != () or version.dtype.kind not in "iu":
            raise damaged(f"format_version is {version.dtype} {version.shape}, not an integer")
        if version.item() not in READABLE_VERSIONS:
            raise SvmtoolError(
                f"{path} has model format {version.item()}; this svmtool reads formats"
                f" {', '.join(map(str, READABLE_VERSIONS))}"
            )
    missing = [k for k in REQUIRED if k not in raw]
    if missing:
        raise SvmtoolError(f"{path} is not an svmtool model: it lacks {', '.join(missing)}")

    W, mean_image, shape = raw["W"], raw["mean_image"], raw["image_shape"]
    names, history, version = raw["class_names"], raw["loss_history"], raw["svmtool_version"]
    if version.shape != () or version.dtype.kind != "U":
        raise damaged(f"svmtool_version is {version.dtype} {version.shape}, not a string")
    if W.ndim != 2 or W.dtype not in (np.float32, np.float64):
        raise damaged(f"W is {W.dtype} {W.shape}, not a float32 or float64 matrix")
    if mean_image.dtype.kind != "f":
        raise damaged(f"mean_image is {mean_image.dtype}, not floating point")
    if shape.ndim != 1 or shape.size != 3 or shape.dtype.kind not in "iu" or (shape < 1).any():
        raise damaged(f"image_shape is {shape.tolist()!r}, not three positive integers")
    if names.ndim != 1 or names.dtype.kind != "U":
        raise damaged(f"class_names is {names.dtype} {names.shape}, not a list of strings")
    if history.ndim != 1 or history.dtype.kind not in "fiu":
        raise damaged(f"loss_history is {history.dtype} {history.shape}, not a list of numbers")
    image_shape = tuple(int(v) for v in shape)
    class_names = [str(n) for n in names]
    problem = class_names_problem(class_names)
    if problem:
        raise damaged(f"class_names {problem}")
    features = _load_features(path, raw, image_shape, damaged)
    if (
        mean_image.shape != image_shape
        or W.shape[0] != feature_dim(features, image_shape) + 1
        or W.shape[1] != len(class_names)
        or len(class_names) < 2
    ):
        raise SvmtoolError(
            f"{path} is inconsistent: W {W.shape}, image shape {image_shape},"
            f" mean image {mean_image.shape}, {len(class_names)} class names"
        )
    if not np.isfinite(W).all():
        raise damaged("W holds NaN or infinite values")
    if not np.isfinite(mean_image).all():
        raise damaged("mean_image holds NaN or infinite values")
    settings = _json(raw, "settings", dict, damaged)
    metrics = _json(raw, "metrics", dict, damaged)
    grid = _json(raw, "grid", list, damaged)
    _check_settings(settings, damaged)
    _check_grid(grid, damaged, full_batch=settings.get("solver") == "lbfgs")
    return Model(
        W=W,
        mean_image=mean_image,
        class_names=class_names,
        settings=settings,
        metrics=metrics,
        loss_history=history.astype(np.float64, copy=False),
        grid=grid,
        svmtool_version=str(version),
        features=features,
    )


def _load_features(path: Path, raw: dict[str, np.ndarray], image_shape: tuple, damaged) -> Features:
    """The model's feature pipeline, checked; a file without one is a pixel model."""
    from svmtool.core.features import FeatureProblem, check

    arrays = {k[len(FEATURE_PREFIX) :]: v for k, v in raw.items() if k.startswith(FEATURE_PREFIX)}
    if "features" not in raw:
        spec = {"kind": "pixels", "params": {}}
    else:
        spec = _json(raw, "features", dict, damaged, "feature description")
    if not isinstance(spec, dict) or not isinstance(spec.get("params", {}), dict):
        raise damaged("damaged feature description: features must hold a params object")
    kind = spec.get("kind")
    # Only the arrays the pipeline uses are kept (each is checked by ``check``).
    used = {"pixels": KEEP_PIXELS, "hog": KEEP_HOG, "kmeans": KEEP_KMEANS}.get(
        kind if isinstance(kind, str) else "", ()
    )
    features = Features(
        kind, dict(spec.get("params", {})), {k: arrays[k] for k in used if k in arrays}
    )
    try:
        check(features, image_shape)
    except FeatureProblem as exc:
        where = f"{FEATURE_PREFIX}{exc.field}" if exc.field else "features:"
        raise damaged(f"{where} {exc.problem}") from None
    return features
