"""The types every dataset loader shares: ``Dataset``, the dataset names, the data
folder, and the two samplings of labelled images (stratified, content order).

The lowest of the io modules that read datasets: cifar, named, imagefolder and
the user's .npz reader import it, and ``svmtool.io.data`` (which dispatches
--data to them) sits above them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "SVMTOOL_DATA_DIR"
SYNTHETIC = "synthetic"
CIFAR10 = "cifar10"
CIFAR100 = "cifar100"
FASHION_MNIST = "fashion-mnist"
MNIST = "mnist"
NAMED_DATASETS = (CIFAR10, CIFAR100, FASHION_MNIST, MNIST, SYNTHETIC)
"""Every value of --data that names a dataset rather than a path."""
DOWNLOADABLE = (CIFAR10, CIFAR100, FASHION_MNIST, MNIST)
"""The named datasets that live in the data folder (svmtool download --dataset NAME)."""


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
    # What loading found worth saying (an image folder's size rule, skipped files...),
    # and the same as data for --json.
    notes: list[str] = field(default_factory=list)
    report: dict | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


def class_names_problem(names: list[str]) -> str | None:
    """Why ``names`` cannot name classes, or None: each must be non-empty (not
    only spaces) and used once, or results keyed by name (evaluate's per-class
    accuracies, visualize's files) would merge two classes or show none."""
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name.strip():
            return f"name {i} is empty ({name!r}); every class needs a name"
        if name in first:
            return (
                f"hold {name!r:.60} twice (classes {first[name]} and {i}); each class needs its"
                " own name"
            )
        first[name] = i
    return None


def default_data_dir() -> Path:
    """``$SVMTOOL_DATA_DIR``, else the platform's user cache directory."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("svmtool")) / "data"


# --- samplings of labelled images -------------------------------------------------


def stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` sorted indices into ``labels`` (N,), each class in proportion to
    its count (largest remainders, ties at random). A class keeps at least one
    image outside the sample whenever the size allows it."""
    labels = np.asarray(labels)
    n = labels.size
    if size <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = size * counts / n
    room = counts - 1 if size <= n - classes.size else counts
    take = np.minimum(np.floor(exact).astype(np.int64), room)
    # Hand out what flooring left, one image per class per round, to the classes
    # with the largest remainders (a random key breaks ties).
    tiebreak = rng.random(classes.size)
    while (short := size - int(take.sum())) > 0:
        open_ = np.flatnonzero(take < room)
        if open_.size == 0:  # cannot happen when size < N; never loop forever
            break
        order = open_[np.lexsort((tiebreak[open_], -(exact - take)[open_]))]
        take[order[:short]] += 1
    # Random order within each class, then the first take[k] of class k.
    shuffled = rng.permutation(n)
    grouped = shuffled[np.argsort(inverse[shuffled], kind="stable")]
    starts = np.cumsum(counts) - counts
    cls = inverse[grouped]
    rank = np.arange(n) - starts[cls]
    return np.sort(grouped[rank < take[cls]])


def content_order(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A permutation of the N images (N, H, W, C) that depends on their pixels and
    labels only: the order of a 64-bit hash of each. The same images saved in any
    order (an .npz, a folder of files) get the same seeded split through it; equal
    images with equal labels are interchangeable, so their ties do not matter.

    The hash reads each image as little-endian 64-bit words and adds them up, each
    times a fixed random odd multiplier (integer arithmetic modulo 2**64: the same
    on every machine), then mixes in the label.
    """
    n = len(images)
    flat = np.asarray(images).reshape(n, -1)
    d = flat.shape[1]
    words = -(-d // 8)
    rng = np.random.default_rng(0x5EED)
    multipliers = rng.integers(0, 2**63, words, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    keys = np.empty(n, dtype=np.uint64)
    chunk = 2048
    with np.errstate(over="ignore"):
        for start in range(0, n, chunk):
            block = flat[start : start + chunk]
            if d % 8:
                padded = np.zeros((block.shape[0], words * 8), dtype=np.uint8)
                padded[:, :d] = block
                block = padded
            # An integer matmul: numpy's own exact loop, never BLAS.
            keys[start : start + chunk] = np.ascontiguousarray(block).view("<u8") @ multipliers
        keys += np.asarray(labels, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return np.argsort(keys, kind="stable")
