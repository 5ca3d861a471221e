"""A user's .npz dataset (X_train, y_train, X_test, y_test, optional class_names):
read without pickle, every array checked before it is used."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from svmtool.errors import SvmtoolError
from svmtool.io.dataset import Dataset, class_names_problem
from svmtool.io.npzfile import read_npz

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
