"""An image folder as a dataset: ROOT/CLASS/*.png|jpg|jpeg, or ROOT/train/CLASS and
ROOT/test/CLASS (torchvision's ImageFolder and Keras' image_dataset_from_directory layout).

Every image is read by predict's reader (``images.read_image``: EXIF orientation,
16-bit, alpha over white, PNG and JPEG only, Pillow's pixel limit), in parallel
worker processes, and the result is cached as uint8 .npy files that load memory-mapped.

The cache. One entry per folder (by its absolute path) records, for every file, its
relative name, size, mtime_ns and a BLAKE2b digest of its bytes taken when the entry
was built (files.json), and one SHA-256 of all the (name, size, mtime_ns) triples
(meta.json). The next run lists the folder (one lstat per file, no file is opened)
and uses the entry when that digest matches. Otherwise files.json is compared file
by file: a file whose mtime changed but whose size did not is hashed again, and the
entry still serves if its digest is unchanged (a touched or copied file). Anything
else rebuilds the entry. What is not checked: a file rewritten
with the same size within the same mtime tick (as make, rsync and git's racy
check), and bit flips inside the cached pixel arrays (their headers, shapes and
labels are checked; a damaged entry is rebuilt, never trusted).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from svmtool.errors import BadValue, SvmtoolError
from svmtool.io.dataset import Dataset, content_order, stratified_sample
from svmtool.io.files import open_regular
from svmtool.io.imagescan import Scan, _is_real_dir, scan
from svmtool.io.npzfile import map_npy, physical_memory, write_npy_folder

CACHE_DIRNAME = "image-folder-cache"
CACHE_VERSION = 2  # 2: the (name, size, mtime_ns) digest in meta.json, files.json beside it
CACHE_FILES = ("train_images", "train_labels", "test_images", "test_labels")
DEFAULT_SIZE = (32, 32)
SMALL_SIDE = 64  # all images at most this wide and high: keep their most common size
MAX_SIDE = 1024
TEST_FRACTION = 0.2  # the test split of a folder without train/ and test/
TEST_SEED = 0  # fixed: the test split is the folder's, whatever --seed trains with
SHOWN_SKIPPED = 5
# Below this many files one process decodes them: starting workers costs more.
POOL_MIN_FILES = 256
CHUNK = 128

ProgressFn = Callable[[str, int, int], None]


def parse_image_size(text: str) -> tuple[int, int]:
    """'32' or 'WIDTHxHEIGHT' ('64x48') as (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    try:
        if len(parts) == 1:
            width = height = int(parts[0])
        elif len(parts) == 2:
            width, height = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise BadValue(
            "--image-size", f"must be N or WIDTHxHEIGHT (such as 32 or 64x48), got {text!r}"
        ) from None
    for name, value in (("width", width), ("height", height)):
        if not 1 <= value <= MAX_SIDE:
            raise BadValue("--image-size", f"{name} must be in 1..{MAX_SIDE}, got {value}")
    return height, width


# --- workers ------------------------------------------------------------------------


def _digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open_regular(path, "image", follow=False) as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _reason(exc: SvmtoolError, path: Path) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def probe_files(paths: list[str]) -> list[tuple]:
    """(height, width, gray) or ('error', reason) for each path (a worker's task)."""
    # Imported here: PIL takes ~30 ms to import, and `svmtool train` on CIFAR-10
    # reads this module (its option parsing) without decoding any image.
    from svmtool.io.images import probe_image

    out = []
    for p in paths:
        try:
            out.append(probe_image(Path(p), follow=False))
        except SvmtoolError as exc:
            out.append(("error", _reason(exc, Path(p))))
    return out


def decode_files(paths: list[str], shape: tuple[int, int, int]) -> list[tuple]:
    """(digest, pixel bytes) or ('error', reason) for each path (a worker's task)."""
    from svmtool.io.images import read_image

    out = []
    for p in paths:
        try:
            digest = _digest(Path(p))
            out.append((digest, read_image(Path(p), shape, follow=False).tobytes()))
        except SvmtoolError as exc:
            out.append(("error", _reason(exc, Path(p))))
    return out


def _quiet_worker() -> None:
    # Ctrl-C is the parent's to handle: workers just stop when it shuts the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _run(
    task: Callable,
    paths: list[str],
    extra: tuple,
    workers: int,
    stage: str,
    progress: ProgressFn | None,
) -> list[tuple]:
    """``task(chunk, *extra)`` over ``paths`` in chunks, in order, on ``workers`` processes."""
    chunks = [paths[i : i + CHUNK] for i in range(0, len(paths), CHUNK)]
    results: list[list[tuple] | None] = [None] * len(chunks)
    done = 0
    if progress:
        progress(stage, 0, len(paths))
    if workers <= 1 or len(paths) < POOL_MIN_FILES:
        for k, chunk in enumerate(chunks):
            results[k] = task(chunk, *extra)
            done += len(chunk)
            if progress:
                progress(stage, done, len(paths))
        return [r for chunk in results for r in chunk]  # type: ignore[union-attr]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_quiet_worker,
    )
    try:
        futures = {pool.submit(task, chunk, *extra): k for k, chunk in enumerate(chunks)}
        for future in as_completed(futures):
            k = futures[future]
            results[k] = future.result()
            done += len(chunks[k])
            if progress:
                progress(stage, done, len(paths))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [r for chunk in results for r in chunk]  # type: ignore[union-attr]


# --- the size ----------------------------------------------------------------------


def choose_shape(
    sizes: list[tuple[int, int]],
    grays: list[bool],
    image_size: tuple[int, int] | None,
    channels: int | None,
) -> tuple[tuple[int, int, int], str]:
    """(H, W, C) the images are read at, and a sentence saying why."""
    c = channels if channels is not None else (1 if all(grays) else 3)
    kind = "grayscale" if c == 1 else "RGB"
    if channels is None:
        kind += " (every image is grayscale)" if c == 1 else ""
    if image_size is not None:
        h, w = image_size
        why = f"{w} x {h} {kind} (as asked)"
    elif all(h <= SMALL_SIDE and w <= SMALL_SIDE for h, w in sizes):
        counts = Counter(sizes)
        # The most common size; ties go to the larger, then the wider.
        (h, w), n = max(counts.items(), key=lambda kv: (kv[1], kv[0][0] * kv[0][1], kv[0][1]))
        share = f"{n} of {len(sizes)}" if len(counts) > 1 else "all"
        why = f"{w} x {h} {kind} (the most common size: {share} images; --image-size to change)"
    else:
        h, w = DEFAULT_SIZE
        why = (
            f"{w} x {h} {kind} (images over {SMALL_SIDE} x {SMALL_SIDE} are resized to the"
            " default; --image-size to change)"
        )
    return (h, w, c), why


# --- the cache ---------------------------------------------------------------------


def cache_key(root: Path) -> str:
    """One entry per folder (another size replaces it)."""
    # 1, not CACHE_VERSION: an entry of an older format is replaced in place, not orphaned.
    return hashlib.sha256(json.dumps([str(root), 1]).encode()).hexdigest()[:24]


def _serves(meta: dict, request: list) -> bool:
    """Whether an entry built for meta['request'] (at meta['image_shape']) answers
    ``request`` [size or None, channels or None]: an explicit value must equal what
    the entry holds; 'choose it' is answered only by an entry that chose it too."""
    built, shape = meta.get("request"), meta.get("image_shape")
    if not (isinstance(built, list) and len(built) == 2 and isinstance(shape, list)):
        return False
    size_ok = built[0] is None if request[0] is None else request[0] == shape[:2]
    channels_ok = built[1] is None if request[1] is None else request[1] == shape[2]
    return size_ok and channels_ok


def _stat_list(scan_: Scan) -> list[list]:
    return [[f.rel, f.size, f.mtime_ns] for f in scan_.files]


def stat_digest(scan_: Scan) -> str:
    """One digest of every file's (name, size, mtime_ns): the second run's whole check
    when nothing changed (the per-file list in files.json is read only otherwise)."""
    text = "\n".join([f"{f.rel}\t{f.size}\t{f.mtime_ns}" for f in scan_.files])
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _read_json(path: Path, limit: int):
    with open_regular(path, "cache file", follow=False) as f:
        return json.loads(f.read(limit + 1))


def _read_meta(folder: Path, limit: int) -> dict:
    meta = _read_json(folder / "meta.json", limit)
    if not isinstance(meta, dict):
        raise ValueError("meta.json is not an object")
    return meta


def _open_entry(folder: Path, scan_: Scan, request: list) -> tuple[Dataset, dict] | str:
    """The cached dataset and its meta, or a sentence saying why the entry cannot serve."""
    if not os.path.lexists(folder):
        return "missing"
    try:
        if not _is_real_dir(folder):
            return "it is not a folder"
        meta = _read_meta(folder, 1 << 22)
        if meta.get("version") != CACHE_VERSION:
            found = f"{meta.get('version')!r:.20}"
            return f"it is of format {found}, this svmtool writes {CACHE_VERSION}"
        if meta.get("root") != str(scan_.root) or not _serves(meta, request):
            return "stale"
        current_digest = stat_digest(scan_)
        same = meta.get("stat_digest") == current_digest
        files = [] if same else _read_json(folder / "files.json", 256 * len(scan_.files) + 4096)
        if not same and (not isinstance(files, list) or len(files) != len(scan_.files)):
            return "stale"
        current = [] if same else _stat_list(scan_)
        touched = []
        for k, (was, now) in enumerate(zip(files, current, strict=True)):
            if not (isinstance(was, list) and len(was) == 4):
                return "its file list is damaged"
            if was[:3] != now:
                if was[0] != now[0] or was[1] != now[1]:
                    return "stale"
                touched.append(k)
        if not same and not touched:
            return "its file list does not match its meta.json"
        for k in touched:
            # Same name and size, new mtime: the bytes decide.
            try:
                digest = _digest(scan_.root / scan_.files[k].rel)
            except SvmtoolError:
                return "stale"
            if digest != files[k][3]:
                return "stale"
            files[k][2] = current[k][2]
        names = meta.get("class_names")
        if names != scan_.class_names:
            return "stale"
        arrays = {name: map_npy(folder / f"{name}.npy", "cache file") for name in CACHE_FILES}
        shape = tuple(meta.get("image_shape", ()))
        for part in ("train", "test"):
            images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
                return f"{part}_images.npy is {images.dtype} {images.shape}, not {shape} uint8"
            if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
                return f"{part}_labels.npy is {labels.dtype} {labels.shape}, not one per image"
            if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
                return f"{part}_labels.npy holds labels outside 0..{len(names) - 1}"
        if len(arrays["train_labels"]) != meta.get("counts", {}).get("train"):
            return "its image count does not match its meta.json"
    except SvmtoolError as exc:
        return f"it is damaged ({exc})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return f"it is damaged ({type(exc).__name__}: {exc})"
    if touched:
        meta["stat_digest"] = current_digest
        with contextlib.suppress(OSError, SvmtoolError):
            _write_json_atomic(folder / "files.json", files)
            _write_json_atomic(folder / "meta.json", meta)
    dataset = Dataset(**arrays, class_names=list(names), source=str(scan_.root))
    return dataset, meta


def _write_json_atomic(path: Path, value) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".meta.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _clear_scratch(parent: Path) -> None:
    """Scratch folders of runs that were killed (older than an hour: not a running build)."""
    with contextlib.suppress(OSError), os.scandir(parent) as it:
        for entry in it:
            if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat(follow_symlinks=False).st_mtime > 3600:
                        shutil.rmtree(entry.path, ignore_errors=True)


# --- loading ------------------------------------------------------------------------


def _skip_text(skipped: list[list[str]]) -> str:
    shown = "; ".join(f"{rel} ({why})" for rel, why in skipped[:SHOWN_SKIPPED])
    more = f"; and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    return shown + more


def _ignored_text(ignored: dict[str, int]) -> str:
    return ", ".join(f"{n} {what}" for what, n in sorted(ignored.items()))


def load(
    root: Path,
    data_dir: Path,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    progress: ProgressFn | None = None,
    workers: int | None = None,
    use_cache: bool = True,
) -> Dataset:
    """The image folder ``root`` as a Dataset (uint8 (N, H, W, C) images), from the
    cache under ``data_dir`` when the folder has not changed, else decoded on
    ``workers`` processes (default: every core) and cached.

    image_size: (height, width) to resize to; channels: 1 or 3 (default: 1 when
    every image is grayscale). Without train/ and test/ subfolders, a stratified
    TEST_FRACTION of each class, chosen by content with a fixed seed, is the test split.
    """
    root = Path(root).expanduser().resolve()
    if channels not in (None, 1, 3):
        raise SvmtoolError(f"channels must be 1 or 3, got {channels}")
    t0 = time.perf_counter()
    listing = scan(root)
    request = [list(image_size) if image_size else None, channels]
    entry = Path(data_dir).expanduser() / CACHE_DIRNAME / cache_key(root)
    why_rebuilt = None
    if use_cache:
        opened = _open_entry(entry, listing, request)
        if not isinstance(opened, str):
            dataset, meta = opened
            return _finish(dataset, meta, listing, entry, "read", time.perf_counter() - t0)
        if opened not in ("missing", "stale"):
            why_rebuilt = f"the cache entry {entry} cannot be used: {opened}; rebuilding it"
    return _build(
        listing, entry, request, image_size, channels, progress, workers, use_cache, t0,
        why_rebuilt,
    )  # fmt: skip


def _build(
    listing: Scan,
    entry: Path,
    request: list,
    image_size: tuple[int, int] | None,
    channels: int | None,
    progress: ProgressFn | None,
    workers: int | None,
    use_cache: bool,
    t0: float,
    why_rebuilt: str | None,
) -> Dataset:
    workers = default_workers() if workers is None else max(1, workers)
    root = listing.root
    paths = [str(root / f.rel) for f in listing.files]
    total = len(paths)
    skipped: list[list[str]] = []

    def give_up() -> None:
        if len(skipped) * 2 > total:
            raise SvmtoolError(
                f"{root}: {len(skipped)} of {total} image files cannot be read; first:"
                f" {_skip_text(skipped)}"
            )

    probes = _run(probe_files, paths, (), workers, "reading sizes", progress)
    ok = []
    for k, result in enumerate(probes):
        if result[0] == "error":
            skipped.append([listing.files[k].rel, result[1]])
        else:
            ok.append(k)
    give_up()
    shape, size_rule = choose_shape(
        [(probes[k][0], probes[k][1]) for k in ok], [probes[k][2] for k in ok], image_size, channels
    )
    need = len(ok) * int(np.prod(shape))
    memory = physical_memory()
    if memory is not None and need > memory // 2:
        raise SvmtoolError(
            f"{root}: {len(ok)} images at {shape[1]} x {shape[0]} x {shape[2]} need"
            f" {need / 1e9:.1f} GB, more than half of this machine's memory; choose a smaller"
            " --image-size"
        )
    t1 = time.perf_counter()
    decoded = _run(decode_files, [paths[k] for k in ok], (shape,), workers, "decoding", progress)
    decode_seconds = time.perf_counter() - t1
    images = np.empty((len(ok), *shape), dtype=np.uint8)
    digests = {}
    good = []
    for i, (k, result) in enumerate(zip(ok, decoded, strict=True)):
        if result[0] == "error":
            skipped.append([listing.files[k].rel, result[1]])
            continue
        digests[k] = result[0]
        images[len(good)] = np.frombuffer(result[1], dtype=np.uint8).reshape(shape)
        good.append(k)
        del i
    skipped.sort()
    give_up()
    images = images[: len(good)]
    labels = np.array([listing.files[k].label for k in good], dtype=np.int64)
    parts = np.array([listing.files[k].part for k in good])
    test_rule = None
    if listing.layout == "flat":
        size = round(TEST_FRACTION * len(good))
        order = content_order(images, labels)
        picked = stratified_sample(labels[order], size, np.random.default_rng(TEST_SEED))
        parts = np.full(len(good), "train")
        parts[order[picked]] = "test"
        test_rule = (
            f"no train/ and test/ folders: {size} of {len(good)} images"
            f" ({TEST_FRACTION:.0%} of each class, drawn by content with a fixed seed"
            f" {TEST_SEED}, whatever the file order) are the test split"
        )
    train_rows, test_rows = np.flatnonzero(parts == "train"), np.flatnonzero(parts != "train")
    arrays = {
        "train_images": images[train_rows],
        "train_labels": labels[train_rows],
        "test_images": images[test_rows],
        "test_labels": labels[test_rows],
    }
    del images
    meta = {
        "version": CACHE_VERSION,
        "root": str(root),
        "request": request,
        "layout": listing.layout,
        "class_names": listing.class_names,
        "image_shape": list(shape),
        "size_rule": size_rule,
        "test_rule": test_rule,
        "counts": {"train": int(train_rows.size), "test": int(test_rows.size)},
        "skipped": skipped,
        "decode_seconds": round(decode_seconds, 3),
        "workers": workers if len(paths) >= POOL_MIN_FILES else 1,
        "stat_digest": stat_digest(listing),
    }
    files = [[f.rel, f.size, f.mtime_ns, digests.get(k)] for k, f in enumerate(listing.files)]
    notes = [why_rebuilt] if why_rebuilt else []
    stored = "built"
    if use_cache:
        try:
            _clear_scratch(entry.parent)
            write_npy_folder(entry, arrays, meta, {"files.json": files})
        except (OSError, SvmtoolError) as exc:
            notes.append(f"the image cache could not be written ({exc}); nothing was cached")
            stored = "not written"
    else:
        stored = "off"
    dataset = Dataset(**arrays, class_names=list(listing.class_names), source=str(root))
    dataset.notes.extend(notes)
    return _finish(dataset, meta, listing, entry, stored, time.perf_counter() - t0)


def _finish(
    dataset: Dataset, meta: dict, listing: Scan, entry: Path, cache: str, seconds: float
) -> Dataset:
    """Add the sentences and the --json report of what loading found."""
    counts = meta["counts"]
    skipped = meta.get("skipped") or []
    shape = meta["image_shape"]
    notes = dataset.notes
    split = (
        f"train/ {counts['train']}, test/ {counts['test']}"
        if listing.layout == "train-test"
        else f"{counts['train']} train, {counts['test']} test"
    )
    notes.append(
        f"image folder {listing.root}: {counts['train'] + counts['test']} images in"
        f" {len(listing.class_names)} classes ({split}), read at {meta['size_rule']}"
    )
    if meta.get("test_rule"):
        notes.append(meta["test_rule"])
    if skipped:
        notes.append(f"skipped {len(skipped)} unreadable file(s): {_skip_text(skipped)}")
    if listing.ignored:
        notes.append(f"ignored {_ignored_text(listing.ignored)}")
    if cache == "read":
        notes.append(f"read from the image cache in {seconds:.2f} s ({entry})")
    else:
        n = counts["train"] + counts["test"]
        rate = n / meta["decode_seconds"] if meta["decode_seconds"] > 0 else float("nan")
        where = f"; cached in {entry}" if cache == "built" else ""
        notes.append(
            f"decoded {n} images in {meta['decode_seconds']:.2f} s ({rate:,.0f} images/s on"
            f" {meta['workers']} worker(s)){where}"
        )
    dataset.report = {
        "folder": str(listing.root),
        "layout": listing.layout,
        "class_names": list(listing.class_names),
        "train_images": counts["train"],
        "test_images": counts["test"],
        "image_shape": shape,
        "size_rule": meta["size_rule"],
        "test_rule": meta.get("test_rule"),
        "skipped_count": len(skipped),
        "skipped": [{"file": rel, "reason": why} for rel, why in skipped],
        "ignored": dict(listing.ignored),
        "cache": cache,
        "cache_entry": str(entry),
        "seconds": round(seconds, 3),
    }
    return dataset
