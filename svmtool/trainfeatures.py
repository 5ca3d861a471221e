"""Features for training and scoring: the memory check, the feature cache, and
building (learn + extract) or reading a feature set's raw rows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool.core.features import Features
from svmtool.errors import BadValue, SvmtoolError
from svmtool.io.data import (
    Dataset,
    Split,
)
from svmtool.trainplan import DTYPES, ProgressFn, TrainRequest, data_source_name

# --- memory -------------------------------------------------------------------------------


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB"


def check_memory(
    request: TrainRequest, image_shape: tuple[int, ...], parts: Split, num_classes: int
) -> None:
    """Refuse, before anything is allocated, sizes that cannot fit in the memory this
    process may use, naming the options that ask for it (estimates of the big
    arrays; small ones and Python's own are left out)."""
    from svmtool.core import features as F
    from svmtool.core import kmeans as K
    from svmtool.io.npzfile import usable_memory

    limit = usable_memory()
    if limit is None:
        return
    itemsize = np.dtype(DTYPES[request.dtype]).itemsize
    n_train, n = int(parts.train.size), int(parts.train.size + parts.val.size)

    def refuse(what: str, parts_: list[tuple[str, int]], advice: str) -> None:
        total = sum(b for _, b in parts_)
        if total <= limit:
            return
        big = [(label, b) for label, b in sorted(parts_, key=lambda p: -p[1]) if b >= total / 100]
        shown = ", ".join(f"{label}: {_gb(b)}" for label, b in big)
        raise SvmtoolError(
            f"{what} needs about {_gb(total)} of memory ({shown}), more than the"
            f" {_gb(limit)} this process may use; {advice}"
        )

    if request.features == "kmeans":
        fit = K.fit_bytes(request.centroids, request.patches, image_shape[2])
        refuse(
            f"k-means with --centroids {request.centroids} and --patches {request.patches}",
            [(f"{request.patches} patches", fit["patches"]),
             (f"{request.centroids} centroids", fit["centroids"])],
            "use a smaller --centroids or --patches",
        )  # fmt: skip
        width = 4 * request.centroids
    elif request.features == "hog":
        width = F.hog_dim(image_shape)
    else:
        width = int(np.prod(image_shape))
    if request.features != "pixels":
        extraction = n * width * 4
        if request.features == "kmeans":
            extraction += K.extract_bytes(request.centroids, image_shape)
        option = f"--centroids {request.centroids}" if request.features == "kmeans" else "hog"
        refuse(
            f"{width} features per image ({option}) for {n} images",
            [("the raw features", extraction),
             ("their standardized rows", n * (width + 1) * itemsize)],
            "use a smaller --centroids or --num-train" if request.features == "kmeans"
            else "use a smaller --num-train",
        )  # fmt: skip
    configs = len(request.lrs) * len(request.regs)
    d = width + 1
    grid = f"{configs} configurations of --lr x --reg" if configs > 1 else "the model"
    refuse(
        f"training {grid} for --iters {request.iters}",
        [
            (f"the rows ({n} images x {d} values, --num-train)", n * d * itemsize),
            (f"a loss per step and configuration (--iters {request.iters})",
             request.iters * configs * 8),
            (f"W for {grid}", 3 * configs * d * num_classes * itemsize),
            ("the batch scores (--batch-size)",
             3 * min(request.batch_size, n_train) * configs * num_classes * itemsize),
        ],
        "use a smaller --iters, fewer --lr/--reg values or a smaller --num-train",
    )  # fmt: skip


# --- features -----------------------------------------------------------------------------


def feature_cache(cache_dir: Path | None = None):
    """The feature cache: ``cache_dir`` (--cache-dir), else $SVMTOOL_CACHE_DIR, else the
    user's cache folder. Never the data folder: a dataset inside a student's
    assignment tree must not gain gigabytes beside it."""
    from svmtool.io.featurecache import FeatureCache, default_cache_dir

    return FeatureCache(cache_dir if cache_dir is not None else default_cache_dir())


def feature_params(request: TrainRequest, image_shape: tuple[int, ...] = (32, 32, 3)) -> dict:
    """The settings that define a feature pipeline (and key its cache entries)."""
    from svmtool.core import features as F
    from svmtool.core import kmeans as K

    if request.features == "hog":
        return {
            "orientations": F.ORIENTATIONS,
            "cell": F.hog_cell_size(image_shape[:2]),
            "power": F.HOG_POWER,
            "colour": True,
            "hue_bins": F.HUE_BINS,
            "unsigned": True,
            "std_eps": F.HOG_STD_EPS,
        }
    return {
        "centroids": request.centroids,
        "patches": request.patches,
        "kmeans_iters": request.kmeans_iters,
        "seed": request.seed,
        "patch": K.PATCH,
        "norm_eps": K.NORM_EPS,
        "whiten_eps": K.WHITEN_EPS,
        "std_eps": 0.01,
        # Absent (models and cache entries from before the early stop): 0, every iteration.
        **({"kmeans_tol": request.kmeans_tol} if request.kmeans_tol > 0 else {}),
    }


@dataclass
class BuiltFeatures:
    X_train: np.ndarray  # (num_train, F+1), standardized, bias last, parts.train order
    X_val: np.ndarray  # (num_val, F+1)
    features: Features
    notes: list[str]
    timings: dict = field(default_factory=dict)


def check_feature_options(request: TrainRequest) -> None:
    """The k-means options, before any data is loaded."""
    if request.features == "kmeans":
        if request.centroids < 1:
            raise BadValue("--centroids", f"must be >= 1, got {request.centroids}")
        if request.patches is not None and request.patches < request.centroids:
            raise BadValue(
                "--patches", f"must be >= --centroids ({request.centroids}), got {request.patches}"
            )
        if request.kmeans_iters < 1:
            raise BadValue("--kmeans-iters", f"must be >= 1, got {request.kmeans_iters}")


def check_feature_request(request: TrainRequest, image_shape: tuple[int, ...]) -> None:
    from svmtool.core.kmeans import PATCH

    check_feature_options(request)
    if request.features == "kmeans" and min(image_shape[:2]) < PATCH:
        raise SvmtoolError(
            f"k-means features need images of at least {PATCH} x {PATCH}, got"
            f" {image_shape[0]} x {image_shape[1]}"
        )


def build_features(
    dataset: Dataset,
    parts: Split,
    request: TrainRequest,
    dtype: type,
    progress: ProgressFn | None = None,
) -> BuiltFeatures:
    """Fit the feature pipeline on the training split and turn train and val into rows.

    The fitted pipeline (k-means) and the raw features of the train + val
    images are read from the feature cache when an entry with the same data
    fingerprint and settings exists, and stored there otherwise.
    """
    from svmtool.core import features as F
    from svmtool.io.featurecache import fingerprint

    check_feature_request(request, dataset.image_shape)
    params = feature_params(request, dataset.image_shape)
    cache = feature_cache(request.cache_dir) if request.use_cache else None
    source = data_source_name(request.data)
    notes: list[str] = []
    images = dataset.train_images
    train_sorted = np.sort(parts.train)

    arrays: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    if request.features == "kmeans":
        key = {
            "what": "kmeans-fit",
            "data": fingerprint(images, train_sorted),
            "params": params,
        }
        found = cache.load(key, dictionary_layout(request, dataset.image_shape)) if cache else None
        if found is not None and dictionary_problem(found) is not None:
            problem = dictionary_problem(found)
            notes.append(
                f"the feature cache entry {cache.path(key)} is damaged (whiten {problem});"
                " learning the dictionary again"
            )
            found = None
        elif found is None and cache is not None and cache.damage:
            notes.append(f"{cache.damage}; learning the dictionary again")
        if found is not None:
            arrays = {k: np.array(v) for k, v in found.items()}
            notes.append(f"k-means dictionary read from the feature cache ({cache.path(key)})")
        else:
            from svmtool.core import kmeans as K

            ran = [0]

            def on_iteration(done: int, total: int) -> None:
                ran[0] = done
                if progress:
                    progress("k-means", done, total)

            arrays = K.fit(
                images[train_sorted],
                request.centroids,
                request.patches,
                request.kmeans_iters,
                np.random.default_rng(request.seed),
                on_iteration,
                tol=request.kmeans_tol,
            )
            if ran[0] < request.kmeans_iters:
                notes.append(
                    f"k-means converged after {ran[0]} of {request.kmeans_iters} iterations"
                    f" ({request.patches} patches)"
                )
            if cache:
                about = (
                    f"k-means dictionary (K = {request.centroids}) of {train_sorted.size}"
                    f" training images of {source}"
                )
                where = store_in_cache(cache, key, arrays, notes, about)
                if where is not None:
                    notes.append(f"k-means dictionary stored in the feature cache ({where})")

    features = Features(request.features, params, arrays)
    rows = np.sort(np.concatenate([parts.train, parts.val]))
    t1 = time.perf_counter()
    raw = cached_raw_features(features, images, rows, cache, notes, progress, source)
    t2 = time.perf_counter()
    pos_train = np.searchsorted(rows, parts.train)
    pos_val = np.searchsorted(rows, parts.val)
    mean, scale = F.standardization(raw, eps=params["std_eps"], rows=pos_train)
    features.arrays = {**arrays, "mean": mean, "scale": scale}
    return BuiltFeatures(
        X_train=F.standardized_rows(raw, mean, scale, pos_train, dtype),
        X_val=F.standardized_rows(raw, mean, scale, pos_val, dtype),
        features=features,
        notes=notes,
        timings={
            "dictionary_seconds": t1 - t0,
            "extraction_seconds": t2 - t1,
            "standardization_seconds": time.perf_counter() - t2,
        },
    )


def cached_raw_features(
    features: Features,
    images: np.ndarray,
    rows: np.ndarray,
    cache,
    notes: list[str],
    progress: ProgressFn | None = None,
    source: str = "",
) -> np.ndarray:
    """Raw features (len(rows), F) of images[rows], from the cache when it has them;
    ``source`` names the data in the entry's description."""
    from svmtool.core import features as F
    from svmtool.io.featurecache import array_digest, fingerprint

    fitted = {k: v for k, v in features.arrays.items() if k not in ("mean", "scale")}
    key = {
        "what": "features",
        "kind": features.kind,
        "params": features.params,
        "fit": array_digest(fitted),
        "data": fingerprint(images, rows),
    }
    if cache is not None:
        width = F.feature_dim(features, tuple(images.shape[1:]))
        found = cache.load(key, {"raw": ((int(rows.size), width), np.float32)})
        if found is None and cache.damage:
            notes.append(f"{cache.damage}; computing the features again")
        if found is not None:
            where = cache.path(key)
            notes.append(f"features of {rows.size} images read from the feature cache ({where})")
            return found["raw"]

    def on_images(done: int, total: int) -> None:
        if progress:
            progress("features", done, total)

    raw = F.raw_features(Features(features.kind, features.params, fitted), images[rows], on_images)
    if cache is not None:
        about = f"{features.kind} features of {rows.size} images" + (
            f" of {source}" if source else ""
        )
        where = store_in_cache(cache, key, {"raw": raw}, notes, about)
        if where is not None:
            notes.append(f"features of {rows.size} images stored in the feature cache ({where})")
    return raw


def store_in_cache(
    cache, key: dict, arrays: dict[str, np.ndarray], notes: list[str], about: str = ""
):
    """``cache.store``; a cache that cannot be written is said once in ``notes``
    and the run goes on without it (None). ``about``: what the entry is."""
    from svmtool.io.featurecache import CacheNotWritten

    try:
        return cache.store(key, arrays, about)
    except CacheNotWritten as exc:
        message = f"Warning: {exc}"
        if message not in notes:
            notes.append(message)
        return None


def dictionary_layout(request: TrainRequest, image_shape: tuple[int, ...]) -> dict:
    """What a cached k-means dictionary must hold for this request: name -> (shape, dtype)."""
    from svmtool.core.kmeans import patch_dim

    p = patch_dim(image_shape[2])
    return {
        "centroids": ((request.centroids, p), np.float32),
        "whiten_mean": ((p,), np.float64),
        "whiten": ((p, p), np.float64),
    }


def dictionary_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """Why a k-means dictionary cannot be used (its values' own rules), or None."""
    from svmtool.core.kmeans import whitening_problem

    return whitening_problem(np.asarray(arrays["whiten"]))
