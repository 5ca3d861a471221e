"""CIFAR-100, Fashion-MNIST and MNIST: their facts (files, official locations, published
md5s, class names), their two formats (gzip IDX, CIFAR-100's python pickles), and a
uint8 cache like CIFAR-10's. The download itself is download.fetch, as for CIFAR-10.

The md5s and URLs are the ones torchvision's datasets use (the datasets' published
checksums); the code here is svmtool's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from svmtool.errors import BadValue, DataNotFound, SvmtoolError
from svmtool.io.dataset import CIFAR100, FASHION_MNIST, MNIST, Dataset
from svmtool.io.download import (
    DownloadFailed,
    ProgressFn,
    RetryFn,
    fetch,
    is_md5_text,
    safe_extract,
    verify_md5,
)
from svmtool.io.files import is_regular_file, link_refusal, open_regular
from svmtool.io.idx import read_idx
from svmtool.io.npzfile import map_npy, write_npy_folder
from svmtool.io.pickles import integer_labels, unpickle


@dataclass(frozen=True)
class Resource:
    """One file of a dataset as its publisher serves it."""

    filename: str
    md5: str
    size: int  # bytes as published; twice this bounds a download


@dataclass(frozen=True)
class Spec:
    name: str  # the --data value
    title: str
    mirrors: tuple[str, ...]  # base URLs, tried in order
    resources: tuple[Resource, ...]
    format: str  # 'idx' or 'cifar100'
    folder: str  # where the downloaded (or offline) files sit under the data folder
    class_names: tuple[str, ...]


MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

CIFAR100_FINE = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
CIFAR100_COARSE = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip

SPECS = {
    MNIST: Spec(
        MNIST,
        "MNIST",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (
            Resource(MNIST_FILES[0], "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9_912_422),
            Resource(MNIST_FILES[1], "d53e105ee54ea40749a09fcbcd1e9432", 28_881),
            Resource(MNIST_FILES[2], "9fb629c4189551a2d022fa330f9573f3", 1_648_877),
            Resource(MNIST_FILES[3], "ec29112dd5afa0611ce80d1b7f02629c", 4_542),
        ),
        "idx",
        "mnist",
        tuple(str(k) for k in range(10)),
    ),
    FASHION_MNIST: Spec(
        FASHION_MNIST,
        "Fashion-MNIST",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            Resource(MNIST_FILES[0], "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26_421_880),
            Resource(MNIST_FILES[1], "25c81989df183df01b3e8a0aad5dffbe", 29_515),
            Resource(MNIST_FILES[2], "bef4ecab320f06d8554ea6380940ec79", 4_422_102),
            Resource(MNIST_FILES[3], "bb300cfdad3c16e7a12a480ee83cd310", 5_148),
        ),
        "idx",
        "fashion-mnist",
        (
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
    ),
    CIFAR100: Spec(
        CIFAR100,
        "CIFAR-100",
        ("https://www.cs.toronto.edu/~kriz/",),
        (Resource("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", 169_001_437),),
        "cifar100",
        "cifar-100-python",
        CIFAR100_FINE,
    ),
}
LABELS = ("fine", "coarse")  # CIFAR-100's two label sets (--labels)
CACHE_VERSION = 1
MAX_META_BYTES = 1 << 16
# CIFAR-100's archive extracts to 3 files (train, test, meta) of about 180 MB.
CIFAR100_MAX_EXTRACTED = 400_000_000
CIFAR100_MAX_MEMBERS = 20


# --- IDX folders (the files themselves: io/idx.py) ------------------------------------


def read_idx_folder(folder: Path, spec: Spec) -> Dataset:
    """The four (gzip) IDX files of MNIST or Fashion-MNIST in ``folder``."""
    parts = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 3)
        labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 1).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise SvmtoolError(
                f"{folder}: {prefix} has {images.shape[0]} images but {labels.shape[0]} labels"
            )
        if labels.size and labels.max() >= len(spec.class_names):
            raise SvmtoolError(
                f"{folder}: {prefix} label {labels.max()} is not in 0..{len(spec.class_names) - 1}"
            )
        parts[part] = (images[..., None], labels)
    return Dataset(
        parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1],
        list(spec.class_names), spec.name,
    )  # fmt: skip


# --- CIFAR-100's pickles ---------------------------------------------------------------


def _read_cifar100_part(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batch = unpickle(path)
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise SvmtoolError(f"malformed CIFAR-100 file {path}: no uint8 'data' array")
    if data.shape[1] != 3072:
        raise SvmtoolError(f"malformed CIFAR-100 file {path}: data is {data.shape}")
    labels = {}
    for key, count in (("fine_labels", 100), ("coarse_labels", 20)):
        if key not in batch:
            raise SvmtoolError(f"malformed CIFAR-100 file {path}: no '{key}'")
        values = integer_labels(batch[key], path)
        if values.shape != (data.shape[0],):
            raise SvmtoolError(
                f"malformed CIFAR-100 file {path}: {values.size} {key}, {len(data)} images"
            )
        if values.size and (values.min() < 0 or values.max() >= count):
            raise SvmtoolError(f"malformed CIFAR-100 file {path}: {key} outside 0..{count - 1}")
        labels[key] = values
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels["fine_labels"], labels["coarse_labels"]


def _cifar100_names(folder: Path) -> tuple[list[str], list[str]]:
    """Class names from the meta file when it has exactly 100 and 20, else the constants."""
    found = []
    meta = folder / "meta"
    content = unpickle(meta) if meta.exists() else {}
    wanted = (("fine_label_names", CIFAR100_FINE), ("coarse_label_names", CIFAR100_COARSE))
    for key, fallback in wanted:
        names = content.get(key)
        if (
            isinstance(names, list)
            and len(names) == len(fallback)
            and all(isinstance(n, bytes | str) for n in names)
        ):
            found.append(
                [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
            )
        else:
            found.append(list(fallback))
    return found[0], found[1]


def read_cifar100_folder(folder: Path) -> dict[str, np.ndarray | list[str]]:
    """An extracted cifar-100-python folder (train, test, meta) as arrays and names."""
    train = _read_cifar100_part(folder / "train")
    test = _read_cifar100_part(folder / "test")
    fine, coarse = _cifar100_names(folder)
    return {
        "train_images": train[0],
        "train_labels": train[1],
        "train_coarse_labels": train[2],
        "test_images": test[0],
        "test_labels": test[1],
        "test_coarse_labels": test[2],
        "fine_names": fine,
        "coarse_names": coarse,
    }


# --- the cache ---------------------------------------------------------------------------


def cache_dir(data_dir: Path, spec: Spec) -> Path:
    return data_dir / f"{spec.folder}-cache"


def _arrays_of(spec: Spec, parsed: Dataset | dict) -> tuple[dict[str, np.ndarray], dict]:
    if isinstance(parsed, Dataset):
        arrays = {
            "train_images": parsed.train_images,
            "train_labels": parsed.train_labels,
            "test_images": parsed.test_images,
            "test_labels": parsed.test_labels,
        }
        names = {"fine": list(parsed.class_names)}
    else:
        arrays = {k: v for k, v in parsed.items() if isinstance(v, np.ndarray)}
        names = {"fine": parsed["fine_names"], "coarse": parsed["coarse_names"]}
    return arrays, names


def write_cache(spec: Spec, parsed: Dataset | dict, data_dir: Path) -> Path:
    arrays, names = _arrays_of(spec, parsed)
    meta = {
        "version": CACHE_VERSION,
        "dataset": spec.name,
        "class_names": names,
        "shapes": {k: list(a.shape) for k, a in arrays.items()},
    }
    folder = cache_dir(data_dir, spec)
    write_npy_folder(folder, arrays, meta)
    return folder


def _dataset(spec: Spec, arrays: dict, names: dict, labels: str) -> Dataset:
    if labels not in LABELS:
        raise BadValue("--labels", f"must be fine or coarse, got {labels!r}")
    if labels == "coarse":
        if "coarse" not in names:
            raise SvmtoolError(f"--labels coarse applies to cifar100, not {spec.name}")
        return Dataset(
            arrays["train_images"], arrays["train_coarse_labels"], arrays["test_images"],
            arrays["test_coarse_labels"], list(names["coarse"]), spec.name,
        )  # fmt: skip
    return Dataset(
        arrays["train_images"], arrays["train_labels"], arrays["test_images"],
        arrays["test_labels"], list(names["fine"]), spec.name,
    )  # fmt: skip


def _open_cache(spec: Spec, data_dir: Path) -> tuple[dict, dict] | str:
    """(arrays, class names) of the cache, or why it cannot be used ('missing')."""
    folder = cache_dir(data_dir, spec)
    if not os.path.lexists(folder):
        return "missing"
    try:
        with open_regular(folder / "meta.json", "cache file", follow=False) as f:
            meta = json.loads(f.read(MAX_META_BYTES))
        if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION:
            return "its format version is not this svmtool's"
        if meta.get("dataset") != spec.name:
            return f"it holds {meta.get('dataset')!r}"
        names = meta["class_names"]
        wanted = {"fine": len(spec.class_names)} | (
            {"coarse": len(CIFAR100_COARSE)} if spec.format == "cifar100" else {}
        )
        for key, count in wanted.items():
            value = names.get(key)
            if not (
                isinstance(value, list)
                and len(value) == count
                and all(isinstance(n, str) for n in value)
            ):
                return f"its meta.json lacks the {count} {key} class names"
        arrays = {k: map_npy(folder / f"{k}.npy", "cache file") for k in meta["shapes"]}
        for k, a in arrays.items():
            if list(a.shape) != meta["shapes"][k]:
                return f"{k}.npy has shape {a.shape}, not {meta['shapes'][k]}"
        for part in ("train", "test"):
            images = arrays[f"{part}_images"]
            if images.dtype != np.uint8 or images.ndim != 4:
                return f"{part}_images.npy is {images.dtype} {images.shape}, not uint8 images"
            for key, count in wanted.items():
                name = f"{part}_labels" if key == "fine" else f"{part}_coarse_labels"
                labels = arrays[name]
                if labels.dtype != np.int64 or labels.shape != images.shape[:1]:
                    return f"{name}.npy is {labels.dtype} {labels.shape}, not one per image"
                if labels.size and (labels.min() < 0 or labels.max() >= count):
                    return f"{name}.npy holds labels outside 0..{count - 1}"
    except SvmtoolError as exc:
        return f"it is damaged ({exc})"
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return f"it is incomplete or damaged ({type(exc).__name__}: {exc})"
    return arrays, names


def _offline_folder(spec: Spec, data_dir: Path) -> Path | None:
    """A folder holding the dataset's files as published (IDX) or extracted (CIFAR-100)."""
    wanted = (
        ["train", "test"] if spec.format == "cifar100" else [r.filename for r in spec.resources]
    )
    for folder in (data_dir / spec.folder, data_dir):
        if all(is_regular_file(folder / name) for name in wanted):
            return folder
    return None


def load(name: str, data_dir: Path, labels: str = "fine") -> Dataset:
    """A named dataset from ``data_dir``: its cache, or the files themselves (an
    offline copy: the four IDX .gz files, or an extracted cifar-100-python folder)."""
    spec = SPECS[name]
    if labels != "fine" and spec.format != "cifar100":
        raise SvmtoolError(f"--labels {labels} applies to cifar100, not {name}")
    opened = _open_cache(spec, data_dir)
    if not isinstance(opened, str):
        return _dataset(spec, *opened, labels)
    folder = _offline_folder(spec, data_dir)
    if folder is not None:
        parsed = (
            read_idx_folder(folder, spec) if spec.format == "idx" else read_cifar100_folder(folder)
        )
        return _dataset(spec, *_arrays_of(spec, parsed), labels)
    command = f"svmtool download --dataset {name} --data-dir {data_dir}"
    if opened != "missing":
        raise SvmtoolError(
            f"the {spec.title} cache in {data_dir} cannot be used: {opened}; run: {command} --force"
        )
    raise DataNotFound(f"{spec.title} is not in {data_dir}; run: {command}")


# --- download ----------------------------------------------------------------------------


@dataclass
class NamedDownload:
    cache: Path
    train_count: int
    test_count: int
    already: bool = False
    kept: list[Path] | None = None


def _join(base: str, filename: str, single: bool) -> str:
    if base.endswith("/"):
        return base + filename
    return base if single else f"{base}/{filename}"


def _fetch_resource(
    spec: Spec,
    resource: Resource,
    dest: Path,
    accepted: dict[str, str],
    url: str | None,
    progress: ProgressFn | None,
    on_retry: RetryFn | None,
) -> None:
    """``resource`` at ``dest``, verified: a verified copy there is kept, else the
    mirrors (or ``url``) are tried in order."""
    if os.path.lexists(dest):
        if not is_regular_file(dest):
            raise link_refusal(dest)
        with contextlib.suppress(SvmtoolError):
            verify_md5(dest, accepted)
            return
    single = len(spec.resources) == 1
    failures = []
    for base in [url] if url else spec.mirrors:
        where = _join(base, resource.filename, single)
        try:
            fetch(where, dest, accepted, progress, on_retry=on_retry, max_size=2 * resource.size)
            return
        except DownloadFailed as exc:
            failures.append(str(exc))
    raise DownloadFailed("; ".join(failures))


def download(
    name: str,
    data_dir: Path,
    url: str | None = None,
    md5: str | None = None,
    from_file: Path | None = None,
    force: bool = False,
    keep_archive: bool = False,
    progress: ProgressFn | None = None,
    on_retry: RetryFn | None = None,
) -> NamedDownload:
    """Fetch (or import) a named dataset's files, verify each by its md5, parse them
    and build the cache. ``from_file``: the archive (CIFAR-100) or a folder holding
    the published files (IDX). ``url``: a mirror (a base URL ending in '/', or the
    archive's URL). ``md5``: another archive's checksum (single-archive datasets)."""
    from svmtool.io.cifar import locked_download

    spec = SPECS[name]
    if md5 is not None:
        if len(spec.resources) != 1:
            raise SvmtoolError(f"--md5 applies to one-archive datasets, not {name}'s four files")
        if not is_md5_text(md5):
            raise SvmtoolError(f"md5 must be 32 hexadecimal digits, got {md5!r}")
    return locked_download(
        data_dir,
        from_file,
        "no such file or folder",
        lambda: _download_locked(
            spec, data_dir, url, md5, from_file, force, keep_archive, progress, on_retry
        ),
    )


def _download_locked(
    spec: Spec,
    data_dir: Path,
    url: str | None,
    md5: str | None,
    from_file: Path | None,
    force: bool,
    keep_archive: bool,
    progress: ProgressFn | None,
    on_retry: RetryFn | None,
) -> NamedDownload:
    if not force:
        opened = _open_cache(spec, data_dir)
        if not isinstance(opened, str):
            arrays = opened[0]
            return NamedDownload(
                cache_dir(data_dir, spec), len(arrays["train_labels"]),
                len(arrays["test_labels"]), already=True,
            )  # fmt: skip
    files: dict[str, Path] = {}
    fetched: list[Path] = []
    for resource in spec.resources:
        accepted = {(md5 or resource.md5).lower(): resource.filename}
        if from_file is not None:
            source = Path(from_file)
            if source.is_dir():
                source = source / resource.filename
            elif len(spec.resources) > 1:
                raise SvmtoolError(
                    f"--from-file for {spec.name} is a folder holding its "
                    f"{len(spec.resources)} files ({', '.join(r.filename for r in spec.resources)})"
                )
            if not is_regular_file(source):
                raise SvmtoolError(f"--from-file: {source} is missing or not a regular file")
            verify_md5(source, accepted, delete=False)
            files[resource.filename] = source
            continue
        dest = data_dir / spec.folder / resource.filename
        if force:
            dest.unlink(missing_ok=True)
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _fetch_resource(spec, resource, dest, accepted, url, progress, on_retry)
        files[resource.filename] = dest
        fetched.append(dest)
    if spec.format == "idx":
        folder = {p.parent for p in files.values()}
        if len(folder) == 1:
            parsed = read_idx_folder(folder.pop(), spec)
        else:  # pragma: no cover - every file comes from one folder
            raise SvmtoolError("the files are in different folders")
    else:
        parsed = _extract_cifar100(files[spec.resources[0].filename], data_dir)
    cache = write_cache(spec, parsed, data_dir)
    kept = None
    if keep_archive or from_file is not None:
        kept = fetched or None
    else:
        for path in fetched:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (data_dir / spec.folder).rmdir()
    arrays = _open_cache(spec, data_dir)
    if isinstance(arrays, str):
        raise SvmtoolError(f"the {spec.title} cache just written cannot be read: {arrays}")
    return NamedDownload(
        cache, len(arrays[0]["train_labels"]), len(arrays[0]["test_labels"]), kept=kept
    )


def _extract_cifar100(archive: Path, data_dir: Path) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix=".extract.", dir=data_dir))
    try:
        safe_extract(archive, scratch, CIFAR100_MAX_EXTRACTED, CIFAR100_MAX_MEMBERS)
        folder = scratch / "cifar-100-python"
        if not (folder / "train").is_file():
            raise SvmtoolError(f"{archive.name} holds no cifar-100-python/train")
        return read_cifar100_folder(folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
