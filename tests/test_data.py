"""Synthetic data, a user's .npz, the split, and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from svmtool.data import (
    Dataset,
    load_dataset,
    load_npz,
    mean_image,
    preprocess,
    split,
    split_sizes,
    synthetic,
)
from svmtool.errors import SvmtoolError


def test_synthetic_is_seeded_and_cifar_shaped():
    a, b = synthetic(n_train=100, n_test=20), synthetic(n_train=100, n_test=20)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert a.train_images.shape == (100, 32, 32, 3) and a.train_images.dtype == np.uint8
    assert a.train_labels.dtype == np.int64 and len(a.class_names) == 10
    assert not np.array_equal(
        a.train_images, synthetic(n_train=100, n_test=20, seed=1).train_images
    )


def test_cifar_sizes_are_the_cs231n_split():
    assert split_sizes(50_000, 10_000) == (49_000, 1_000, 1_000, 500)


def test_small_data_scales_down():
    assert split_sizes(5000, 1000) == (4500, 500, 1000, 500)
    assert split_sizes(60, 10) == (54, 6, 10, 54)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train": 4990, "num_val": 20}, "exceeds the 5000 training images"),
        ({"num_test": 2000}, "num_test = 2000 exceeds the 1000 test images"),
        ({"num_train": 0}, "num_train must be >= 1, got 0"),
        ({"num_val": -1}, "num_val must be >= 0, got -1"),
    ],
)
def test_impossible_sizes_are_clear_errors(kwargs, message):
    with pytest.raises(SvmtoolError, match=message):
        split_sizes(5000, 1000, **kwargs)


def test_split_indices():
    data = synthetic(n_train=2000, n_test=300)
    parts = split(data, seed=3)
    assert sorted(parts.train.tolist()) == list(range(1800))  # a permutation of the first N
    assert not np.array_equal(parts.train, np.arange(1800))
    np.testing.assert_array_equal(parts.val, np.arange(1800, 2000))  # the last images
    np.testing.assert_array_equal(parts.test, np.arange(300))
    assert parts.dev.size == 500 and np.isin(parts.dev, parts.train).all()
    np.testing.assert_array_equal(split(data, seed=3).train, parts.train)


def test_preprocess_matches_the_textbook_recipe():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 4, 5, 3), dtype=np.uint8)
    rows = rng.permutation(30)
    mean = mean_image(images, np.arange(30))
    textbook = images[:30].reshape(30, -1).astype(np.float64)
    np.testing.assert_allclose(mean.ravel(), textbook.mean(axis=0))
    expected = np.hstack([images[rows].reshape(30, -1) - textbook.mean(axis=0), np.ones((30, 1))])
    out64 = preprocess(images, mean, rows, np.float64)
    np.testing.assert_allclose(out64, expected, rtol=0, atol=1e-12)
    out32 = preprocess(images, mean, rows, np.float32)
    assert out32.dtype == np.float32 and out32.shape == (30, 61)
    np.testing.assert_allclose(out32, expected, atol=1e-4)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def good_arrays(h=8, w=6, c=1):
    rng = np.random.default_rng(0)
    return {
        "X_train": rng.integers(0, 256, (40, h, w, c), dtype=np.uint8),
        "y_train": rng.integers(0, 3, 40),
        "X_test": rng.integers(0, 256, (10, h, w, c), dtype=np.uint8),
        "y_test": rng.integers(0, 3, 10),
    }


def test_npz_dataset_any_shape(tmp_path):
    path = save_npz(tmp_path / "mine.npz", **good_arrays(), class_names=np.array(["a", "b", "c"]))
    data = load_dataset(str(path))
    assert isinstance(data, Dataset)
    assert data.image_shape == (8, 6, 1) and data.class_names == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"X_train": None}, "lacks X_train"),
        ({"y_train": np.zeros(39, dtype=int)}, r"y_train has shape \(39,\)"),
        ({"X_test": np.zeros((10, 8, 5, 1), np.uint8)}, "X_train images are"),
        ({"X_train": np.zeros((40, 8, 6), np.uint8)}, "must be uint8 N x H x W x C"),
        ({"X_train": np.zeros((40, 8, 6, 1), np.float32)}, "must be uint8"),
        ({"class_names": np.array(["a", "b"])}, "label 2 is out of range for 2 class_names"),
        ({"y_test": -np.ones(10, dtype=int)}, "labels must be >= 0"),
    ],
)
def test_npz_problems_are_clear(tmp_path, change, message):
    arrays = good_arrays()
    arrays["y_train"][0] = 2
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SvmtoolError, match=message):
        load_npz(path)


def test_npz_needing_pickle_is_refused(tmp_path):
    arrays = good_arrays()
    arrays["class_names"] = np.array([{"evil": 1}, 2, 3], dtype=object)
    path = save_npz(tmp_path / "pickled.npz", **arrays)
    with pytest.raises(SvmtoolError, match="refusing to unpickle"):
        load_npz(path)


def test_missing_or_corrupt_npz(tmp_path):
    with pytest.raises(SvmtoolError, match="not found"):
        load_npz(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SvmtoolError, match=r"is not an \.npz file"):
        load_npz(tmp_path / "junk.npz")


def test_unknown_source():
    with pytest.raises(SvmtoolError, match="--data must be cifar10, synthetic"):
        load_dataset("imagenet")
