"""The on-disk feature cache: fitted pipelines and extracted features, by content.

An entry is a folder ``<root>/<digest>/`` holding ``meta.json`` and one ``.npy``
per array. The digest is a hash of the key: what was computed, a fingerprint
of the images' bytes, the feature settings, the cache format and svmtool's
version, so a changed setting or changed data can only miss, never return
stale features.

Everything read back is untrusted: the entry must be a real folder, its files
regular files (never a link, never a FIFO), ``meta.json`` small, well typed and
naming exactly the arrays the caller expects, and every array exactly the
shape and dtype the key implies (not only what meta.json says), with no NaN or
infinity. Anything else is a miss, and the next store replaces the entry.

The cache lives in the user's cache folder (``$SVMTOOL_CACHE_DIR``, else the
platform's, e.g. ~/.cache/svmtool/features), never in a dataset's folder.

Entries are built in a scratch folder (``.<digest>.XXXX``) and renamed into
place. A store holds a shared lock on ``<root>/.lock``; scratch folders are
cleared only under the exclusive lock, so a SIGKILLed run's scratch goes and a
running store's stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svmtool import __version__
from svmtool.errors import SvmtoolError
from svmtool.io.files import new_folder_mode, open_own, open_regular, remove_tree
from svmtool.io.npzfile import map_npy

CACHE_FORMAT = 1
CACHE_DIR_ENV = "SVMTOOL_CACHE_DIR"
LOCK_NAME = ".lock"
MAX_META_BYTES = 1 << 20  # a key and a few shapes: a few kB
# Scratch folders: ".<32 hex digits of an entry>.<mkdtemp suffix>".
_SCRATCH = re.compile(r"\.[0-9a-f]{32}\..+")
_LOCK_WAIT_SECONDS = 30.0

Expected = dict[str, tuple[tuple[int, ...], np.dtype | type]]
"""What an entry must hold: array name -> (shape, dtype)."""


class CacheNotWritten(SvmtoolError):
    """The cache could not take an entry; the caller goes on without it."""


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


def all_finite(array: np.ndarray, chunk_bytes: int = 1 << 24) -> bool:
    """No NaN or infinity in ``array``, checked in blocks of rows (a memory-mapped
    array is never copied whole)."""
    if array.ndim == 0 or array.shape[0] == 0:
        return bool(np.isfinite(array).all())
    row_bytes = max(1, array[0].nbytes)
    step = max(1, chunk_bytes // row_bytes)
    return all(np.isfinite(array[s : s + step]).all() for s in range(0, array.shape[0], step))


def _meta_problem(meta, key: dict, expected: Expected) -> str | None:
    """What is wrong with a parsed meta.json (None: the right format, this key,
    exactly the expected arrays)."""
    if not isinstance(meta, dict):
        return "meta.json is not a JSON object"
    version = meta.get("cache_format")
    if type(version) is not int or version != CACHE_FORMAT:
        return f"meta.json has cache format {version!r:.20}, not {CACHE_FORMAT}"
    # Compared as canonical text: in Python True == 1 and 1 == 1.0.
    try:
        if json.dumps(meta.get("key"), sort_keys=True) != json.dumps(key, sort_keys=True):
            return "meta.json names another key"
    except (TypeError, ValueError):
        return "meta.json names another key"
    arrays = meta.get("arrays")
    if not isinstance(arrays, dict) or set(arrays) != set(expected):
        return f"meta.json does not list exactly the arrays {', '.join(sorted(expected))}"
    for name, (shape, dtype) in expected.items():
        want = [list(shape), str(np.dtype(dtype))]
        if arrays[name] != want:
            return f"meta.json says {name} is {arrays[name]!r:.60}, expected {want}"
    return None


class FeatureCache:
    """Entries under ``root`` (created on the first write)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: dict) -> Path:
        return self.root / _digest(key)

    def load(self, key: dict, expected: Expected) -> dict[str, np.ndarray] | None:
        """The entry's arrays (memory-mapped, read-only), or None if it is missing
        or does not check out against ``key`` and ``expected`` (a damaged entry is
        a miss, and ``self.damage`` then says why; the next store replaces it)."""
        self.clear_scratch()
        folder = self.path(key)
        self.damage: str | None = None
        if not os.path.lexists(folder):
            return None
        try:
            found = self._read_entry(folder, key, expected)
        except (OSError, ValueError, TypeError, RecursionError, SvmtoolError) as exc:
            found = (
                f"{type(exc).__name__}: {exc}" if not isinstance(exc, SvmtoolError) else str(exc)
            )
        if isinstance(found, str):
            self.damage = f"the feature cache entry {folder} is damaged ({found})"
            return None
        return found

    def _read_entry(self, folder: Path, key: dict, expected: Expected) -> dict | str:
        """The arrays, or what is wrong with the entry."""
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return "not a folder"  # a file, a link, a FIFO where the entry goes
        with open_regular(folder / "meta.json", "feature cache file", follow=False) as f:
            if os.fstat(f.fileno()).st_size > MAX_META_BYTES:
                return f"meta.json is larger than {MAX_META_BYTES} bytes"
            meta = json.loads(f.read(MAX_META_BYTES + 1))
        problem = _meta_problem(meta, key, expected)
        if problem:
            return problem
        arrays = {}
        for name, (shape, dtype) in expected.items():
            # Never through a link, never a FIFO, the header checked against the size.
            a = map_npy(folder / f"{name}.npy", "feature cache file")
            want = (tuple(shape), np.dtype(dtype))
            if (a.shape, a.dtype) != want:
                return f"{name}.npy is {a.dtype} {a.shape}, expected {want[1]} {want[0]}"
            if not all_finite(a):
                return f"{name}.npy holds NaN or infinite values"
            arrays[name] = a
        return arrays

    @contextlib.contextmanager
    def _lock(self, exclusive: bool, wait: float) -> Iterator[bool]:
        """Hold ``root/.lock`` (shared or exclusive); yields whether it was got
        within ``wait`` seconds. Without fcntl (not POSIX) nothing is locked and
        an exclusive lock is never got (so nothing is cleared)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover
            yield not exclusive
            return
        with open_own(self.root / LOCK_NAME) as lock:
            mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
            until = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(lock, mode)
                    break
                except BlockingIOError:
                    if time.monotonic() >= until:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def storing(self) -> Iterator[None]:
        """Held while an entry is written: its scratch folder is not stale."""
        with self._lock(exclusive=False, wait=_LOCK_WAIT_SECONDS) as got:
            if not got:
                raise CacheNotWritten(self._not_written("another run holds its lock"))
            yield

    def scratch_folders(self) -> list[Path]:
        """Scratch folders in the cache (a running store's, or a killed one's)."""
        try:
            with os.scandir(self.root) as items:
                return [
                    Path(e.path)
                    for e in items
                    if _SCRATCH.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
                ]
        except OSError:
            return []

    def clear_scratch(self) -> None:
        """Remove the scratch folders no running store owns (a SIGKILLed train's
        can be gigabytes). Best effort: a read-only cache, a store in progress or
        a planted lock link leaves them for a later run."""
        if not self.scratch_folders():
            return
        with contextlib.suppress(OSError, SvmtoolError), self._lock(True, 0.0) as got:
            if got:
                for folder in self.scratch_folders():
                    remove_tree(folder)

    def _not_written(self, why: str) -> str:
        return (
            f"the feature cache in {self.root} cannot be written ({why}); going on without"
            " it (--no-cache skips it)"
        )

    def store(self, key: dict, arrays: dict[str, np.ndarray], about: str = "") -> Path:
        """Write an entry atomically: a scratch folder renamed into place. ``about``
        says what it is, for ``svmtool cache list``.

        A cache that cannot take it (read-only, full, a planted link) raises
        ``CacheNotWritten`` with one line saying so; nothing is left behind.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.clear_scratch()
            with self.storing():
                return self._store_locked(key, arrays, about)
        except CacheNotWritten:
            raise
        except OSError as exc:
            raise CacheNotWritten(self._not_written(exc.strerror or str(exc))) from None
        except SvmtoolError as exc:
            raise CacheNotWritten(self._not_written(str(exc))) from None

    def _store_locked(self, key: dict, arrays: dict[str, np.ndarray], about: str = "") -> Path:
        final = self.path(key)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
        old = None
        try:
            tmp.chmod(new_folder_mode())  # mkdtemp's 0700, made what the umask gives
            for name, a in arrays.items():
                np.save(tmp / f"{name}.npy", np.ascontiguousarray(a), allow_pickle=False)
            meta = {
                "cache_format": CACHE_FORMAT,
                "key": key,
                "arrays": {n: [list(a.shape), str(np.asarray(a).dtype)] for n, a in arrays.items()},
                "about": about,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                st = os.lstat(final)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                # A damaged entry (load said no): moved aside under a scratch name,
                # so a kill from here on leaves only scratch.
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.root))
                os.replace(final, old)
            elif st is not None:
                final.unlink()  # a file, a link or a FIFO where the entry goes
            try:
                os.replace(tmp, final)
            except OSError:
                if not stat.S_ISDIR(os.lstat(final).st_mode):
                    raise
                remove_tree(tmp)  # another run stored it first
        except BaseException:
            remove_tree(tmp)
            raise
        finally:
            if old is not None:
                remove_tree(old)
        return final


# --- listing and clearing: only our own entries, never through a link ---------------

_ENTRY = re.compile(r"[0-9a-f]{32}")


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
    points to; the entry itself was checked to be a real folder. A scratch
    folder goes only under the cache's exclusive lock (a running store keeps its)."""
    if _SCRATCH.fullmatch(entry.path.name):
        FeatureCache(entry.path.parent).clear_scratch()
        return
    if os.path.islink(entry.path) or not entry.path.is_dir():
        return
    remove_tree(entry.path)
