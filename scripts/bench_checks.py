"""What the checks on untrusted files cost, side by side with reading the same files unchecked.

Run: python scripts/bench_checks.py [--repeats 7]

Full-size CIFAR-format files are written into a temporary folder: svmtool's
uint8 cache (60,000 images), the six python batches as Python 2 wrote them
(BINSTRING data, as in the real cifar-10-python.tar.gz), and a CIFAR-size
model. Timed alternately in the same run, medians of --repeats:

  cache:  np.load(mmap_mode="r") of the four .npy files and meta.json (what
          svmtool did before the checks) against cifar.load (every file's
          header checked against its size, never through a link, the labels'
          range checked);
  model:  np.load of the model's arrays against model.load (every field validated);
  batches: the six pickles through Python's C unpickler (what svmtool did
          before) against svmtool's checked pure-Python unpickler.

A float32 matrix product's rate is printed from the same run, so numbers
from different machines or loads can be compared.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import alternate, environment, fmt

from svmtool.io import cifar, pickles
from svmtool.io import model as model_io
from svmtool.io.data import Dataset
from svmtool.io.model import Model


class Python2Pickler(pickle._Pickler):
    """Writes bytes as BINSTRING, as Python 2's cPickle wrote the real batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def write_files(root: Path, rng: np.random.Generator) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    parts = []
    for name in [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]:
        data = rng.integers(0, 256, (10_000, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 10_000)
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels],
            b"data": data,
            b"filenames": [f"img_{i}.png".encode() for i in range(10_000)],
        }
        buffer = io.BytesIO()
        Python2Pickler(buffer, protocol=2).dump(batch)
        (folder / name).write_bytes(buffer.getvalue())
        parts.append((data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels))
    dataset = Dataset(
        np.concatenate([p[0] for p in parts[:5]]),
        np.concatenate([p[1] for p in parts[:5]]),
        parts[5][0],
        parts[5][1],
        list(cifar.CLASS_NAMES),
        "cifar10",
    )
    cifar.write_cache(dataset, root / "data")
    model = Model(
        W=rng.standard_normal((3073, 10)).astype(np.float32),
        mean_image=rng.random((32, 32, 3)) * 255,
        class_names=list(cifar.CLASS_NAMES),
        settings={"lr": 1e-7, "reg": 2.5e4, "seed": 0, "data": "cifar10"},
        metrics={"val_accuracy": 0.38},
        loss_history=rng.random(1500),
    )
    model_io.save(model, root / "model.npz")


def unchecked_cache(data_dir: Path) -> dict:
    folder = cifar.cache_dir(data_dir)
    meta = json.loads((folder / "meta.json").read_text())
    arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in cifar.CACHE_FILES}
    return {**arrays, "class_names": meta["class_names"]}


def unchecked_model(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


class _CUnpickler(pickle.Unpickler):
    """svmtool's unpickler before the checks: the C one, limited to numpy's globals."""

    def find_class(self, module: str, name: str):
        if name == "_reconstruct":
            return pickles._numpy_reconstruct()
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def c_unpickler_batches(folder: Path) -> list:
    """What svmtool did per batch before the checks, with the C unpickler."""
    out = []
    for name in [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]:
        with open(folder / name, "rb") as f:
            batch = _CUnpickler(f, encoding="bytes").load()
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        out.append((np.ascontiguousarray(images), labels))
    return out


def checked_batches(folder: Path) -> list:
    return [cifar._read_python_batch(folder / n) for n in [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]]


def matmul_rate(repeats: int = 5) -> float:
    """GFLOP/s of a float32 (2000 x 3073) @ (3073 x 10) product, best of ``repeats``."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, 3073), dtype=np.float32)
    W = rng.standard_normal((3073, 10), dtype=np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(20):
            X @ W
        best = min(best, (time.perf_counter() - start) / 20)
    return 2 * 2000 * 3073 * 10 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(environment())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_files(root, np.random.default_rng(0))
        folder = root / "cifar-10-batches-py"
        before = matmul_rate()
        cache = alternate(
            {
                "unchecked": lambda: unchecked_cache(root / "data"),
                "checked": lambda: cifar.load(root / "data"),
            },
            args.repeats,
        )
        model = alternate(
            {
                "unchecked": lambda: unchecked_model(root / "model.npz"),
                "checked": lambda: model_io.load(root / "model.npz"),
            },
            args.repeats,
        )
        batches = alternate(
            {"c": lambda: c_unpickler_batches(folder), "checked": lambda: checked_batches(folder)},
            args.repeats,
        )
        after = matmul_rate()
    print(f"float32 matrix product: {before:.1f} GFLOP/s before, {after:.1f} GFLOP/s after\n")
    rows = [
        ("open the CIFAR-10 cache", cache["unchecked"], cache["checked"]),
        ("load a CIFAR-size model (3073 x 10)", model["unchecked"], model["checked"]),
        ("read the six python batches", batches["c"], batches["checked"]),
    ]
    print(f"  {'':38}{'unchecked':>12}{'checked':>12}{'ratio':>9}")
    for name, plain, checked in rows:
        print(f"  {name:38}{fmt(plain)}{fmt(checked)}{checked / plain:8.2f}x")


if __name__ == "__main__":
    main()
