"""The on-disk feature cache: fitted pipelines and extracted features, by content.

An entry is a folder ``<root>/<digest>/`` holding ``meta.json`` and one ``.npy``
per array. The digest is a hash of the key: what was computed, a fingerprint
of the images' bytes, the feature settings, the cache format and svmtool's
version, so a changed setting or changed data can only miss, never return
stale features.
Entries are built in a scratch folder and renamed into place, and every read
checks the key and each array's shape and dtype against meta.json.

The cache lives in the user's cache folder (``$SVMTOOL_CACHE_DIR``, else the
platform's, e.g. ~/.cache/svmtool/features), never in a dataset's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svmtool import __version__
from svmtool.errors import SvmtoolError
from svmtool.io.files import disk_error, new_folder_mode
from svmtool.io.npzfile import map_npy

CACHE_FORMAT = 1
CACHE_DIR_ENV = "SVMTOOL_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$SVMTOOL_CACHE_DIR``, else the platform's user cache folder + ``features``."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("svmtool")) / "features"


def fingerprint(images: np.ndarray, rows: np.ndarray | None = None, chunk: int = 4096) -> str:
    """A content hash of images[rows] (all if None): shape, dtype and bytes."""
    h = hashlib.blake2b(digest_size=20)
    index = np.arange(images.shape[0]) if rows is None else np.asarray(rows)
    h.update(json.dumps([int(index.size), list(images.shape[1:]), str(images.dtype)]).encode())
    for s in range(0, index.size, chunk):
        part = index[s : s + chunk]
        # Contiguous row ranges are hashed without a gather copy.
        if part.size and part[-1] - part[0] == part.size - 1 and (np.diff(part) == 1).all():
            block = images[part[0] : part[-1] + 1]
        else:
            block = images[part]
        h.update(np.ascontiguousarray(block).data)
    return h.hexdigest()


def array_digest(arrays: dict[str, np.ndarray]) -> str:
    """A hash of named arrays (a fitted pipeline), for keys that depend on them."""
    h = hashlib.blake2b(digest_size=20)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, list(a.shape), str(a.dtype)]).encode())
        h.update(a.data)
    return h.hexdigest()


def _digest(key: dict) -> str:
    # The version too: a later svmtool may compute the same settings differently.
    text = json.dumps({"cache_format": CACHE_FORMAT, "svmtool": __version__, **key}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class FeatureCache:
    """Entries under ``root`` (created on the first write)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: dict) -> Path:
        return self.root / _digest(key)

    def load(self, key: dict) -> dict[str, np.ndarray] | None:
        """The entry's arrays (memory-mapped), or None if it is missing or does not
        check out (a damaged entry is a miss; the next store replaces it)."""
        folder = self.path(key)
        if not folder.is_dir() or folder.is_symlink():
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("cache_format") != CACHE_FORMAT or meta.get("key") != json.loads(
                json.dumps(key)
            ):
                return None
            arrays = {}
            for name, (shape, dtype) in meta["arrays"].items():
                # Never through a link, never a FIFO, the header checked against the size.
                a = map_npy(folder / f"{name}.npy", "feature cache file")
                if list(a.shape) != shape or str(a.dtype) != dtype:
                    return None
                arrays[name] = a
            return arrays
        except (
            OSError,
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,
            SvmtoolError,
        ):
            return None

    def store(self, key: dict, arrays: dict[str, np.ndarray], about: str = "") -> Path:
        """Write an entry atomically: a scratch folder renamed into place. ``about``
        says what it is, for ``svmtool cache list``."""
        final = self.path(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        try:
            tmp.chmod(new_folder_mode())  # mkdtemp's 0700, made what the umask gives
            for name, a in arrays.items():
                target = tmp / f"{name}.npy"
                try:
                    np.save(target, np.ascontiguousarray(a), allow_pickle=False)
                except OSError as exc:
                    raise disk_error(exc, target) or exc from None
            meta = {
                "cache_format": CACHE_FORMAT,
                "key": key,
                "arrays": {n: [list(a.shape), str(np.asarray(a).dtype)] for n, a in arrays.items()},
                "about": about,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if final.is_symlink() or final.is_file():
                final.unlink()
            elif final.is_dir():
                shutil.rmtree(final)  # a damaged entry (load said no)
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another run stored it first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final


# --- listing and clearing: only our own entries, never through a link ---------------

_ENTRY = re.compile(r"[0-9a-f]{32}")
_SCRATCH = re.compile(r"\.[0-9a-f]{32}\..+")  # a store that never finished
MAX_META_BYTES = 1 << 20


@dataclass
class Entry:
    """One entry of the cache: its folder, bytes on disk, seconds since it was
    stored, and what it is (from its meta.json; outside text, print it literally)."""

    path: Path
    bytes: int
    age_seconds: float
    about: str


def _folder_bytes(folder: Path) -> int:
    # Entries are flat: their own regular files, links counted as links.
    total = 0
    with os.scandir(folder) as listing:
        for item in listing:
            total += item.stat(follow_symlinks=False).st_size
    return total


def _about(folder: Path) -> str | None:
    """What the entry says it is, or None if its meta.json is not one of ours."""
    meta_path = folder / "meta.json"
    try:
        info = os.lstat(meta_path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_META_BYTES:
            return None
        meta = json.loads(meta_path.read_text(encoding="utf-8", errors="replace"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(meta, dict) or meta.get("cache_format") != CACHE_FORMAT:
        return None
    about = meta.get("about")
    if isinstance(about, str) and about:
        return about
    key = meta.get("key") if isinstance(meta.get("key"), dict) else {}
    parts = [str(key.get(k)) for k in ("what", "kind") if isinstance(key.get(k), str)]
    return " ".join(parts) or "an entry"


def entries(root: Path, now: float | None = None) -> list[Entry]:
    """The cache's entries (and unfinished ones) under ``root``, oldest first.
    Anything else there (a link, a file, a folder of another name or without our
    meta.json) is not ours and is not listed."""
    now = time.time() if now is None else now
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        finished = bool(_ENTRY.fullmatch(child.name))
        if not (finished or _SCRATCH.fullmatch(child.name)):
            continue
        try:
            info = os.lstat(child)
            if not stat.S_ISDIR(info.st_mode):
                continue  # a link or a file: never followed, never ours
            about = _about(child) if finished else "an unfinished entry (an interrupted run)"
            if about is None:
                continue
            meta = child / "meta.json"
            stamp = os.lstat(meta).st_mtime if finished else info.st_mtime
            found.append(Entry(child, _folder_bytes(child), max(now - stamp, 0.0), about))
        except OSError:
            continue
    return sorted(found, key=lambda e: -e.age_seconds)


def remove(entry: Entry) -> None:
    """Delete one entry. rmtree removes a link inside as a link, never what it
    points to; the entry itself was checked to be a real folder."""
    if os.path.islink(entry.path) or not entry.path.is_dir():
        return
    shutil.rmtree(entry.path)
