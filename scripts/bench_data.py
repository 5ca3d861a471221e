"""Data loading speed, side by side: svmtool's cache against CS231n's pickle loader.

Run: python scripts/bench_data.py [--repeats 5]

The script writes full-size CIFAR-format files into a temporary folder (the
six python batches, 60,000 images, and svmtool's uint8 cache of the same
images), then times, alternately in the same run:
  A. svmtool: open the cache, split, and build the preprocessed float32
     training and validation rows (mean image subtracted, bias column);
  B. CS231n's load_CIFAR10: unpickle the six batches and convert them to
     float64 (N, 32, 32, 3) arrays;
  C. B followed by the CS231n notebook's preprocessing (flatten, subtract the
     mean image, append the bias column), which is what A delivers.
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from pathlib import Path

import numpy as np
from benchlib import alternate, environment, fmt

from svmtool.io import cifar
from svmtool.io.data import Dataset, split
from svmtool.pipeline import TrainRequest, prepare_training


def write_python_batches(folder: Path, rng: np.random.Generator) -> Dataset:
    folder.mkdir(parents=True)
    parts = []
    for name in [*cifar.TRAIN_BATCHES, cifar.TEST_BATCH]:
        data = rng.integers(0, 256, (10_000, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, 10_000).tolist()
        # str keys: what Python 2's pickles (the real files) give under encoding="latin1".
        batch = {"batch_label": name, "labels": labels, "data": data}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        parts.append((data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.array(labels)))
    meta = {"label_names": list(cifar.CLASS_NAMES)}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Dataset(
        np.concatenate([p[0] for p in parts[:5]]),
        np.concatenate([p[1] for p in parts[:5]]),
        parts[5][0],
        parts[5][1],
        list(cifar.CLASS_NAMES),
        "cifar10",
    )


# --- CS231n's loader, as its data_utils.py has it ------------------------------------


def load_CIFAR_batch(filename):  # CS231n's names, kept
    with open(filename, "rb") as f:
        datadict = pickle.load(f, encoding="latin1")
        X = datadict["data"]
        Y = datadict["labels"]
        X = X.reshape(10000, 3, 32, 32).transpose(0, 2, 3, 1).astype("float")
        Y = np.array(Y)
        return X, Y


def load_CIFAR10(root):
    xs, ys = [], []
    for b in range(1, 6):
        X, Y = load_CIFAR_batch(Path(root) / f"data_batch_{b}")
        xs.append(X)
        ys.append(Y)
    Xtr, Ytr = np.concatenate(xs), np.concatenate(ys)
    Xte, Yte = load_CIFAR_batch(Path(root) / "test_batch")
    return Xtr, Ytr, Xte, Yte


def cs231n_notebook(root):
    X_train, y_train, _, _ = load_CIFAR10(root)
    X_val, y_val = X_train[49000:50000], y_train[49000:50000]
    X_train, y_train = X_train[:49000], y_train[:49000]
    X_train = np.reshape(X_train, (X_train.shape[0], -1))
    X_val = np.reshape(X_val, (X_val.shape[0], -1))
    mean_image = np.mean(X_train, axis=0)
    X_train -= mean_image
    X_val -= mean_image
    X_train = np.hstack([X_train, np.ones((X_train.shape[0], 1))])
    X_val = np.hstack([X_val, np.ones((X_val.shape[0], 1))])
    return X_train, y_train, X_val, y_val


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(environment())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = write_python_batches(root / "cifar-10-batches-py", np.random.default_rng(0))
        cifar.write_cache(dataset, root / "data")
        request = TrainRequest(lrs=[1e-7], regs=[2.5e4], data="cifar10", data_dir=root / "data")
        # Check once that both paths deliver the same rows (up to float32 rounding and order).
        ours = prepare_training(request)
        theirs = cs231n_notebook(root / "cifar-10-batches-py")
        rows = split(dataset, seed=0).train  # svmtool's seeded training order
        np.testing.assert_allclose(ours.X_train[:2000], theirs[0][rows[:2000]], atol=1e-3)
        np.testing.assert_array_equal(ours.y_train, theirs[1][rows])
        np.testing.assert_allclose(ours.X_val, theirs[2], atol=1e-3)
        del ours, theirs

        t = alternate(
            {
                "svmtool": lambda: prepare_training(request),
                "loader": lambda: load_CIFAR10(root / "cifar-10-batches-py"),
                "notebook": lambda: cs231n_notebook(root / "cifar-10-batches-py"),
            },
            args.repeats,
        )
        opened = alternate({"open": lambda: cifar.load(root / "data")}, args.repeats)["open"]
    print("full-size CIFAR-format files (50,000 training + 10,000 test images)\n")
    print(f"  svmtool: open the uint8 cache (memory-mapped)            {fmt(opened)}")
    print(f"  A. svmtool: cache -> split -> float32 train/val rows     {fmt(t['svmtool'])}")
    print(f"  B. CS231n load_CIFAR10: unpickle 6 batches -> float64     {fmt(t['loader'])}")
    print(f"  C. B + the notebook's preprocessing (float64 rows)        {fmt(t['notebook'])}")
    b_over_a, c_over_a = t["loader"] / t["svmtool"], t["notebook"] / t["svmtool"]
    print(f"\n  B / A = {b_over_a:.2f}x    C / A = {c_over_a:.2f}x")


if __name__ == "__main__":
    main()
