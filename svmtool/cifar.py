"""CIFAR-10: the dataset's facts, its two archive formats, and the uint8 cache."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svmtool.data import Dataset
from svmtool.download import ProgressFn, fetch, safe_extract, verify_md5
from svmtool.errors import DataNotFound, SvmtoolError


@dataclass(frozen=True)
class Archive:
    """One official CIFAR-10 archive."""

    format: str
    url: str
    md5: str
    size: int
    filename: str
    folder: str


ARCHIVES = {
    "binary": Archive(
        "binary",
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
        170_052_171,
        "cifar-10-binary.tar.gz",
        "cifar-10-batches-bin",
    ),
    "python": Archive(
        "python",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        170_498_071,
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
    ),
}
CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SHAPE = (32, 32, 3)
RECORD_BYTES = 1 + 32 * 32 * 3  # binary format: label byte, then R, G, B planes
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
CACHE_DIRNAME = "cifar-10-cache"
CACHE_FILES = ("train_images", "train_labels", "test_images", "test_labels")
CACHE_VERSION = 1


# --- the binary format -----------------------------------------------------


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise SvmtoolError(
            f"truncated or malformed batch {path}: {raw.size} bytes is not a whole"
            f" number of {RECORD_BYTES}-byte records"
        )
    records = raw.reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASS_NAMES):
        raise SvmtoolError(f"malformed batch {path}: label {labels.max()} is not in 0..9")
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _binary_class_names(folder: Path) -> list[str]:
    meta = folder / "batches.meta.txt"
    if not meta.exists():
        return list(CLASS_NAMES)
    names = [line.strip() for line in meta.read_text(errors="replace").splitlines()]
    names = [n for n in names if n]
    return names if len(names) == len(CLASS_NAMES) else list(CLASS_NAMES)


# --- the python format: pickles, read without running code -----------------


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for something other than what CIFAR batches hold."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches and nothing else: only the globals those files
    need are resolved, so a tampered file cannot run code."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            # Python 3 writes bytes this way at pickle protocols < 3: a pure function.
            import codecs

            return codecs.encode
        raise ForbiddenGlobal(f"forbidden global {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="bytes").load()
    except ForbiddenGlobal as exc:
        raise SvmtoolError(f"refusing to load {path}: {exc}") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as exc:
        raise SvmtoolError(f"truncated or malformed batch {path}: {exc}") from None
    if not isinstance(obj, dict):
        raise SvmtoolError(f"malformed batch {path}: expected a dict, got {type(obj).__name__}")
    # Python 2 str keys arrive as bytes; accept str keys too.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise SvmtoolError(f"malformed batch {path}: no 'data' array or no 'labels'")
    labels = np.asarray(labels, dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise SvmtoolError(f"malformed batch {path}: data is {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise SvmtoolError(f"malformed batch {path}: {labels.size} labels, {len(data)} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise SvmtoolError(f"malformed batch {path}: labels outside 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _python_class_names(folder: Path) -> list[str]:
    meta = folder / "batches.meta"
    if not meta.exists():
        return list(CLASS_NAMES)
    names = _unpickle(meta).get("label_names")
    if not isinstance(names, list) or len(names) != len(CLASS_NAMES):
        return list(CLASS_NAMES)
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]


# --- extracted folders -------------------------------------------------------


def batch_folder_format(folder: Path) -> str | None:
    """'binary' or 'python' if ``folder`` holds extracted CIFAR-10 batches."""
    if any((folder / f"{b}.bin").exists() for b in [*TRAIN_BATCHES, TEST_BATCH]):
        return "binary"
    if any((folder / b).exists() for b in [*TRAIN_BATCHES, TEST_BATCH]):
        return "python"
    return None


def read_batches(folder: Path) -> Dataset:
    """Read whatever batches an extracted folder holds (binary or python format)."""
    fmt = batch_folder_format(folder)
    if fmt is None:
        raise SvmtoolError(f"no CIFAR-10 batches in {folder}")
    suffix, read, names = (
        (".bin", _read_binary_batch, _binary_class_names)
        if fmt == "binary"
        else ("", _read_python_batch, _python_class_names)
    )
    train = [read(folder / (b + suffix)) for b in TRAIN_BATCHES if (folder / (b + suffix)).exists()]
    if not train:
        raise SvmtoolError(f"no training batches (data_batch_1..5) in {folder}")
    test_path = folder / (TEST_BATCH + suffix)
    if test_path.exists():
        test_images, test_labels = read(test_path)
    else:
        test_images = np.zeros((0, *IMAGE_SHAPE), np.uint8)
        test_labels = np.zeros(0, np.int64)
    return Dataset(
        train_images=np.concatenate([t[0] for t in train]),
        train_labels=np.concatenate([t[1] for t in train]),
        test_images=test_images,
        test_labels=test_labels,
        class_names=names(folder),
        source="cifar10",
    )


# --- the uint8 cache ---------------------------------------------------------


def cache_dir(data_dir: Path) -> Path:
    return data_dir / CACHE_DIRNAME


def write_cache(dataset: Dataset, data_dir: Path) -> Path:
    """Write the dataset as .npy files plus meta.json, built in a temporary
    folder and renamed into place, so a killed process never leaves a cache
    that looks complete."""
    final = cache_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_DIRNAME}.", dir=data_dir))
    try:
        # mkdtemp makes the folder private (0700); the cache is ordinary data.
        tmp.chmod(0o755)
        arrays = {
            "train_images": dataset.train_images,
            "train_labels": dataset.train_labels,
            "test_images": dataset.test_images,
            "test_labels": dataset.test_labels,
        }
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        meta = {
            "version": CACHE_VERSION,
            "class_names": list(dataset.class_names),
            "shapes": {name: list(a.shape) for name, a in arrays.items()},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def cache_state(data_dir: Path) -> str:
    """'ok', 'missing', or a sentence saying why the cache cannot be used."""
    folder = cache_dir(data_dir)
    if not folder.exists():
        return "missing"
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION:
            return "its format version is not this svmtool's"
        for name in CACHE_FILES:
            array = np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            if list(array.shape) != meta["shapes"][name]:
                return f"{name}.npy has shape {array.shape}, not {meta['shapes'][name]}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"it is incomplete or damaged ({type(exc).__name__}: {exc})"
    return "ok"


def read_cache(data_dir: Path) -> Dataset:
    """Memory-map the cache (loads in milliseconds)."""
    folder = cache_dir(data_dir)
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {
        name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
        for name in CACHE_FILES
    }
    return Dataset(**arrays, class_names=list(meta["class_names"]), source="cifar10")


def load(data_dir: Path) -> Dataset:
    """CIFAR-10 from ``data_dir``: its cache, or an extracted batches folder
    (``data_dir`` itself, or ``cifar-10-batches-bin``/``-py`` inside it)."""
    state = cache_state(data_dir)
    if state == "ok":
        return read_cache(data_dir)
    for folder in (data_dir, *(data_dir / a.folder for a in ARCHIVES.values())):
        if folder.is_dir() and batch_folder_format(folder):
            return read_batches(folder)
    if state != "missing":
        raise SvmtoolError(
            f"the CIFAR-10 cache in {data_dir} cannot be used: {state};"
            f" run: svmtool download --force --data-dir {data_dir}"
        )
    raise DataNotFound(
        f"CIFAR-10 is not in {data_dir}; run: svmtool download --data-dir {data_dir}"
    )


def install_archive(archive: Path, data_dir: Path, fmt: str) -> Path:
    """Extract a verified archive into a scratch folder, convert it into the
    cache, and remove the scratch folder. Returns the cache folder."""
    scratch = Path(tempfile.mkdtemp(prefix=".extract.", dir=data_dir))
    try:
        safe_extract(archive, scratch)
        folder = scratch / ARCHIVES[fmt].folder
        if not (folder.is_dir() and batch_folder_format(folder)):
            found = [p for p in scratch.rglob("*") if p.is_dir() and batch_folder_format(p)]
            if not found:
                raise SvmtoolError(f"{archive.name} holds no CIFAR-10 batches")
            folder = found[0]
        return write_cache(read_batches(folder), data_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class DownloadResult:
    cache: Path
    train_count: int
    test_count: int
    already: bool = False
    archive_kept: Path | None = None


def download(
    data_dir: Path,
    fmt: str = "binary",
    url: str | None = None,
    md5: str | None = None,
    from_file: Path | None = None,
    force: bool = False,
    keep_archive: bool = False,
    progress: ProgressFn | None = None,
) -> DownloadResult:
    """Fetch (or import) a CIFAR-10 archive, verify it, and build the cache.

    Nothing unverified is extracted; the archive is removed afterwards unless
    ``keep_archive`` (an imported ``from_file`` is never removed).
    """
    if fmt not in ARCHIVES:
        raise SvmtoolError(f"format must be binary or python, got {fmt!r}")
    if md5 is not None and (
        len(md5) != 32 or any(ch not in "0123456789abcdefABCDEF" for ch in md5)
    ):
        raise SvmtoolError(f"md5 must be 32 hexadecimal digits, got {md5!r}")
    expected = (md5 or ARCHIVES[fmt].md5).lower()
    if data_dir.exists() and not data_dir.is_dir():
        raise SvmtoolError(f"--data-dir {data_dir} exists and is not a folder")
    data_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(data_dir):
        return _download_locked(
            data_dir, fmt, url, expected, from_file, force, keep_archive, progress
        )


SCRATCH_PREFIXES = (".extract.", f".{CACHE_DIRNAME}.")
LOCK_NAME = ".svmtool-download.lock"


@contextlib.contextmanager
def _exclusive(data_dir: Path):
    """Hold a lock on ``data_dir`` for one download at a time, and clear the
    scratch folders a killed run left behind (no other run can own them)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, and leftovers are left alone
        yield
        return
    with open(data_dir / LOCK_NAME, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SvmtoolError(f"another svmtool download is running in {data_dir}") from None
        for leftover in data_dir.iterdir():
            if leftover.is_dir() and leftover.name.startswith(SCRATCH_PREFIXES):
                shutil.rmtree(leftover, ignore_errors=True)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download_locked(
    data_dir: Path,
    fmt: str,
    url: str | None,
    expected: str,
    from_file: Path | None,
    force: bool,
    keep_archive: bool,
    progress: ProgressFn | None,
) -> DownloadResult:
    spec = ARCHIVES[fmt]
    if not force and cache_state(data_dir) == "ok":
        meta = read_cache(data_dir)
        return DownloadResult(
            cache_dir(data_dir), len(meta.train_labels), len(meta.test_labels), already=True
        )
    archive = data_dir / spec.filename
    if from_file is not None:
        if not from_file.is_file():
            raise SvmtoolError(f"--from-file {from_file}: no such file")
        verify_md5(from_file, expected, delete=False)
        source = from_file
    else:
        if force:
            archive.unlink(missing_ok=True)
            archive.with_name(archive.name + ".part").unlink(missing_ok=True)
        if archive.exists():
            # An archive kept from an earlier run: reused only if it verifies
            # (a bad one is deleted and fetched again).
            with contextlib.suppress(SvmtoolError):
                verify_md5(archive, expected)
        if not archive.exists():
            fetch(url or spec.url, archive, expected, progress)
        source = archive
    folder = install_archive(source, data_dir, fmt)
    kept = None
    if from_file is None:
        if keep_archive:
            kept = archive
        else:
            archive.unlink(missing_ok=True)
    dataset = read_cache(data_dir)
    return DownloadResult(folder, len(dataset.train_labels), len(dataset.test_labels), False, kept)
