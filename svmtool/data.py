"""Datasets (CIFAR-10, synthetic, a user's .npz), the split, and preprocessing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svmtool.errors import SvmtoolError
from svmtool.npzfile import read_npz

DATA_DIR_ENV = "SVMTOOL_DATA_DIR"
SYNTHETIC = "synthetic"
CIFAR10 = "cifar10"


@dataclass
class Dataset:
    """Images and labels as they come from disk.

    train_images: (N, H, W, C) uint8; train_labels: (N,) int64; the same for test.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


def default_data_dir() -> Path:
    """``$SVMTOOL_DATA_DIR``, else the platform's user cache directory."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("svmtool")) / "data"


# --- synthetic -----------------------------------------------------------


SYNTHETIC_SHAPE = (32, 32, 3)
SYNTHETIC_CLASSES = 10


def synthetic_templates(
    shape: tuple[int, int, int] = SYNTHETIC_SHAPE, num_classes: int = SYNTHETIC_CLASSES
) -> np.ndarray:
    """One smooth pattern per class, (K, H, W, C) in [-1, 1]: a coloured
    grating whose orientation and hue change with the class."""
    h, w, c = shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    out = np.empty((num_classes, h, w, c))
    for k in range(num_classes):
        angle = np.pi * k / num_classes
        wave = np.cos(3.0 * (np.cos(angle) * xx + np.sin(angle) * yy) * np.pi)
        for ch in range(c):
            phase = 2 * np.pi * (k / num_classes + ch / max(c, 1))
            out[k, :, :, ch] = wave * (0.6 + 0.4 * np.cos(phase))
    return out


def synthetic(
    n_train: int = 5000,
    n_test: int = 1000,
    shape: tuple[int, int, int] = SYNTHETIC_SHAPE,
    num_classes: int = SYNTHETIC_CLASSES,
    seed: int = 0,
    noise: float = 60.0,
) -> Dataset:
    """A learnable CIFAR-shaped dataset: class template plus Gaussian noise, as uint8.

    The same seed gives the same images, so models trained with different
    training seeds see the same data.
    """
    rng = np.random.default_rng(seed)
    # A faint pattern (amplitude 6) under strong noise: learnable, far from trivial.
    templates = (128.0 + 6.0 * synthetic_templates(shape, num_classes)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, num_classes, n).astype(np.int64)
        # float32 throughout: this runs on every synthetic train, so keep it quick.
        images = rng.standard_normal((n, *shape), dtype=np.float32)
        images *= noise
        images += templates[labels]
        np.rint(images, out=images)
        return np.clip(images, 0, 255, out=images).astype(np.uint8), labels

    train_images, train_labels = draw(n_train)
    test_images, test_labels = draw(n_test)
    names = [f"stripes-{round(180 * k / num_classes):03d}deg" for k in range(num_classes)]
    return Dataset(train_images, train_labels, test_images, test_labels, names, SYNTHETIC)


# --- a user's .npz -----------------------------------------------------------

NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")
# A bound on the number of classes: above ImageNet-21k's 21,841, far below
# what a stray label (10**9) would ask for.
MAX_CLASSES = 100_000


def load_npz(path: Path) -> Dataset:
    """A user's dataset: X_train, y_train, X_test, y_test (uint8 N x H x W x C images,
    integer labels), optional class_names. Never unpickles."""
    content = read_npz(path, "dataset")
    missing = [k for k in NPZ_KEYS if k not in content]
    if missing:
        raise SvmtoolError(f"{path} lacks {', '.join(missing)} (needs {', '.join(NPZ_KEYS)})")
    arrays = {k: content[k] for k in NPZ_KEYS}
    names = content.get("class_names")

    for part in ("train", "test"):
        images, labels = arrays[f"X_{part}"], arrays[f"y_{part}"]
        if images.dtype != np.uint8 or images.ndim != 4 or min(images.shape[1:], default=0) < 1:
            raise SvmtoolError(
                f"{path}: X_{part} must be uint8 N x H x W x C, got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise SvmtoolError(
                f"{path}: y_{part} has shape {labels.shape}, expected ({images.shape[0]},)"
            )
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise SvmtoolError(f"{path}: y_{part} must hold integers, got {labels.dtype}")
    if arrays["X_train"].shape[1:] != arrays["X_test"].shape[1:]:
        raise SvmtoolError(
            f"{path}: X_train images are {arrays['X_train'].shape[1:]},"
            f" X_test images {arrays['X_test'].shape[1:]}"
        )
    if arrays["y_train"].size == 0:
        raise SvmtoolError(f"{path}: X_train is empty")
    top = max(int(arrays["y_train"].max()), int(arrays["y_test"].max(initial=0)))
    if top >= MAX_CLASSES:
        # Checked before anything is sized by it (class names, W, a confusion matrix).
        raise SvmtoolError(
            f"{path}: label {top} would make {top + 1} classes; svmtool allows at most"
            f" {MAX_CLASSES:,} (labels must be class indices 0..C-1)"
        )
    if names is not None:
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise SvmtoolError(
                f"{path}: class_names must be a list of strings, got {names.dtype} {names.shape}"
            )
        class_names = [str(n) for n in names]
        if top >= len(class_names):
            raise SvmtoolError(
                f"{path}: label {top} is out of range for {len(class_names)} class_names"
            )
    else:
        class_names = [f"class{k}" for k in range(top + 1)]
    low = min(int(arrays["y_train"].min()), int(arrays["y_test"].min(initial=0)))
    if low < 0:
        raise SvmtoolError(f"{path}: labels must be >= 0, got {low}")
    if len(class_names) < 2:
        raise SvmtoolError(f"{path}: needs at least 2 classes, got {len(class_names)}")
    return Dataset(
        arrays["X_train"],
        arrays["y_train"].astype(np.int64),
        arrays["X_test"],
        arrays["y_test"].astype(np.int64),
        class_names,
        str(path),
    )


def load_dataset(source: str, data_dir: Path | None = None) -> Dataset:
    """``source`` is 'cifar10', 'synthetic', or a path to an .npz file."""
    if source == SYNTHETIC:
        return synthetic()
    if source == CIFAR10:
        from svmtool import cifar

        return cifar.load(data_dir or default_data_dir())
    if source.endswith(".npz") or Path(source).exists():
        return load_npz(Path(source))
    raise SvmtoolError(
        f"--data must be cifar10, synthetic or a path to an .npz file, got {source!r}"
    )


# --- split ---------------------------------------------------------------------


@dataclass
class Split:
    """Index arrays into a Dataset: train/val/dev into the training images, test
    into the test images. ``train`` is in a seeded random order (SGD walks it)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    dev: np.ndarray


def split_sizes(
    n_train_images: int,
    n_test_images: int,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    num_dev: int | None = None,
) -> tuple[int, int, int, int]:
    """CS231n sizes (49,000/1,000/1,000/500) for full CIFAR-10; for smaller data
    the validation split is min(1000, N/10) and the test split min(1000, test N).

    Explicit sizes are checked against what the data holds.
    """
    if num_val is None:
        num_val = min(1000, n_train_images // 10)
    if num_train is None:
        num_train = min(49000, n_train_images - num_val)
    if num_test is None:
        num_test = min(1000, n_test_images)
    if num_dev is None:
        num_dev = min(500, num_train)
    for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
        if value < 0:
            raise SvmtoolError(f"{name} must be >= 0, got {value}")
    if num_train < 1:
        raise SvmtoolError(f"num_train must be >= 1, got {num_train}")
    if num_train + num_val > n_train_images:
        raise SvmtoolError(
            f"num_train + num_val = {num_train + num_val} exceeds the"
            f" {n_train_images} training images"
        )
    if num_test > n_test_images:
        raise SvmtoolError(f"num_test = {num_test} exceeds the {n_test_images} test images")
    if not 0 <= num_dev <= num_train:
        raise SvmtoolError(f"num_dev must be in 0..{num_train}, got {num_dev}")
    return num_train, num_val, num_test, num_dev


def split(dataset: Dataset, seed: int = 0, **sizes: int | None) -> Split:
    """The CS231n split: train = the first num_train training images, val = the
    last num_val (images 49,000-49,999 for CIFAR-10), test = the first num_test
    test images, dev = num_dev images drawn from train with the seed."""
    n = dataset.train_images.shape[0]
    num_train, num_val, num_test, num_dev = split_sizes(n, dataset.test_images.shape[0], **sizes)
    rng = np.random.default_rng(seed)
    train = rng.permutation(num_train)
    dev = np.sort(rng.choice(num_train, num_dev, replace=False))
    return Split(
        train=train,
        val=np.arange(n - num_val, n),
        test=np.arange(num_test),
        dev=dev,
    )


# --- preprocess ----------------------------------------------------------------


def mean_image(images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Mean of uint8 images (N, H, W, C) over ``rows`` (all if None), as float64 (H, W, C)."""
    flat = images.reshape(images.shape[0], -1)
    total = np.zeros(flat.shape[1])
    chunk = 4096
    index = np.arange(flat.shape[0]) if rows is None else np.sort(rows)
    for start in range(0, index.size, chunk):
        # Summing in blocks bounds the float64 temporary at chunk x D.
        total += flat[index[start : start + chunk]].sum(axis=0, dtype=np.float64)
    return (total / max(index.size, 1)).reshape(images.shape[1:])


def preprocess(
    images: np.ndarray,
    mean: np.ndarray,
    rows: np.ndarray | None = None,
    dtype: type = np.float32,
) -> np.ndarray:
    """Rows ``(N, D+1)``: flattened images minus ``mean``, a bias column of ones last.

    images: (M, H, W, C) uint8; mean: (H, W, C); rows: which images, in which
    order (all if None). Built block by block into one preallocated array, so
    no full-size float64 temporary is made.
    """
    flat = images.reshape(images.shape[0], -1)
    index = np.arange(flat.shape[0]) if rows is None else np.asarray(rows)
    d = flat.shape[1]
    out = np.empty((index.size, d + 1), dtype=dtype)
    mean_row = np.asarray(mean, dtype=dtype).reshape(d)
    chunk = 2048
    for start in range(0, index.size, chunk):
        block = flat[index[start : start + chunk]]
        np.subtract(block, mean_row, out=out[start : start + block.shape[0], :d], dtype=dtype)
    out[:, d] = 1
    return out
