"""CIFAR-10: the dataset's facts, its two archive formats, and the uint8 cache."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svmtool.errors import BadValue, DataNotFound, SvmtoolError, check_choice
from svmtool.io.dataset import Dataset, class_names_problem
from svmtool.io.download import (
    ProgressFn,
    RetryFn,
    fetch,
    is_md5_text,
    md5_of,
    safe_extract,
    verify_md5,
)
from svmtool.io.files import (
    disk_error,
    is_regular_file,
    link_refusal,
    new_folder_mode,
    open_own,
    open_regular,
    remove_tree,
)
from svmtool.io.npzfile import map_npy
from svmtool.io.pickles import integer_labels, unpickle


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
# Bounds from the real archives: each extracts to 8 or 9 files of about 186 MB
# in all. Twice that, and a hundred members, is all an archive may claim.
MAX_EXTRACTED_BYTES = 400_000_000
MAX_MEMBERS = 100
MAX_META_BYTES = 1 << 16


# --- the binary format -----------------------------------------------------


def _read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open_regular(path, "batch") as f:
        raw = np.fromfile(f, dtype=np.uint8)
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
    with open_regular(meta, "batches.meta.txt") as f:
        text = f.read(MAX_META_BYTES).decode("utf-8", "replace")
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n]
    usable = len(names) == len(CLASS_NAMES) and class_names_problem(names) is None
    return names if usable else list(CLASS_NAMES)


# --- the python format: pickles, read without running code (io/pickles.py) --


def _read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = unpickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if labels is None:
        raise SvmtoolError(f"malformed batch {path}: no 'labels'")
    labels = integer_labels(labels, path)
    if not isinstance(data, np.ndarray):
        raise SvmtoolError(f"malformed batch {path}: no 'data' array")
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
    names = unpickle(meta).get("label_names")
    if (
        not isinstance(names, list)
        or len(names) != len(CLASS_NAMES)
        or not all(isinstance(n, bytes | str) for n in names)
    ):
        return list(CLASS_NAMES)
    names = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    return names if class_names_problem(names) is None else list(CLASS_NAMES)


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


def _save(path: Path, write) -> None:
    try:
        write()
    except OSError as exc:
        raise disk_error(exc, path) or exc from None


def write_cache(dataset: Dataset, data_dir: Path) -> Path:
    """Write the dataset as .npy files plus meta.json, built in a temporary
    folder and renamed into place, so a killed process never leaves a cache
    that looks complete. Whatever was at the cache's name (an old cache, a
    file, a link) is replaced, never written through."""
    final = cache_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CACHE_DIRNAME}.", dir=data_dir))
    old = None
    try:
        # mkdtemp makes the folder private (0700); the cache is ordinary data.
        tmp.chmod(new_folder_mode())
        arrays = {
            "train_images": dataset.train_images,
            "train_labels": dataset.train_labels,
            "test_images": dataset.test_images,
            "test_labels": dataset.test_labels,
        }
        for name, array in arrays.items():
            target = tmp / f"{name}.npy"
            _save(target, lambda t=target, a=array: np.save(t, np.ascontiguousarray(a)))
        meta = {
            "version": CACHE_VERSION,
            "class_names": list(dataset.class_names),
            "shapes": {name: list(a.shape) for name, a in arrays.items()},
        }
        meta_path = tmp / "meta.json"
        _save(meta_path, lambda: meta_path.write_text(json.dumps(meta, indent=1)))
        if os.path.lexists(final):
            if stat.S_ISDIR(os.lstat(final).st_mode):
                # Moved aside under a scratch name (cleared if we are killed now).
                old = Path(tempfile.mkdtemp(prefix=f".{CACHE_DIRNAME}.", dir=data_dir))
                os.replace(final, old)
            else:
                final.unlink()  # a file or a link where the cache goes
        os.replace(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise
    finally:
        if old is not None:
            remove_tree(old)
    return final


def _open_cache(data_dir: Path) -> Dataset | str:
    """The cache as a Dataset, or 'missing', or a sentence saying why it cannot be used."""
    folder = cache_dir(data_dir)
    if not os.path.lexists(folder):
        return "missing"
    if not folder.is_dir():
        return "it is not a folder"
    try:
        with open_regular(folder / "meta.json", "cache file", follow=False) as f:
            meta = json.loads(f.read(MAX_META_BYTES))
        if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
            return "its format version is not this svmtool's"
        names = meta.get("class_names")
        if not (
            isinstance(names, list)
            and len(names) == len(CLASS_NAMES)
            and all(isinstance(n, str) for n in names)
        ):
            return "its meta.json lacks the ten class names"
        if class_names_problem(names):
            return f"its meta.json's class names {class_names_problem(names)}"
        arrays = {name: map_npy(folder / f"{name}.npy", "cache file") for name in CACHE_FILES}
        for name, array in arrays.items():
            if list(array.shape) != meta["shapes"][name]:
                return f"{name}.npy has shape {array.shape}, not {meta['shapes'][name]}"
        for part in ("train", "test"):
            images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
            if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
                return f"{part}_images.npy is {images.dtype} {images.shape}, not uint8 images"
            if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
                return f"{part}_labels.npy is {labels.dtype} {labels.shape}, not one per image"
            if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
                return (
                    f"{part}_labels.npy holds labels from {labels.min()} to {labels.max()},"
                    f" outside 0..{len(names) - 1}"
                )
    except SvmtoolError as exc:
        return f"it is damaged ({exc})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return f"it is incomplete or damaged ({type(exc).__name__}: {exc})"
    return Dataset(**arrays, class_names=list(names), source="cifar10")


def _unusable(data_dir: Path, reason: str) -> SvmtoolError:
    return SvmtoolError(
        f"the CIFAR-10 cache in {data_dir} cannot be used: {reason};"
        f" run: svmtool download --force --data-dir {data_dir}"
    )


def cache_state(data_dir: Path) -> str:
    """'ok', 'missing', or a sentence saying why the cache cannot be used."""
    opened = _open_cache(data_dir)
    return opened if isinstance(opened, str) else "ok"


def read_cache(data_dir: Path) -> Dataset:
    """Memory-map the cache (loads in milliseconds), every file checked."""
    opened = _open_cache(data_dir)
    if isinstance(opened, str):
        raise _unusable(data_dir, opened)
    return opened


def load(data_dir: Path) -> Dataset:
    """CIFAR-10 from ``data_dir``: its cache, or an extracted batches folder
    (``data_dir`` itself, or ``cifar-10-batches-bin``/``-py`` inside it).

    Scratch folders an interrupted run left in ``data_dir`` are cleared first.
    """
    clear_scratch(data_dir)
    opened = _open_cache(data_dir)
    if not isinstance(opened, str):
        return opened
    for folder in (data_dir, *(data_dir / a.folder for a in ARCHIVES.values())):
        if folder.is_dir() and batch_folder_format(folder):
            return read_batches(folder)
    if opened != "missing":
        raise _unusable(data_dir, opened)
    raise DataNotFound(
        f"CIFAR-10 is not in {data_dir}; run: svmtool download --data-dir {data_dir}"
    )


def install_archive(archive: Path, data_dir: Path, fmt: str) -> Path:
    """Extract a verified archive into a scratch folder, convert it into the
    cache, and remove the scratch folder. Returns the cache folder."""
    scratch = Path(tempfile.mkdtemp(prefix=".extract.", dir=data_dir))
    try:
        safe_extract(archive, scratch, MAX_EXTRACTED_BYTES, MAX_MEMBERS)
        folder = scratch / ARCHIVES[fmt].folder
        if not (folder.is_dir() and batch_folder_format(folder)):
            found = [p for p in scratch.rglob("*") if p.is_dir() and batch_folder_format(p)]
            if not found:
                raise SvmtoolError(f"{archive.name} holds no CIFAR-10 batches")
            folder = found[0]
        return write_cache(read_batches(folder), data_dir)
    finally:
        remove_tree(scratch)


@dataclass
class DownloadResult:
    cache: Path
    train_count: int
    test_count: int
    already: bool = False
    archive_kept: Path | None = None
    note: str | None = None


def download(
    data_dir: Path,
    fmt: str = "binary",
    url: str | None = None,
    md5: str | None = None,
    from_file: Path | None = None,
    force: bool = False,
    keep_archive: bool = False,
    progress: ProgressFn | None = None,
    on_retry: RetryFn | None = None,
) -> DownloadResult:
    """Fetch (or import) a CIFAR-10 archive, verify it, and build the cache.

    Nothing unverified is extracted; the archive is removed afterwards unless
    ``keep_archive`` (an imported ``from_file`` is never removed). Without
    ``md5``, either official archive is recognised by its checksum and used.
    A failed run removes the folders it created.
    """
    check_choice("--format", fmt, ARCHIVES, "binary or python")
    if md5 is not None and not is_md5_text(md5):
        raise BadValue("--md5", f"must be 32 hexadecimal digits, got {md5!r}")
    return locked_download(
        data_dir,
        from_file,
        "no such file",
        lambda: _download_locked(
            data_dir, fmt, url, md5, from_file, force, keep_archive, progress, on_retry
        ),
    )


def locked_download(data_dir: Path, from_file: Path | None, missing: str, job):
    """Run ``job()`` holding ``data_dir``'s download lock (cifar's and named's
    downloads both): the folder and --from-file are checked first (``missing``
    says what is absent), and a failed run removes the folders it created."""
    if data_dir.exists() and not data_dir.is_dir():
        raise SvmtoolError(f"--data-dir {data_dir} exists and is not a folder")
    if from_file is not None and not os.path.exists(from_file):
        raise SvmtoolError(f"--from-file {from_file}: {missing}")
    created = _missing_folders(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(data_dir):
            return job()
    except BaseException:
        _remove_created(created, data_dir)
        raise


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if os.path.lexists(folder):
            break
        missing.append(folder)
    return missing


def _remove_created(created: list[Path], data_dir: Path) -> None:
    """Remove the folders a failed run created, if nothing but its lock is in
    them (a partial download stays, to be resumed)."""
    if not created:
        return
    with contextlib.suppress(OSError):
        (data_dir / LOCK_NAME).unlink()
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            return


SCRATCH_PREFIXES = (".extract.", f".{CACHE_DIRNAME}.")
LOCK_NAME = ".svmtool-download.lock"


def _scratch_leftovers(data_dir: Path) -> list[Path]:
    try:
        with os.scandir(data_dir) as entries:
            return [
                Path(e.path)
                for e in entries
                if e.name.startswith(SCRATCH_PREFIXES) and e.is_dir(follow_symlinks=False)
            ]
    except OSError:
        return []


def clear_scratch(data_dir: Path) -> None:
    """Remove scratch folders an interrupted run left in ``data_dir``, unless a
    download holds the folder's lock (then they are its own, not stale)."""
    if not _scratch_leftovers(data_dir):
        return
    # Best effort: a running download, a read-only folder or a planted lock
    # link leaves them for the next run; none of these stops this command.
    with contextlib.suppress(SvmtoolError, OSError), _exclusive(data_dir):
        pass


@contextlib.contextmanager
def _exclusive(data_dir: Path):
    """Hold a lock on ``data_dir`` for one download at a time, and clear the
    scratch folders a killed run left behind (no other run can own them).
    The lock file is opened without truncating and never through a link."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, and leftovers are left alone
        yield
        return
    with open_own(data_dir / LOCK_NAME) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SvmtoolError(f"another svmtool download is running in {data_dir}") from None
        for leftover in _scratch_leftovers(data_dir):
            remove_tree(leftover)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def refuse_non_archive(path: Path, trusted: bool = False) -> None:
    """Say what ``path`` is when it is not a CIFAR-10 .tar.gz at all (an .npz, a
    zip, a text file), before its checksum is taken. Reads the first tar header only.
    ``trusted`` (the user gave its --md5): any .tar.gz goes on to extraction's checks."""
    import tarfile
    import zlib

    with open_regular(path, "archive") as f:
        magic = f.read(4)
        f.seek(0)
        first = None
        if magic[:2] == b"\x1f\x8b":
            with (
                contextlib.suppress(tarfile.TarError, OSError, EOFError, zlib.error),
                tarfile.open(fileobj=f, mode="r|gz") as tar,
            ):
                member = tar.next()
                first = member.name if member is not None else None
    if first is not None and ("cifar-10-batches" in first or trusted):
        return
    if magic == b"PK\x03\x04" and path.suffix.lower() == ".npz":
        raise SvmtoolError(f"{path} is not a CIFAR-10 archive; train with --data {path}")
    what = (
        f"a .tar.gz whose first entry is {first!r}"
        if first is not None
        else ("a zip file" if magic == b"PK\x03\x04" else "not a .tar.gz")
    )
    raise SvmtoolError(
        f"{path} is not a CIFAR-10 archive ({what}); download accepts"
        " cifar-10-binary.tar.gz or cifar-10-python.tar.gz"
    )


def _download_locked(
    data_dir: Path,
    fmt: str,
    url: str | None,
    md5: str | None,
    from_file: Path | None,
    force: bool,
    keep_archive: bool,
    progress: ProgressFn | None,
    on_retry: RetryFn | None,
) -> DownloadResult:
    spec = ARCHIVES[fmt]
    if not force:
        opened = _open_cache(data_dir)
        if not isinstance(opened, str):
            return DownloadResult(
                cache_dir(data_dir), len(opened.train_labels), len(opened.test_labels), True
            )
    # Which checksums are accepted, and the format each means: the one given,
    # else either official archive (the asked-for format first).
    if md5 is not None:
        accepted = {md5.lower(): fmt}
    else:
        accepted = {spec.md5: fmt} | {a.md5: a.format for a in ARCHIVES.values()}
    archive = data_dir / spec.filename
    if from_file is not None:
        refuse_non_archive(from_file, trusted=md5 is not None)
        got = md5_of(from_file)
        if got not in accepted:
            raise SvmtoolError(
                f"checksum mismatch for {from_file}: expected md5 {' or '.join(accepted)}, got"
                f" {got}; it is not an official CIFAR-10 archive: if you trust it (a copy"
                f" repacked by a course, say), pass --md5 {got} to use it"
            )
        source = from_file
    else:
        part = archive.with_name(archive.name + ".part")
        if force:
            archive.unlink(missing_ok=True)
            part.unlink(missing_ok=True)
        if os.path.lexists(archive):
            if not is_regular_file(archive):
                raise link_refusal(archive)
            # An archive kept from an earlier run: reused only if it verifies
            # (a bad one is deleted and fetched again).
            with contextlib.suppress(SvmtoolError):
                got = verify_md5(archive, accepted)
        if not os.path.lexists(archive):
            # With an official checksum in force the size is known too, and bounds the body.
            limit = None if md5 is not None else max(a.size for a in ARCHIVES.values())
            got = fetch(
                url or spec.url, archive, accepted, progress, on_retry=on_retry, max_size=limit
            )
        source = archive
    found = accepted[got]
    note = None
    if found != fmt:
        note = f"{source.name} is the official {found}-format archive; using it"
    folder = install_archive(source, data_dir, found)
    kept = None
    if from_file is None:
        if keep_archive:
            kept = archive
        else:
            archive.unlink(missing_ok=True)
    dataset = read_cache(data_dir)
    return DownloadResult(
        folder, len(dataset.train_labels), len(dataset.test_labels), False, kept, note
    )
