"""Shared fixtures: small CIFAR-format archives built on the fly, a quiet environment."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from svmtool.io import download

TRAIN_PER_BATCH = 12
TEST_COUNT = 10
CLASS_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


@dataclass
class TinyCifar:
    """A CIFAR-format dataset small enough to build in milliseconds."""

    train_images: np.ndarray  # (60, 32, 32, 3) uint8
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def make_tiny(seed: int = 0) -> TinyCifar:
    rng = np.random.default_rng(seed)
    n = 5 * TRAIN_PER_BATCH
    return TinyCifar(
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, n).astype(np.int64),
        rng.integers(0, 256, (TEST_COUNT, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, TEST_COUNT).astype(np.int64),
    )


def chw_rows(images: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) in CIFAR's R, G, B plane order."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def binary_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    records = np.concatenate([labels.astype(np.uint8)[:, None], chw_rows(images)], axis=1)
    return records.tobytes()


class Py2Pickler:
    """Writes what Python 2's cPickle wrote at protocol 2 for the official CIFAR-10
    python batches: str as SHORT_BINSTRING/BINSTRING, memo puts after containers and
    strings, lists in APPENDS runs of 1000, and numpy 1.x's array reduce with the
    dtype pickled as numpy.dtype('u1', 0, 1) (integer flags) and state
    (3, '|', None, None, None, -1, -1, 0). Today's pickle cannot write these."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")
        self.memo = 0

    def put(self) -> None:
        self.memo += 1
        if self.memo < 256:
            self.out += b"q" + bytes([self.memo])
        else:
            self.out += b"r" + self.memo.to_bytes(4, "little")

    def int(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])
        elif 0 <= value < 65536:
            self.out += b"M" + value.to_bytes(2, "little")
        else:
            self.out += b"J" + value.to_bytes(4, "little", signed=True)

    def str(self, value: bytes, memo: bool = True) -> None:
        if len(value) < 256:
            self.out += b"U" + bytes([len(value)]) + value
        else:
            self.out += b"T" + len(value).to_bytes(4, "little") + value
        if memo:
            self.put()

    def global_(self, module: bytes, name: bytes) -> None:
        self.out += b"c" + module + b"\n" + name + b"\n"
        self.put()

    def array(self, array: np.ndarray) -> None:
        assert array.dtype == np.uint8 and array.flags.c_contiguous
        self.global_(b"numpy.core.multiarray", b"_reconstruct")
        self.global_(b"numpy", b"ndarray")
        self.out += b"K\x00\x85U\x01b\x87R"  # (ndarray, (0,), 'b'), REDUCE
        self.put()
        self.out += b"(K\x01"  # MARK, version 1
        for n in array.shape:
            self.int(n)
        self.out += {1: b"\x85", 2: b"\x86", 3: b"\x87"}[array.ndim]
        self.global_(b"numpy", b"dtype")
        self.out += b"U\x02u1K\x00K\x01\x87R"  # dtype('u1', 0, 1): Python 2's integer flags
        self.put()
        self.out += b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        self.out += b"\x89"  # NEWFALSE: not Fortran order
        self.str(array.tobytes(), memo=False)
        self.out += b"t"
        self.put()
        self.out += b"b"

    def value(self, value) -> None:
        if isinstance(value, np.ndarray):
            self.array(value)
        elif isinstance(value, bytes):
            self.str(value)
        elif isinstance(value, int):
            self.int(value)
        elif isinstance(value, list):
            self.out += b"]"
            self.put()
            for start in range(0, len(value), 1000):
                self.out += b"("
                for item in value[start : start + 1000]:
                    self.value(item)
                self.out += b"e"
        elif isinstance(value, dict):
            self.out += b"}"
            self.put()
            self.out += b"("
            for key, item in value.items():
                self.str(key)
                self.value(item)
            self.out += b"u"
        else:
            raise TypeError(type(value))

    def dumps(self, obj) -> bytes:
        self.value(obj)
        return bytes(self.out + b".")


def py2_pickle(obj) -> bytes:
    return Py2Pickler().dumps(obj)


def python_batch(images: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch as the official cifar-10-python.tar.gz holds it (keys in its order)."""
    batch = {
        b"data": chw_rows(images),
        b"labels": [int(v) for v in labels],
        b"batch_label": b"testing batch 1 of 1",
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    }
    return py2_pickle(batch)


def batch_files(tiny: TinyCifar, fmt: str) -> dict[str, bytes]:
    """name -> content of every file of an extracted archive."""
    files = {}
    for b in range(5):
        sl = slice(b * TRAIN_PER_BATCH, (b + 1) * TRAIN_PER_BATCH)
        args = (tiny.train_images[sl], tiny.train_labels[sl])
        if fmt == "binary":
            files[f"data_batch_{b + 1}.bin"] = binary_batch(*args)
        else:
            files[f"data_batch_{b + 1}"] = python_batch(*args)
    if fmt == "binary":
        files["test_batch.bin"] = binary_batch(tiny.test_images, tiny.test_labels)
        files["batches.meta.txt"] = ("\n".join(CLASS_NAMES) + "\n").encode()
    else:
        files["test_batch"] = python_batch(tiny.test_images, tiny.test_labels)
        files["batches.meta"] = py2_pickle(
            {
                b"num_cases_per_batch": TRAIN_PER_BATCH,
                b"label_names": [n.encode() for n in CLASS_NAMES],
                b"num_vis": 3072,
            }
        )
    return files


def tar_gz(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info in extra or []:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.size else None)
    return buffer.getvalue()


def cifar_archive(tiny: TinyCifar, fmt: str) -> bytes:
    folder = "cifar-10-batches-bin" if fmt == "binary" else "cifar-10-batches-py"
    return tar_gz({f"{folder}/{k}": v for k, v in batch_files(tiny, fmt).items()})


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def tiny() -> TinyCifar:
    return make_tiny()


@pytest.fixture(params=["binary", "python"])
def archive(request, tiny) -> tuple[str, bytes]:
    """(format, archive bytes) for both CIFAR-10 formats."""
    return request.param, cifar_archive(tiny, request.param)


@pytest.fixture(autouse=True)
def quiet_env(monkeypatch, tmp_path):
    """No retries' sleeping, no real data or cache folder, no colour."""
    monkeypatch.setattr(download, "BACKOFF", 0.0)
    monkeypatch.setenv("SVMTOOL_DATA_DIR", str(tmp_path / "default-data"))
    # Never the real user cache folder: every feature cache of the suite goes here.
    monkeypatch.setenv("SVMTOOL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)


def extracted(tmp_path: Path, tiny: TinyCifar, fmt: str) -> Path:
    """Write an extracted batches folder and return it."""
    folder = tmp_path / ("cifar-10-batches-bin" if fmt == "binary" else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    for name, content in batch_files(tiny, fmt).items():
        (folder / name).write_bytes(content)
    return folder


# Hostile inputs run in a child process with its address space capped: a
# regression that allocates what a file claims fails fast with MemoryError
# instead of exhausting the machine. svmtool itself needs about 400 MB.
MEMORY_LIMIT = 768 << 20


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_limited(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``svmtool ARGS`` (or ``python ARGS`` when args[0] is an option or a .py file)
    in a child process under MEMORY_LIMIT; the output is captured as text."""
    python = args[0].startswith("-") or args[0].endswith(".py")
    command = [sys.executable, *args] if python else [sys.executable, "-m", "svmtool", *args]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run(
        command,
        preexec_fn=_cap_memory,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def deadline():
    """Fail instead of hanging forever if something waits on a FIFO."""

    def expire(signum, frame):
        raise TimeoutError("blocked: something opened a FIFO and waited")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def grayscale_classes(rng: np.random.Generator, n_train: int, n_test: int):
    """A learnable 8 x 6 grayscale dataset of 3 classes (one pattern each, plus noise):
    (X_train, y_train, X_test, y_test), uint8 images and int labels."""
    patterns = rng.normal(0, 40, (3, 8, 6, 1))

    def draw(n):
        labels = rng.integers(0, 3, n)
        images = np.clip(128 + patterns[labels] + rng.normal(0, 20, (n, 8, 6, 1)), 0, 255)
        return images.astype(np.uint8), labels

    X_train, y_train = draw(n_train)
    X_test, y_test = draw(n_test)
    return X_train, y_train, X_test, y_test
