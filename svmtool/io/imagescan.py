"""Listing an image folder (ROOT/CLASS/*.png|jpg|jpeg, or ROOT/train/CLASS and
ROOT/test/CLASS) without opening a file: the classes, the layout, and every
image's name, size and mtime (one lstat each). Links, hidden files and other
files are skipped and counted; depth and file count are bounded."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

from svmtool.errors import SvmtoolError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_FILES = 2_000_000
MAX_DEPTH = 32


class FileEntry(NamedTuple):
    rel: str  # relative to the root, '/'-separated
    part: str  # 'train', 'test' or 'all' (flat layout)
    label: int
    size: int
    mtime_ns: int


@dataclass
class Scan:
    """What listing the folder found, no file opened."""

    root: Path
    layout: str  # 'flat' or 'train-test'
    class_names: list[str]
    files: list[FileEntry]
    ignored: dict[str, int] = field(default_factory=dict)


# --- listing -----------------------------------------------------------------------


_NAME = attrgetter("name")


def _count(ignored: dict[str, int], what: str) -> None:
    ignored[what] = ignored.get(what, 0) + 1


def _walk(folder: Path, rel: str, depth: int, ignored: dict[str, int], found: list) -> None:
    """Image files under ``folder`` as (rel, size, mtime_ns), sorted; links never followed."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=_NAME)
    except OSError as exc:
        raise SvmtoolError(f"cannot list {folder}: {exc.strerror or exc}") from None
    append = found.append
    # This loop is the second run's cost (one lstat per file): the common case first.
    for entry in entries:
        name = entry.name
        if name[0] == ".":
            _count(ignored, "hidden")
        elif entry.is_file(follow_symlinks=False):  # a link is never a file here
            if not name.lower().endswith(IMAGE_SUFFIXES):
                _count(ignored, "not PNG/JPEG")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:  # gone (or unreadable) since the listing
                _count(ignored, "vanished")
                continue
            append((rel + name, st.st_size, st.st_mtime_ns))
        elif entry.is_symlink():
            _count(ignored, "links")
        elif entry.is_dir(follow_symlinks=False):
            if depth >= MAX_DEPTH:
                raise SvmtoolError(f"{folder / name}: folders nested deeper than {MAX_DEPTH}")
            _walk(folder / name, f"{rel}{name}/", depth + 1, ignored, found)
        else:
            _count(ignored, "special files")
    if len(found) > MAX_FILES:
        raise SvmtoolError(f"{folder}: more than {MAX_FILES:,} image files")


def _class_folders(folder: Path, ignored: dict[str, int]) -> list[str]:
    """Sorted names of the real (not hidden, not linked) subfolders; other entries counted."""
    names = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise SvmtoolError(f"cannot list {folder}: {exc.strerror or exc}") from None
    for entry in entries:
        if entry.name.startswith("."):
            _count(ignored, "hidden")
        elif entry.is_symlink():
            _count(ignored, "links")
        elif entry.is_dir(follow_symlinks=False):
            names.append(entry.name)
        else:
            _count(ignored, "outside class folders")
    return names


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def scan(root: Path) -> Scan:
    """List ``root``: its layout, class names (sorted subfolder names) and image files."""
    root = Path(root)
    if not root.is_dir():
        raise SvmtoolError(f"--data {root} is not a folder")
    ignored: dict[str, int] = {}
    files: list[FileEntry] = []
    if _is_real_dir(root / "train") and _is_real_dir(root / "test"):
        layout = "train-test"
        top: dict[str, int] = {}
        others = [n for n in _class_folders(root, top) if n not in ("train", "test")]
        for what, n in top.items():
            ignored[what] = ignored.get(what, 0) + n
        if others:
            ignored["outside train/ and test/"] = len(others)
        classes = _class_folders(root / "train", ignored)
        test_classes = _class_folders(root / "test", ignored)
        unknown = [n for n in test_classes if n not in classes]
        if unknown:
            raise SvmtoolError(
                f"{root}/test has class folders that {root}/train lacks: "
                + ", ".join(repr(n) for n in unknown[:5])
            )
        parts = [("train", classes), ("test", test_classes)]
    else:
        layout = "flat"
        classes = _class_folders(root, ignored)
        parts = [("all", classes)]
    index = {name: k for k, name in enumerate(classes)}
    for part, names in parts:
        base = root if part == "all" else root / part
        prefix = "" if part == "all" else f"{part}/"
        for name in names:
            found: list = []
            _walk(base / name, f"{prefix}{name}/", 1, ignored, found)
            label = index[name]
            files.extend([FileEntry(rel, part, label, size, mt) for rel, size, mt in found])
    if len(classes) < 2:
        where = f"{root}/train" if layout == "train-test" else str(root)
        raise SvmtoolError(
            f"{where} needs a subfolder per class (at least 2: CLASS/*.png), found {len(classes)}"
        )
    if not files:
        raise SvmtoolError(f"{root} holds no .png, .jpg or .jpeg file in its class folders")
    return Scan(root, layout, classes, files, ignored)
