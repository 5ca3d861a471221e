"""Image features for the linear SVM: pixels, HOG + hue histogram, k-means (pure numpy).

A feature pipeline turns uint8 images (N, H, W, C) into rows (N, F+1) that W
scores: raw features, standardized with the training split's statistics, and a
bias column of ones last. Everything a pipeline needs is a ``Features`` value:
its kind, JSON-able parameters, and named arrays (the model file stores both).
The k-means pipeline's own math lives in ``svmtool.core.kmeans``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

KINDS = ("pixels", "hog", "kmeans")
ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)`` while images are turned into features."""

# CS231n's rgb2gray weights, the blue one (0.144) included as it is in their code.
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.144], dtype=np.float32)
ORIENTATIONS = 9
CELL = 8
HUE_BINS = 10
HOG_STD_EPS = 0.0  # CS231n divides by the plain standard deviation
# Standardized pixels (the full-batch solver's rows for pixels): each pixel's
# scale is sqrt(var + PIXEL_STD_EPS_SHARE * mean var). The floor keeps a pixel
# that is almost always 0 (Fashion-MNIST's corners) from being magnified into a
# few images' noise, and bounds the templates visualize folds the scale into.
PIXEL_STD_EPS_SHARE = 0.1
HOG_POWER = 0.5  # train's hog takes square roots (pipelines saved without "power": 1)
BLOCK_IMAGES = 1024  # HOG works on this many images at a time (bounded memory)


@dataclass
class Features:
    """A fitted feature pipeline.

    kind: 'pixels' | 'hog' | 'kmeans'; params: JSON-able settings; arrays: named
    arrays (for hog and kmeans ``mean`` and ``scale`` (F,), the standardization;
    for kmeans also ``centroids`` (K, P), ``whiten_mean`` (P,), ``whiten`` (P, P)).
    Pixels have no arrays (rows are the pixels minus the model's mean image), or,
    with ``params["standardized"]``, ``mean`` and ``scale`` (H*W*C,) as hog's.
    """

    kind: str = "pixels"
    params: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


# --- HOG and the hue histogram (CS231n's image features) -----------------------------


def grayscale(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, H, W) float32: CS231n's weights for RGB, the channel
    itself for grayscale, the channel mean for any other count."""
    images = np.asarray(images)
    if images.shape[-1] == 3:
        return images.astype(np.float32) @ GRAY_WEIGHTS
    if images.shape[-1] == 1:
        return images[..., 0].astype(np.float32)
    return images.mean(axis=-1, dtype=np.float32)


CELL_CHOICES = (8, 7, 6)  # CS231n's 8 first: it wins ties


def hog_cell_size(image_hw: tuple[int, int]) -> int:
    """The square cell size for H x W images: among 8, 7 and 6 pixels, the one
    that leaves the fewest pixels outside whole cells (8 on a tie, as CS231n).

    32 x 32 gets 8 (4 x 4 cells, as CS231n); 28 x 28 gets 7 (4 x 4 cells, where
    8 would leave 4 pixels per side unused).
    """
    h, w = image_hw

    def unused(cell: int) -> int:
        ch, cw = min(cell, h), min(cell, w)
        return h * w - (h // ch * ch) * (w // cw * cw)

    return min(CELL_CHOICES, key=unused)


def hog_cells(image_hw: tuple[int, int], cell: int = CELL) -> tuple[int, int, int, int]:
    """(cell rows, cell columns, cell height, cell width) for an H x W image.

    ``cell`` x ``cell`` cells (CS231n: 8; train chooses with ``hog_cell_size``);
    a side shorter than a cell gets one cell spanning it (CS231n's code has no
    cell there at all). Pixels past the last whole cell are not used, as in CS231n.
    """
    h, w = image_hw
    ch, cw = min(cell, h), min(cell, w)
    return h // ch, w // cw, ch, cw


def hog(images: np.ndarray, cell: int = CELL) -> np.ndarray:
    """Histograms of oriented gradients: (N, H, W, C) uint8 -> (N, rows, cols, 9) float32.

    CS231n's hog_feature, vectorized over images: forward differences on the
    grayscale image (the last column's x-gradient and the last row's
    y-gradient are 0), magnitude sqrt(gx^2 + gy^2), orientation
    atan2(gy, gx + 1e-15) in degrees + 90, 9 bins of 20 degrees, and each cell
    the average magnitude per bin over its pixels; no block normalization.

    Departure: the orientation is folded into [0, 180) so the bins are truly
    unsigned (a dark-to-bright and a bright-to-dark edge count alike). CS231n's
    code keeps only orientations already in (0, 180), which drops every
    gradient pointing left (gx < 0).
    """
    images = np.asarray(images)
    n = images.shape[0]
    rows, cols, ch, cw = hog_cells(images.shape[1:3], cell)
    out = np.empty((n, rows, cols, ORIENTATIONS), dtype=np.float32)
    for start in range(0, n, BLOCK_IMAGES):
        gray = grayscale(images[start : start + BLOCK_IMAGES])
        gx = np.zeros_like(gray)
        gy = np.zeros_like(gray)
        gx[:, :, :-1] = np.diff(gray, axis=2)
        gy[:, :-1, :] = np.diff(gray, axis=1)
        magnitude = np.hypot(gx, gy)
        # Angles in float64: float32 rounding would move gradients across bin edges.
        angle = np.degrees(np.arctan2(gy.astype(np.float64), gx + 1e-15)) + 90.0
        angle %= 180.0
        bins = np.minimum((angle // (180.0 / ORIENTATIONS)).astype(np.int64), ORIENTATIONS - 1)
        # Keep the whole cells; number every (image, cell, bin) and sum magnitudes into it.
        m = magnitude[:, : rows * ch, : cols * cw]
        b = bins[:, : rows * ch, : cols * cw]
        count = m.shape[0]
        cell_r = np.arange(rows * ch) // ch
        cell_c = np.arange(cols * cw) // cw
        cell = (cell_r[:, None] * cols + cell_c[None, :])[None]  # (1, rows*ch, cols*cw)
        image = np.arange(count)[:, None, None] * (rows * cols)
        index = ((image + cell) * ORIENTATIONS + b).ravel()
        sums = np.bincount(index, weights=m.ravel(), minlength=count * rows * cols * ORIENTATIONS)
        out[start : start + count] = (sums / (ch * cw)).reshape(count, rows, cols, ORIENTATIONS)
    return out


def hue(images: np.ndarray) -> np.ndarray:
    """Hue in [0, 1) of RGB uint8 images (N, H, W, 3), as matplotlib's rgb_to_hsv
    computes it (grey pixels have hue 0; where channels tie for the maximum,
    blue wins over green over red)."""
    rgb = images.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = rgb.max(axis=-1)
    spread = top - rgb.min(axis=-1)
    positive = spread > 0
    safe = np.where(positive, spread, 1.0)
    h = np.zeros_like(top)
    # The same order of assignment as matplotlib: a later case overrides.
    h = np.where((r == top) & positive, (g - b) / safe, h)
    h = np.where((g == top) & positive, 2.0 + (b - r) / safe, h)
    h = np.where((b == top) & positive, 4.0 + (r - g) / safe, h)
    return (h / 6.0) % 1.0


def hue_histogram(images: np.ndarray, bins: int = HUE_BINS) -> np.ndarray:
    """CS231n's color_histogram_hsv: (N, H, W, 3) uint8 -> (N, bins) float32.

    The hue scaled to 0-255 is binned into ``bins`` equal bins over [0, 255]
    (np.histogram's edges and rules), normalized so each image's bins sum to 1.
    """
    n = images.shape[0]
    edges = np.linspace(0, 255, bins + 1)
    out = np.empty((n, bins), dtype=np.float32)
    for start in range(0, n, BLOCK_IMAGES):
        block = images[start : start + BLOCK_IMAGES]
        values = (hue(block) * 255.0).astype(np.float64).reshape(block.shape[0], -1)
        index = np.searchsorted(edges, values, side="right") - 1
        index = np.clip(index, 0, bins - 1)  # the last edge belongs to the last bin
        offsets = np.arange(block.shape[0])[:, None] * bins
        counts = np.bincount((index + offsets).ravel(), minlength=block.shape[0] * bins)
        out[start : start + block.shape[0]] = counts.reshape(-1, bins) / values.shape[1]
    return out


def hog_dim(image_shape: tuple[int, ...], cell: int = CELL, colour: bool = False) -> int:
    """Length of the raw hog feature vector for images of ``image_shape`` (H, W, C)."""
    rows, cols, _, _ = hog_cells(image_shape[:2], cell)
    extra = rows * cols * image_shape[2] if colour else 0
    return rows * cols * ORIENTATIONS + (HUE_BINS if image_shape[2] == 3 else 0) + extra


def cell_colours(images: np.ndarray, cell: int = CELL) -> np.ndarray:
    """Each hog cell's mean of each channel, / 255: (N, H, W, C) uint8 -> (N, rows*cols*C)
    float32, the image's colour layout at the resolution of the cells."""
    rows, cols, ch, cw = hog_cells(images.shape[1:3], cell)
    n, c = images.shape[0], images.shape[3]
    out = np.empty((n, rows * cols * c), dtype=np.float32)
    for start in range(0, n, BLOCK_IMAGES):
        block = images[start : start + BLOCK_IMAGES, : rows * ch, : cols * cw].astype(np.float32)
        means = block.reshape(-1, rows, ch, cols, cw, c).mean(axis=(2, 4))
        out[start : start + block.shape[0]] = means.reshape(block.shape[0], -1) / 255.0
    return out


def hog_features(
    images: np.ndarray,
    progress: ProgressFn | None = None,
    cell: int = CELL,
    power: float = 1.0,
    colour: bool = False,
) -> np.ndarray:
    """HOG, for colour images the hue histogram, and with ``colour`` each cell's mean
    colour: (N, H, W, C) -> (N, hog_dim) float32.

    Grayscale images get no hue histogram (every pixel's hue would be 0).
    ``power`` < 1 raises the histograms' values to it (0.5: the square root, the
    "power normalization" that makes histograms compare better under a linear
    model: +1.5 to 3 points of validation accuracy on real CIFAR-10 images). The
    cell colours (CIFAR-10: 48 values) measured +2 to 4 points more.
    """
    n = images.shape[0]
    out = np.empty((n, hog_dim(images.shape[1:], cell, colour)), dtype=np.float32)
    step = BLOCK_IMAGES * 4
    for start in range(0, n, step):
        block = images[start : start + step]
        rows = slice(start, start + block.shape[0])
        cells = hog(block, cell).reshape(block.shape[0], -1)
        width = cells.shape[1]
        out[rows, :width] = cells
        if images.shape[-1] == 3:
            out[rows, width : width + HUE_BINS] = hue_histogram(block)
            width += HUE_BINS
        if power != 1.0:
            np.power(out[rows, :width], power, out=out[rows, :width])
        if colour:
            out[rows, width:] = cell_colours(block, cell)
        if progress:
            progress(start + block.shape[0], n)
    return out


# --- standardization and the rows W scores ---------------------------------------------


def standardization(
    raw: np.ndarray, eps: float = 0.0, rows: np.ndarray | None = None, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and scale sqrt(var + eps) of raw[rows] (raw: (M, F); all rows
    if None), in float64 over row blocks; a feature that never varies gets scale 1
    rather than a division by 0."""
    index = np.arange(raw.shape[0]) if rows is None else np.sort(np.asarray(rows))
    n, f = index.size, raw.shape[1]
    total = np.zeros(f)
    for s in range(0, n, chunk):
        total += raw[index[s : s + chunk]].sum(axis=0, dtype=np.float64)
    mean = total / max(n, 1)
    squares = np.zeros(f)
    for s in range(0, n, chunk):
        centred = raw[index[s : s + chunk]].astype(np.float64) - mean
        squares += np.einsum("ij,ij->j", centred, centred)
    scale = np.sqrt(squares / max(n, 1) + eps)
    scale[scale == 0] = 1.0
    return mean, scale


def pixel_standardization(images: np.ndarray, rows: np.ndarray) -> Features:
    """A standardized pixels pipeline fitted on images[rows] (the training split).

    images: (M, H, W, C) uint8; the pipeline's ``mean`` and ``scale`` are
    (H*W*C,) float64. Each pixel's scale is sqrt(var + std_eps), std_eps
    ``PIXEL_STD_EPS_SHARE`` times the pixels' mean variance (see there).
    """
    flat = images.reshape(images.shape[0], -1)
    _, plain = standardization(flat, 0.0, rows)
    eps = PIXEL_STD_EPS_SHARE * float(np.mean(plain * plain))
    mean, scale = standardization(flat, eps, rows)
    return Features(
        "pixels", {"standardized": True, "std_eps": eps}, {"mean": mean, "scale": scale}
    )


def standardized_pixels(
    features: Features,
    images: np.ndarray,
    rows: np.ndarray | None = None,
    dtype: type = np.float32,
) -> np.ndarray:
    """The rows a standardized pixels pipeline gives images[rows]: (len(rows), H*W*C + 1)."""
    a = features.arrays
    flat = images.reshape(images.shape[0], -1)
    return standardized_rows(flat, a["mean"], a["scale"], rows, dtype)


def standardized_rows(
    raw: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    rows: np.ndarray | None = None,
    dtype: type = np.float32,
    chunk: int = 4096,
) -> np.ndarray:
    """(raw[rows] - mean) / scale with a bias column of ones last: (len(rows), F+1).

    raw: (M, F); rows: which rows in which order (all if None).
    """
    index = np.arange(raw.shape[0]) if rows is None else np.asarray(rows)
    f = raw.shape[1]
    out = np.empty((index.size, f + 1), dtype=dtype)
    m = mean.astype(dtype)
    inv = (1.0 / scale).astype(dtype)
    for s in range(0, index.size, chunk):
        block = out[s : s + chunk, :f]
        np.subtract(raw[index[s : s + chunk]], m, out=block, dtype=dtype)
        block *= inv
    out[:, f] = 1
    return out


def raw_features(
    features: Features, images: np.ndarray, progress: ProgressFn | None = None
) -> np.ndarray:
    """Unstandardized features (N, F) float32 of uint8 images (N, H, W, C)."""
    if features.kind == "hog":
        p = features.params
        return hog_features(
            images, progress, hog_cell(features), p.get("power", 1.0), p.get("colour", False)
        )
    if features.kind == "kmeans":
        from svmtool.core import kmeans

        a = features.arrays
        return kmeans.extract(
            images, a["centroids"], a["whiten_mean"], a["whiten"], progress=progress
        )
    raise ValueError(f"features must be one of {', '.join(KINDS[1:])}, got {features.kind!r}")


def hog_cell(features: Features) -> int:
    """A hog pipeline's cell size; pipelines saved before it was chosen used 8."""
    return features.params.get("cell", CELL)


def feature_dim(features: Features, image_shape: tuple[int, ...]) -> int:
    """F, the length of a raw feature vector (W has F + 1 rows)."""
    if features.kind == "pixels":
        return int(np.prod(image_shape))
    if features.kind == "hog":
        return hog_dim(image_shape, hog_cell(features), features.params.get("colour", False))
    if features.kind == "kmeans":
        return 4 * int(features.arrays["centroids"].shape[0])
    raise ValueError(f"unknown features {features.kind!r}")


class FeatureProblem(ValueError):
    """A fitted pipeline that cannot be used. ``field`` names the array at fault
    (``centroids``, ``scale``...), or is None for the kind and parameters."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(f"{field} {problem}" if field else problem)
        self.field = field
        self.problem = problem


# Far beyond anything training produces (whitened patches and their centroids are
# O(10), raw features are bounded by the image size); past it float32 squares overflow.
MAX_MAGNITUDE = 1e15
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The parameters a pipeline records, and each one's rule (None: anything JSON).
_POSITIVE_INT = "a positive integer"
_NON_NEGATIVE = "a finite number >= 0"
PARAM_RULES = {
    "pixels": {"std_eps": _NON_NEGATIVE},
    "hog": {"orientations": _POSITIVE_INT, "cell": _POSITIVE_INT, "hue_bins": _POSITIVE_INT,
            "std_eps": _NON_NEGATIVE},
    "kmeans": {"centroids": _POSITIVE_INT, "patches": _POSITIVE_INT,
               "kmeans_iters": _POSITIVE_INT, "kmeans_tol": _NON_NEGATIVE,
               "seed": "an integer >= 0", "patch": _POSITIVE_INT,
               "norm_eps": _NON_NEGATIVE, "whiten_eps": _NON_NEGATIVE,
               "std_eps": _NON_NEGATIVE},
}  # fmt: skip


def _param_problem(rule: str, value) -> bool:
    import math

    if rule == _NON_NEGATIVE:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return not (number and math.isfinite(value) and value >= 0)
    least = 1 if rule == _POSITIVE_INT else 0
    return not (isinstance(value, int) and not isinstance(value, bool) and value >= least)


def _check_params(kind: str, params: dict) -> None:
    for name, rule in PARAM_RULES.get(kind, {}).items():
        if name in params and _param_problem(rule, params[name]):
            raise FeatureProblem(None, f"parameter {name} is {params[name]!r:.40}, not {rule}")


def _check_array(name: str, a: np.ndarray, shape: tuple[int, ...]) -> None:
    """Floating point, exactly ``shape``, finite, within MAX_MAGNITUDE."""
    if a.dtype not in FLOAT_DTYPES:
        raise FeatureProblem(name, f"is {a.dtype}, not float32 or float64")
    if a.shape != shape:
        raise FeatureProblem(name, f"has shape {a.shape}, expected {shape}")
    if not np.isfinite(a).all():
        raise FeatureProblem(name, "holds NaN or infinite values")
    peak = float(np.abs(a).max(initial=0.0))
    if peak > MAX_MAGNITUDE:
        raise FeatureProblem(name, f"holds a value of {peak:.3g}, beyond {MAX_MAGNITUDE:g}")


def check(features: Features, image_shape: tuple[int, ...]) -> None:
    """Raise ``FeatureProblem`` (a ValueError naming the array at fault) unless the
    pipeline's parameters and arrays are what it needs for images of
    ``image_shape``: each array's dtype, shape, finiteness and own rules
    (a positive scale, a symmetric positive definite whitening matrix)."""
    if not isinstance(features.kind, str) or features.kind not in KINDS:
        raise FeatureProblem(
            None, f"unknown features: kind is {features.kind!r:.40}, not one of {', '.join(KINDS)}"
        )
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise FeatureProblem(None, f"image shape {image_shape} is not H x W x C")
    _check_params(features.kind, features.params)
    if features.kind == "pixels":
        standardized = features.params.get("standardized", False)
        if not isinstance(standardized, bool):
            raise FeatureProblem(None, "pixels standardized must be true or false")
        if not standardized:
            if features.arrays:
                # W was not trained on scaled pixels: a planted scale would change its classes.
                names = ", ".join(sorted(features.arrays))
                raise FeatureProblem(None, f"plain pixel features hold arrays ({names})")
            return
    if features.kind == "hog":
        cell = features.params.get("cell", CELL)
        if isinstance(cell, bool) or not isinstance(cell, int) or not 1 <= cell <= 64:
            raise FeatureProblem(
                None, f"hog cell size must be an integer in 1..64, got {cell!r:.40}"
            )
        power = features.params.get("power", 1.0)
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 < power <= 1:
            raise FeatureProblem(None, f"hog power must be a number in (0, 1], got {power!r:.40}")
        if not isinstance(features.params.get("colour", False), bool):
            raise FeatureProblem(None, "hog colour must be true or false")
    a = features.arrays
    needed = ["mean", "scale"] + (
        ["centroids", "whiten_mean", "whiten"] if features.kind == "kmeans" else []
    )
    missing = [k for k in needed if k not in a]
    if missing:
        raise FeatureProblem(None, f"{features.kind} features lack {', '.join(missing)}")
    if features.kind == "kmeans":
        from svmtool.core.kmeans import PATCH, whitening_problem

        h, w, c = image_shape
        p = PATCH * PATCH * c
        if features.params.get("patch", PATCH) != PATCH:
            raise FeatureProblem(
                None, f"parameter patch is {features.params['patch']!r}, this svmtool uses {PATCH}"
            )
        if min(h, w) < PATCH:
            raise FeatureProblem(
                None, f"k-means features need images of at least {PATCH} x {PATCH}"
            )
        cen = a["centroids"]
        if cen.dtype in FLOAT_DTYPES and (cen.ndim != 2 or cen.shape[1] != p or not len(cen)):
            raise FeatureProblem("centroids", f"have shape {cen.shape}, expected (K, {p}), K >= 1")
        _check_array("centroids", cen, cen.shape)
        k = cen.shape[0]
        recorded = features.params.get("centroids", k)
        if recorded != k:
            raise FeatureProblem(
                None, f"parameter centroids is {recorded!r}, but there are {k} centroids"
            )
        _check_array("whiten_mean", a["whiten_mean"], (p,))
        _check_array("whiten", a["whiten"], (p, p))
        problem = whitening_problem(a["whiten"])
        if problem:
            raise FeatureProblem("whiten", problem)
    f = feature_dim(features, image_shape)
    _check_array("mean", a["mean"], (f,))
    _check_array("scale", a["scale"], (f,))
    low = float(a["scale"].min(initial=np.inf))
    if low <= 0:
        raise FeatureProblem("scale", f"holds {low:g}; a standard deviation must be > 0")
    if low < 1 / MAX_MAGNITUDE:
        raise FeatureProblem("scale", f"holds {low:.3g}, below {1 / MAX_MAGNITUDE:g}")
