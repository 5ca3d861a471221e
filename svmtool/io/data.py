"""Datasets (CIFAR-10, synthetic, a user's .npz), the split, and preprocessing."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool.errors import BadValue, SvmtoolError, did_you_mean
from svmtool.io.npzfile import read_npz

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
MAX_CLASSES = 10_000
"""Labels run 0..MAX_CLASSES-1: W has a column per class, so a stray label of 10**9
must be refused, not allocated."""


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n else None


def _channel_first(images: np.ndarray) -> bool:
    """(N, C, H, W) with C = 1 or 3, PyTorch's layout, and not plausibly (N, H, W, C)."""
    return images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[3] not in (1, 3, 4)


def _image_fix(name: str, images: np.ndarray) -> str | None:
    """The numpy expression that turns ``images`` into uint8 (N, H, W, C), or None
    when no expression is certain (values outside 0..255, a flat row of unknown
    height and width)."""
    expr = name
    if images.dtype != np.uint8:
        if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.number):
            return None
        if images.size:
            low, high = float(np.min(images)), float(np.max(images))
            if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
                return None
            if np.issubdtype(images.dtype, np.floating):
                # [0, 1] floats are the usual "normalised" layout; anything above 1 is 0..255.
                expr = f"({expr} * 255).round()" if high <= 1 else f"{expr}.round()"
        expr += ".astype(np.uint8)"
    if images.ndim == 2:
        d = images.shape[1]
        side = _square_side(d)
        if side:
            expr += f".reshape(-1, {side}, {side}, 1)"
        elif d % 3 == 0 and _square_side(d // 3):
            side = _square_side(d // 3)
            # CIFAR's own rows are channel planes (R, G, B): the reshape must say so.
            expr += f".reshape(-1, 3, {side}, {side}).transpose(0, 2, 3, 1)"
        else:
            return None
    elif _channel_first(images):
        expr += ".transpose(0, 2, 3, 1)"
    elif images.ndim not in (3, 4):
        return None
    return expr


def _check_images(path: Path, name: str, images: np.ndarray) -> np.ndarray:
    """``images`` as uint8 (N, H, W, C); (N, H, W) gains a channel axis (Keras' layout).
    Any other layout is one line saying exactly what to save instead."""
    if images.dtype.kind in "fc" and images.ndim >= 1 and images.size:
        finite = np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise SvmtoolError(
                f"{path}: {name} ({images.dtype} {images.shape}) holds NaN or infinite pixels"
                f" in {bad.size} of {images.shape[0]} images (the first is image {bad[0]});"
                " fix or drop those images, then save uint8 pixels"
            )
    if images.dtype == np.uint8 and images.ndim == 3:
        images = images[..., None]  # a view: no copy
    if (
        images.dtype == np.uint8
        and images.ndim == 4
        and min(images.shape[1:]) >= 1
        and not _channel_first(images)
    ):
        return images
    found = f"{path}: {name} is {images.dtype} {images.shape}"
    wanted = "svmtool reads uint8 images, N x H x W x C or N x H x W"
    fix = _image_fix(name, images)
    if images.ndim == 2:
        # A flat row does not say its height and width: name the likely guess as one.
        d = images.shape[1]
        if fix is None:
            raise SvmtoolError(f"{found}; {wanted}: reshape each row to H x W x C")
        if _square_side(d):
            side = _square_side(d)
            guess = f"if they are {side} x {side} grayscale, save {name}={fix}"
        else:
            side = _square_side(d // 3)
            guess = (
                f"if they are {side} x {side} colour stored as channel planes (CIFAR's rows),"
                f" save {name}={fix} (pixel after pixel: .reshape(-1, {side}, {side}, 3))"
            )
        raise SvmtoolError(f"{found}; {wanted}: {guess}")
    if fix is not None and fix != name:
        raise SvmtoolError(f"{found}; {wanted}: save {name}={fix}")
    if images.ndim in (3, 4) and images.size and np.issubdtype(images.dtype, np.number):
        low, high = np.min(images), np.max(images)
        raise SvmtoolError(f"{found} with values in [{low}, {high}]; {wanted}: scale to 0..255")
    raise SvmtoolError(f"{found}; {wanted}")


def _label_column(path: Path, name: str, labels: np.ndarray, count: int) -> np.ndarray:
    """``labels`` as (count,): a column (N, 1) is read as it is; one-hot rows (N, K)
    are refused with the expression that turns them into class numbers."""
    if labels.ndim == 2 and labels.shape == (count, 1):
        return labels[:, 0]
    if (
        labels.ndim == 2
        and labels.shape[0] == count
        and labels.shape[1] >= 2
        and labels.dtype.kind in "biuf"
        and labels.size
        and bool(np.all((labels == 0) | (labels == 1)))
        and bool(np.all(labels.sum(axis=1) == 1))
    ):
        raise SvmtoolError(
            f"{path}: {name} is one-hot ({labels.dtype} {labels.shape}); svmtool reads one"
            f" class number per image: save {name}={name}.argmax(axis=1)"
        )
    return labels


def _string_labels(
    path: Path, labels: dict[str, np.ndarray], names: list[str] | None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Labels that are class names ('cat', 'dog'): numbered in the order of
    ``class_names`` when the file has it, else in sorted order."""
    text = {}
    for part, values in labels.items():
        if values.dtype.kind not in "US":
            raise SvmtoolError(
                f"{path}: y_train and y_test must both hold class numbers or both names;"
                f" y_{part} is {values.dtype}"
            )
        try:
            text[part] = values.astype(str)
        except UnicodeDecodeError:
            raise SvmtoolError(f"{path}: y_{part} holds bytes that are not text") from None
    if names is None:
        found = np.unique(np.concatenate([text["train"], text["test"]]))
        if found.size > MAX_CLASSES:
            raise SvmtoolError(f"{path}: {found.size} different labels; at most {MAX_CLASSES}")
        names = [str(n) for n in found]
    order = np.array(names)
    sorter = np.argsort(order, kind="stable")
    numbered = {}
    for part, values in text.items():
        at = np.searchsorted(order, values, sorter=sorter).clip(0, order.size - 1)
        index = sorter[at]
        unknown = order[index] != values
        if unknown.any():
            raise SvmtoolError(
                f"{path}: label {str(values[unknown][0])!r} in y_{part} is not one of class_names"
            )
        numbered[part] = index.astype(np.int64)
    return numbered, names


def _check_labels(path: Path, name: str, labels: np.ndarray, count: int) -> np.ndarray:
    """``labels`` as int64 (count,), each in 0..MAX_CLASSES-1."""
    if labels.ndim != 1 or labels.shape[0] != count:
        raise SvmtoolError(f"{path}: {name} has shape {labels.shape}, expected ({count},)")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        integral = (np.issubdtype(labels.dtype, np.floating) or labels.dtype == np.bool_) and bool(
            np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
        )
        hint = f": save {name}={name}.astype(np.int64)" if integral else ""
        raise SvmtoolError(f"{path}: {name} must hold integers, got {labels.dtype}{hint}")
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0:
            raise SvmtoolError(f"{path}: labels must be >= 0, got {low} in {name}")
        if high >= MAX_CLASSES:
            raise SvmtoolError(
                f"{path}: label {high} in {name}; svmtool takes at most {MAX_CLASSES} classes,"
                f" labelled 0..{MAX_CLASSES - 1}"
            )
    return labels.astype(np.int64)


NPZ_OBJECT_FIXES = {
    "class_names": "save class_names=np.array(class_names, dtype=str)",
    "y_train": "save class numbers, y_train=np.asarray(y_train, dtype=np.int64), or names,"
    " y_train=np.asarray(y_train, dtype=str)",
    "y_test": "save class numbers, y_test=np.asarray(y_test, dtype=np.int64), or names,"
    " y_test=np.asarray(y_test, dtype=str)",
}


def _class_names(path: Path, names: np.ndarray | None) -> list[str] | None:
    if names is None:
        return None
    if names.size > MAX_CLASSES:
        raise SvmtoolError(f"{path}: {names.size} class_names; at most {MAX_CLASSES}")
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise SvmtoolError(
            f"{path}: class_names must be a list of strings, got {names.dtype} {names.shape}"
        )
    class_names = [str(n) for n in names]
    problem = class_names_problem(class_names)
    if problem:
        raise SvmtoolError(f"{path}: class_names {problem}")
    return class_names


def load_npz(path: Path) -> Dataset:
    """A user's dataset: X_train, y_train, X_test, y_test (uint8 N x H x W x C or
    N x H x W images, labels 0..K-1 or class names), optional class_names. Never
    unpickles. Keras' lower-case x_train and x_test are read as X_train and X_test;
    labels of shape (N, 1) as (N,).

    Other layouts (flat rows, floats, channel-first, one-hot labels) are refused
    with the exact numpy expression that converts them.
    """
    content = read_npz(path, "dataset", NPZ_OBJECT_FIXES)
    for part in ("train", "test"):
        # keras.datasets.*.load_data() names them x_train, x_test.
        if f"X_{part}" not in content and f"x_{part}" in content:
            content[f"X_{part}"] = content.pop(f"x_{part}")
    missing = [k for k in NPZ_KEYS if k not in content]
    if missing:
        raise SvmtoolError(f"{path} lacks {', '.join(missing)} (needs {', '.join(NPZ_KEYS)})")
    images, raw = {}, {}
    for part in ("train", "test"):
        images[part] = _check_images(path, f"X_{part}", content[f"X_{part}"])
        raw[part] = _label_column(path, f"y_{part}", content[f"y_{part}"], len(images[part]))
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise SvmtoolError(
            f"{path}: X_train images are {images['train'].shape[1:]},"
            f" X_test images {images['test'].shape[1:]}"
        )
    if images["train"].shape[0] == 0:
        raise SvmtoolError(f"{path}: X_train is empty")
    names = _class_names(path, content.get("class_names"))
    if any(v.dtype.kind in "US" for v in raw.values()):
        for part in ("train", "test"):
            if raw[part].ndim != 1 or raw[part].shape[0] != len(images[part]):
                raise SvmtoolError(
                    f"{path}: y_{part} has shape {raw[part].shape}, expected ({len(images[part])},)"
                )
        labels, class_names = _string_labels(path, raw, names)
        problem = class_names_problem(class_names)
        if problem:
            raise SvmtoolError(f"{path}: the labels (class names) {problem}")
    else:
        labels = {
            part: _check_labels(path, f"y_{part}", raw[part], len(images[part]))
            for part in ("train", "test")
        }
        class_names = _numbered_class_names(path, labels, names)
    if len(class_names) < 2:
        raise SvmtoolError(f"{path}: needs at least 2 classes, got {len(class_names)}")
    return Dataset(
        images["train"], labels["train"], images["test"], labels["test"], class_names, str(path)
    )


def _numbered_class_names(
    path: Path, labels: dict[str, np.ndarray], names: list[str] | None
) -> list[str]:
    """class_names for labels 0..K-1: the file's, or class0..classK-1."""
    low = min(int(labels["train"].min()), int(labels["test"].min(initial=MAX_CLASSES)))
    top = max(int(labels["train"].max()), int(labels["test"].max(initial=0)))
    if names is not None:
        if top >= len(names):
            hint = (
                f": labels run {low}..{top}; if they count from 1, save y_train=y_train - 1"
                " and y_test=y_test - 1"
                if low >= 1 and top == len(names)
                else ""
            )
            raise SvmtoolError(
                f"{path}: label {top} is out of range for {len(names)} class_names{hint}"
            )
        return names
    if low >= 1:
        # Labels 1..K would make a class 0 with no image at all: a phantom class
        # that still gets a column of W and a row of the confusion matrix.
        raise SvmtoolError(
            f"{path}: the labels run {low}..{top} and no image is labelled 0; classes are"
            f" numbered from 0: save y_train=y_train - {low} and y_test=y_test - {low}"
        )
    return [f"class{k}" for k in range(top + 1)]


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
