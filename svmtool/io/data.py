"""Any --data (CIFAR-10, another named dataset, synthetic, a user's .npz, an image
folder) loaded by one dispatch, the split, and preprocessing.

The loaders it dispatches to import their shared types from ``svmtool.io.dataset``
(below them all), so imports point down: data -> cifar, named, imagefolder,
npzdata -> dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool.errors import BadValue, SvmtoolError, did_you_mean
from svmtool.io.dataset import (
    CIFAR10,
    CIFAR100,
    DOWNLOADABLE,
    NAMED_DATASETS,
    SYNTHETIC,
    Dataset,
    content_order,
    default_data_dir,
    stratified_sample,
)
from svmtool.io.npzdata import load_npz

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


def load_dataset(
    source: str,
    data_dir: Path | None = None,
    *,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    progress=None,
    labels: str = "fine",
) -> Dataset:
    """``source`` is a name of NAMED_DATASETS, a path to an .npz file, or an image
    folder (CLASS/*.png|jpg, or train/CLASS and test/CLASS).

    image_size (height, width) and channels: the size an image folder is read at
    (default: chosen from the images). progress(stage, done, total): decoding.
    labels: CIFAR-100's 'fine' (100 classes) or 'coarse' (20 superclasses).
    """
    if labels != "fine" and source != CIFAR100:
        raise SvmtoolError(f"--labels {labels} applies to cifar100, not {source}")
    if source == SYNTHETIC:
        return synthetic()
    if source == CIFAR10:
        from svmtool.io import cifar

        return cifar.load(data_dir or default_data_dir())
    if source in DOWNLOADABLE:
        from svmtool.io import named

        return named.load(source, data_dir or default_data_dir(), labels)
    if source.endswith(".npz"):
        return load_npz(Path(source))
    if Path(source).is_dir():
        from svmtool.io import imagefolder

        return imagefolder.load(
            Path(source),
            data_dir or default_data_dir(),
            image_size=image_size,
            channels=channels,
            progress=progress,
        )
    if Path(source).exists():
        return load_npz(Path(source))
    raise unknown_data(source)


def unknown_data(source: str) -> BadValue:
    """--data that is neither a name nor a file: the closest name, or the .npz file
    beside it that the user probably meant (``fashion`` for ``fashion.npz``)."""
    # A file the user has beats a name that looks alike (fashion.npz, not fashion-mnist).
    if Path(source + ".npz").is_file():
        hint = f" (did you mean {source}.npz?)"
    else:
        hint = did_you_mean(source, NAMED_DATASETS)
    names = ", ".join(NAMED_DATASETS)
    problem = f"{source!r} is not a dataset name ({names}), an .npz file or an image folder"
    return BadValue("--data", problem + hint)


# --- split ---------------------------------------------------------------------

CS231N_RULE = "cs231n"
STRATIFIED_RULE = "stratified"


@dataclass
class Split:
    """Index arrays into a Dataset: train/val/dev into the training images, test
    into the test images. ``train`` is in a seeded random order (SGD walks it).

    rule: 'cs231n' (CIFAR-10: train the first images, val the last) or
    'stratified' (any other data: a seeded, stratified validation sample).
    warnings: sentences about classes a split lacks.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    dev: np.ndarray
    rule: str = CS231N_RULE
    warnings: list[str] = field(default_factory=list)
    description: str = ""  # the rule in words, for the train summary


CIFAR10_TRAIN_IMAGES = 50_000


def describe_split(rule: str, num_train: int, num_val: int, total: int, seed: int) -> str:
    """The split rule as it was applied, in words: 'CS231n's split' only when it is."""
    if rule == STRATIFIED_RULE:
        return f"stratified val, seed {seed}"
    if (total, num_train, num_val) == (CIFAR10_TRAIN_IMAGES, 49_000, 1_000):
        return "CS231n's split"
    return f"by position: the first {num_train} and the last {num_val} of {total} images"


def split_sizes(
    n_train_images: int,
    n_test_images: int,
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    num_dev: int | None = None,
) -> tuple[int, int, int, int]:
    """Default sizes: validation min(1000, N/10) (CS231n's 1,000 for CIFAR-10's
    50,000), training every other image (49,000 for CIFAR-10), test the whole
    test set, dev min(500, train).

    Explicit sizes are checked against what the data holds.
    """
    if num_val is None:
        num_val = min(1000, n_train_images // 10)
    if num_train is None:
        num_train = n_train_images - num_val
    if num_test is None:
        num_test = n_test_images
    if num_dev is None:
        num_dev = min(500, num_train)
    for name, value in (("--num-train", num_train), ("--num-val", num_val)):
        if value < 0:
            raise BadValue(name, f"must be >= 0, got {value}")
    if num_train < 1:
        raise BadValue("--num-train", f"must be >= 1, got {num_train}")
    if num_train + num_val > n_train_images:
        raise SvmtoolError(
            f"--num-train {num_train} + --num-val {num_val} = {num_train + num_val} exceeds"
            f" the {n_train_images} training images"
        )
    if not 0 <= num_test <= n_test_images:
        raise SvmtoolError(f"num_test = {num_test} exceeds the {n_test_images} test images")
    if not 0 <= num_dev <= num_train:
        raise SvmtoolError(f"num_dev must be in 0..{num_train}, got {num_dev}")
    return num_train, num_val, num_test, num_dev


def _absent(class_names: list[str], labels: np.ndarray) -> list[str]:
    present = np.zeros(len(class_names), dtype=bool)
    # Not np.unique: a sort, and in numpy 2 it imports numpy.ma (~20 ms of train's start).
    present[labels] = True
    return [class_names[k] for k in np.flatnonzero(~present)]


def _name_list(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def split_warnings(dataset: Dataset, parts: Split) -> list[str]:
    """Sentences about classes with no training image, or missing from validation."""
    names = list(dataset.class_names)
    labels = np.asarray(dataset.train_labels)
    warnings = []
    no_train = _absent(names, labels[parts.train])
    if no_train:
        warnings.append(
            f"{len(no_train)} of {len(names)} classes have no training images"
            f" ({_name_list(no_train)}): the model cannot learn them"
        )
    no_val = [n for n in _absent(names, labels[parts.val]) if n not in no_train]
    if parts.val.size and no_val:
        warnings.append(
            f"the validation split ({parts.val.size} images) has no image of"
            f" {len(no_val)} class(es) ({_name_list(no_val)})"
        )
    return warnings


def split(dataset: Dataset, seed: int = 0, **sizes: int | None) -> Split:
    """Split the training images into train/val/dev and take the test rows.

    CIFAR-10 keeps CS231n's split: train = the first num_train images (0-48,999),
    val = the last num_val (49,000-49,999). Any other data: val is a seeded,
    stratified sample (data saved sorted by label still gets every class) and
    train is num_train of the remaining images drawn with the seed (all of them
    by default), both drawn in ``content_order``, so the file order of the data
    does not change the split. test = the first num_test test images (all by default);
    dev = num_dev images drawn from train with the seed.
    """
    n = dataset.train_images.shape[0]
    num_train, num_val, num_test, num_dev = split_sizes(n, dataset.test_images.shape[0], **sizes)
    rng = np.random.default_rng(seed)
    if dataset.source == CIFAR10:
        rule = CS231N_RULE
        train = rng.permutation(num_train)
        dev = np.sort(rng.choice(num_train, num_dev, replace=False))
        val = np.arange(n - num_val, n)
    else:
        rule = STRATIFIED_RULE
        # Positions are drawn in content order and mapped back to the data's indices.
        order = content_order(dataset.train_images, dataset.train_labels)
        picked = stratified_sample(np.asarray(dataset.train_labels)[order], num_val, rng)
        val = np.sort(order[picked])
        rest = np.setdiff1d(np.arange(n), picked, assume_unique=True)
        train = order[rng.permutation(rest)[:num_train]]
        dev = np.sort(rng.choice(train, num_dev, replace=False))
    parts = Split(train=train, val=val, test=np.arange(num_test), dev=dev, rule=rule)
    parts.warnings = split_warnings(dataset, parts)
    parts.description = describe_split(rule, num_train, num_val, n, seed)
    return parts


# --- preprocess ----------------------------------------------------------------


def _row_blocks(flat: np.ndarray, index: np.ndarray | None, size: int):
    """(start, rows) for consecutive blocks of ``size`` rows of ``flat`` (M, D):
    all of them in order when index is None, else flat[index] block by block.
    A block of consecutive indices is a view; others are gathered into one
    reused buffer (valid until the next block). index must be in range."""
    n = flat.shape[0] if index is None else index.size
    buffer = None
    for start in range(0, n, size):
        if index is None:
            yield start, flat[start : start + size]
            continue
        part = index[start : start + size]
        first = int(part[0])
        if part.size == 1 or (np.diff(part) == 1).all():
            yield start, flat[first : first + part.size]
            continue
        if buffer is None:
            buffer = np.empty((min(size, n), flat.shape[1]), dtype=flat.dtype)
        # mode="clip" lets take write straight into the buffer (the default
        # "raise" goes through a temporary); the caller checked the range.
        yield start, np.take(flat, part, axis=0, out=buffer[: part.size], mode="clip")


def _check_rows(rows: np.ndarray | None, count: int) -> np.ndarray | None:
    if rows is None:
        return None
    index = np.asarray(rows)
    if index.size and (index.min() < 0 or index.max() >= count):
        raise ValueError(f"rows must be in [0, {count}), got {index.min()}..{index.max()}")
    return index


def mean_image(images: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Mean of uint8 images (N, H, W, C) over ``rows`` (all if None), as float64 (H, W, C).

    The sums are integers, exact: blocks of 257 rows are summed in uint16 (257 * 255
    < 2^16, twice as fast as wider sums), the blocks in int64, chunks of rows on
    every core (``_on_cores``; integer sums do not depend on the order).
    """
    flat = images.reshape(images.shape[0], -1)
    index = _check_rows(rows, flat.shape[0])
    if index is not None:
        index = np.sort(index)
    count = flat.shape[0] if index is None else index.size

    def chunk_total(start: int, stop: int) -> np.ndarray:
        total = np.zeros(flat.shape[1], dtype=np.int64)
        part = None if index is None else index[start:stop]
        source = flat[start:stop] if index is None else flat
        for _, block in _row_blocks(source, part, 257):
            total += np.add.reduce(block, axis=0, dtype=np.uint16)
        return total

    total = sum(_on_cores(chunk_total, count), np.zeros(flat.shape[1], dtype=np.int64))
    return (total / max(count, 1)).reshape(images.shape[1:])


# Rows per task when preprocessing on several cores: ~12 MB of float32 at
# CIFAR's size, small enough that a busy core holding one task delays little.
CHUNK_ROWS = 4096


def _on_cores(task, count: int) -> list:
    """[task(start, stop) for consecutive chunks of CHUNK_ROWS of range(count)],
    the chunks taken by one thread per core (numpy releases the GIL in these
    loops); in this thread when there is a single chunk. A core held by another
    process slows only the chunks its thread takes."""
    bounds = [(s, min(s + CHUNK_ROWS, count)) for s in range(0, count, CHUNK_ROWS)]
    from svmtool.core.threads import cores

    workers = min(cores(), len(bounds))
    if workers <= 1:
        return [task(lo, hi) for lo, hi in bounds]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda b: task(*b), bounds))


def preprocess(
    images: np.ndarray,
    mean: np.ndarray,
    rows: np.ndarray | None = None,
    dtype: type = np.float32,
) -> np.ndarray:
    """Rows ``(N, D+1)``: flattened images minus ``mean``, a bias column of ones last.

    images: (M, H, W, C) uint8; mean: (H, W, C); rows: which images, in which
    order (all if None). One pass into the preallocated output: each block of
    rows is converted, has the mean subtracted and gets its bias while it is in
    cache, with no temporary beyond a block (a uint8-to-float subtraction in one
    ufunc call casts through a buffer: measured 2-3x slower than the two calls),
    chunks of rows on every core (``_on_cores``).
    """
    flat = images.reshape(images.shape[0], -1)
    index = _check_rows(rows, flat.shape[0])
    d = flat.shape[1]
    count = flat.shape[0] if index is None else index.size
    out = np.empty((count, d + 1), dtype=dtype)
    mean_row = np.asarray(mean, dtype=dtype).reshape(d)

    def fill(start: int, stop: int) -> None:
        part = None if index is None else index[start:stop]
        source = flat[start:stop] if index is None else flat
        # Rows are gathered 512 at a time and converted 32 at a time (~400 KB of
        # float32 at CIFAR's size), which stay in L2 between the two passes.
        for first, block in _row_blocks(source, part, 512):
            for sub in range(0, block.shape[0], 32):
                rows_in = block[sub : sub + 32]
                at = start + first + sub
                target = out[at : at + rows_in.shape[0]]
                body = target[:, :d]
                np.copyto(body, rows_in)
                np.subtract(body, mean_row, out=body)
                target[:, d] = 1

    # Chunks of rows on every core: elementwise, so the same bits however split.
    _on_cores(fill, count)
    return out
