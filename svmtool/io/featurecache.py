"""The on-disk feature cache: fitted pipelines and extracted features, by content.

An entry is a folder ``<root>/<digest>/`` holding ``meta.json`` and one ``.npy``
per array. The digest is a hash of the key: what was computed, a fingerprint
of the images' bytes, the feature settings, the cache format and svmtool's
version, so a changed setting or changed data can only miss, never return
stale features.
Entries are built in a scratch folder and renamed into place, and every read
checks the key and each array's shape and dtype against meta.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from svmtool import __version__
from svmtool.errors import SvmtoolError
from svmtool.io.files import disk_error, new_folder_mode
from svmtool.io.npzfile import map_npy

CACHE_FORMAT = 1
DIRNAME = "feature-cache"


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

    def store(self, key: dict, arrays: dict[str, np.ndarray]) -> Path:
        """Write an entry atomically: a scratch folder renamed into place."""
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
