"""Synthetic data, a user's .npz, the split, and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from svmtool.core import threads
from svmtool.errors import SvmtoolError
from svmtool.io import data
from svmtool.io.data import (
    Dataset,
    load_dataset,
    load_npz,
    mean_image,
    preprocess,
    split,
    split_sizes,
    stratified_sample,
    synthetic,
)


def test_synthetic_is_seeded_and_cifar_shaped():
    a, b = synthetic(n_train=100, n_test=20), synthetic(n_train=100, n_test=20)
    np.testing.assert_array_equal(a.train_images, b.train_images)
    assert a.train_images.shape == (100, 32, 32, 3) and a.train_images.dtype == np.uint8
    assert a.train_labels.dtype == np.int64 and len(a.class_names) == 10
    assert not np.array_equal(
        a.train_images, synthetic(n_train=100, n_test=20, seed=1).train_images
    )


def test_cifar_sizes_are_the_cs231n_split_with_the_whole_test_set():
    assert split_sizes(50_000, 10_000) == (49_000, 1_000, 10_000, 500)
    assert split_sizes(50_000, 10_000, num_test=1000) == (49_000, 1_000, 1_000, 500)


def test_every_image_not_in_validation_trains():
    # Fashion-MNIST's 60,000: no 49,000 cap; 1,000 validate, 59,000 train.
    assert split_sizes(60_000, 10_000) == (59_000, 1_000, 10_000, 500)
    assert split_sizes(5000, 1000) == (4500, 500, 1000, 500)
    assert split_sizes(60, 10) == (54, 6, 10, 54)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_train": 4990, "num_val": 20}, "exceeds the 5000 training images"),
        ({"num_test": 2000}, "num_test = 2000 exceeds the 1000 test images"),
        ({"num_train": 0}, "--num-train: must be >= 1, got 0"),
        ({"num_val": -1}, "--num-val: must be >= 0, got -1"),
    ],
)
def test_impossible_sizes_are_clear_errors(kwargs, message):
    with pytest.raises(SvmtoolError, match=message):
        split_sizes(5000, 1000, **kwargs)


def cifar_like(n_train: int, n_test: int, source: str) -> Dataset:
    data = synthetic(n_train=n_train, n_test=n_test)
    data.source = source
    return data


def test_cifar10_keeps_cs231n_split_by_position():
    data = cifar_like(2000, 300, "cifar10")
    parts = split(data, seed=3)
    assert parts.rule == "cs231n"
    assert sorted(parts.train.tolist()) == list(range(1800))  # a permutation of the first N
    assert not np.array_equal(parts.train, np.arange(1800))
    np.testing.assert_array_equal(parts.val, np.arange(1800, 2000))  # the last images
    np.testing.assert_array_equal(parts.test, np.arange(300))  # the whole test set
    assert parts.dev.size == 500 and np.isin(parts.dev, parts.train).all()
    np.testing.assert_array_equal(split(data, seed=3).train, parts.train)
    np.testing.assert_array_equal(split(data, seed=4).val, parts.val)  # seed-independent
    small = split(data, seed=3, num_train=500, num_val=100, num_test=100)
    assert sorted(small.train.tolist()) == list(range(500))  # CS231n: the first num_train
    np.testing.assert_array_equal(small.val, np.arange(1900, 2000))
    np.testing.assert_array_equal(small.test, np.arange(100))


def test_other_data_is_split_stratified_and_seeded():
    data = synthetic(n_train=2000, n_test=300)
    parts = split(data, seed=3)
    assert parts.rule == "stratified"
    assert parts.train.size == 1800 and parts.val.size == 200 and parts.test.size == 300
    assert np.intersect1d(parts.train, parts.val).size == 0
    assert np.union1d(parts.train, parts.val).size == 2000  # every other image trains
    assert not np.array_equal(parts.val, np.arange(1800, 2000))  # not by position
    # Each class is represented in proportion to its count (largest remainders).
    val_counts = np.bincount(data.train_labels[parts.val], minlength=10)
    expected = 200 * np.bincount(data.train_labels, minlength=10) / 2000
    assert np.all(np.abs(val_counts - expected) < 1)
    assert parts.dev.size == 500 and np.isin(parts.dev, parts.train).all()
    again = split(data, seed=3)
    np.testing.assert_array_equal(again.val, parts.val)
    np.testing.assert_array_equal(again.train, parts.train)
    assert not np.array_equal(split(data, seed=4).val, parts.val)
    assert parts.warnings == []


def test_label_sorted_data_validates_on_every_class():
    """Data saved sorted by label (a common layout) used to validate on one class."""
    data = synthetic(n_train=1000, n_test=100)
    order = np.argsort(data.train_labels, kind="stable")
    data.train_images, data.train_labels = data.train_images[order], data.train_labels[order]
    parts = split(data, seed=0)
    assert set(data.train_labels[parts.val].tolist()) == set(range(10))
    assert set(data.train_labels[parts.train].tolist()) == set(range(10))
    assert parts.warnings == []


def test_stratified_sample_sizes_and_rare_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), [970, 20, 8, 2])
    sample = stratified_sample(labels, 100, rng)
    assert sample.size == 100 and np.unique(sample).size == 100
    np.testing.assert_array_equal(np.bincount(labels[sample], minlength=4), [97, 2, 1, 0])
    # A class of one image keeps it for training.
    one = np.array([0] * 9 + [1])
    assert 9 not in stratified_sample(one, 5, rng)
    assert stratified_sample(labels, 0, rng).size == 0


def test_a_split_lacking_a_class_is_warned_about():
    data = synthetic(n_train=200, n_test=20)
    data.train_labels = np.where(data.train_labels == 3, 2, data.train_labels)  # no class 3
    data.train_labels[:2] = 7  # class 7 is rare, so 20 val images may miss it
    data.train_labels[2:] = np.where(data.train_labels[2:] == 7, 6, data.train_labels[2:])
    parts = split(data, seed=0)
    assert any("have no training images" in w and "stripes-054deg" in w for w in parts.warnings)
    assert any("validation split" in w and "stripes-126deg" in w for w in parts.warnings)


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


@pytest.mark.parametrize("chunk", [4096, 300])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_preprocess_is_bit_identical_to_the_one_formula_in_every_row_order(
    dtype, chunk, monkeypatch
):
    # More rows than one gathered block (512) and one converted block (32), with a
    # permutation, a consecutive run (taken as a view), repeats and the default order;
    # with chunk 300 the rows are shared among threads on every core, in chunks
    # that do not fall on the blocks' edges.
    monkeypatch.setattr(data, "CHUNK_ROWS", chunk)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (1300, 2, 3, 3), dtype=np.uint8)
    mean = mean_image(images, np.arange(1200))
    flat = images.reshape(1300, -1)
    for rows in [rng.permutation(1200), np.arange(100, 1250), np.array([5, 5, 7, 6, 5]), None]:
        chosen = flat if rows is None else flat[rows]
        expected = np.ones((chosen.shape[0], 19), dtype=dtype)
        expected[:, :18] = chosen.astype(dtype) - mean.reshape(-1).astype(dtype)
        got = preprocess(images, mean, rows, dtype)
        assert got.dtype == dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="rows must be in"):
        preprocess(images, mean, np.array([0, 1300]))


@pytest.mark.parametrize("chunk", [4096, 300])
def test_mean_image_is_exact_over_any_rows(chunk, monkeypatch):
    monkeypatch.setattr(data, "CHUNK_ROWS", chunk)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    rng = np.random.default_rng(2)
    images = rng.integers(250, 256, (1000, 2, 2, 3), dtype=np.uint8)  # sums near uint16's top
    for rows in [None, rng.permutation(1000)[:700], np.arange(3, 900), np.array([4, 4, 9])]:
        chosen = images if rows is None else images[rows]
        expected = chosen.reshape(len(chosen), -1).mean(axis=0, dtype=np.float64)
        np.testing.assert_array_equal(mean_image(images, rows).reshape(-1), expected)


def test_the_first_loss_matches_the_textbook_pipeline():
    # CS231n's iteration-0 loss (about 790 on CIFAR-shaped rows) from our float32
    # rows and from the notebook's float64 ones agree to float32 rounding.
    from svmtool.core.loss import svm_loss

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (600, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 600)
    rows = rng.permutation(500)
    ours = preprocess(images, mean_image(images, np.arange(500)), rows)
    textbook = images[:500].reshape(500, -1).astype(np.float64)
    textbook = np.hstack([textbook - textbook.mean(axis=0), np.ones((500, 1))])[rows]
    W = 0.001 * np.random.default_rng(0).standard_normal((3073, 10))
    loss64, _ = svm_loss(W, textbook, labels[rows], 2.5e4)
    loss32, _ = svm_loss(W.astype(np.float32), ours, labels[rows], 2.5e4)
    assert 700 < loss64 < 900
    assert abs(loss32 - loss64) < 1e-5 * loss64


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
        ({"X_train": np.zeros((40, 8, 6, 1, 1), np.uint8)}, "reads uint8 images, N x H x W x C"),
        ({"X_train": np.full((40, 8, 6, 1), 300.0)}, r"values in \[300.0, 300.0\].*scale to"),
        ({"X_train": np.zeros((40, 50), np.uint8)}, "reshape each row to H x W x C"),
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
    with pytest.raises(SvmtoolError, match=r"'imagenet' is not a dataset name \(cifar10, "):
        load_dataset("imagenet")


def fix_from_message(message: str, name: str) -> str:
    """The numpy expression an error tells the user to save as ``name``."""
    return message.split(f"save {name}=", 1)[1].split(" (pixel after pixel")[0]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        # Keras' (N, H, W) float images in [0, 1]
        (lambda x: x[..., 0] / 255.0, "save X_train=(X_train * 255).round().astype(np.uint8)"),
        (lambda x: x.astype(np.float32), "save X_train=X_train.round().astype(np.uint8)"),
        (lambda x: x.astype(np.int64), "save X_train=X_train.astype(np.uint8)"),
        (lambda x: x.reshape(40, -1), "if they are 28 x 28 grayscale, save X_train=X_train.resh"),
        (
            lambda x: x.transpose(0, 3, 1, 2),
            "save X_train=X_train.transpose(0, 2, 3, 1)",
        ),  # PyTorch
    ],
)
def test_common_layouts_get_the_exact_fix(tmp_path, make, fragment):
    arrays = good_arrays(28, 28, 1)
    arrays["X_train"] = make(arrays["X_train"])
    path = save_npz(tmp_path / "layout.npz", **arrays)
    with pytest.raises(SvmtoolError) as caught:
        load_npz(path)
    message = str(caught.value)
    assert fragment in message and "\n" not in message
    # The advice works: the expression it names gives data svmtool loads.
    fixed = eval(fix_from_message(message, "X_train"), {"np": np, "X_train": arrays["X_train"]})
    save_npz(path, **{**arrays, "X_train": fixed})
    assert load_npz(path).train_images.dtype == np.uint8


def test_flat_colour_rows_are_read_as_cifar_planes(tmp_path):
    arrays = good_arrays(32, 32, 3)
    planes = arrays["X_train"].transpose(0, 3, 1, 2).reshape(40, -1)  # CIFAR's row layout
    path = save_npz(tmp_path / "flat.npz", **{**arrays, "X_train": planes / 255.0})
    with pytest.raises(SvmtoolError, match="32 x 32 colour stored as channel planes") as caught:
        load_npz(path)
    fixed = eval(
        fix_from_message(str(caught.value), "X_train"), {"np": np, "X_train": planes / 255}
    )
    np.testing.assert_array_equal(fixed, arrays["X_train"])


def test_missing_channel_axis_is_added(tmp_path):
    arrays = good_arrays(28, 28, 1)
    arrays["X_train"], arrays["X_test"] = arrays["X_train"][..., 0], arrays["X_test"][..., 0]
    data = load_npz(save_npz(tmp_path / "keras.npz", **arrays))
    assert data.image_shape == (28, 28, 1) and data.test_images.shape == (10, 28, 28, 1)


@pytest.mark.parametrize(
    ("labels", "names", "message"),
    [
        (lambda y: y + 1.0, None, r"y_train must hold integers.*save y_train=y_train.astype"),
        (lambda y: y + 0.5, None, r"y_train must hold integers, got float64$"),
        (lambda y: y + 1, None, "labels run 1..3 and no image is labelled 0.*y_train - 1"),
        (lambda y: y + 1, ["a", "b", "c"], "out of range for 3 class_names.*y_train - 1"),
        (lambda y: np.where(y == 2, 10**9, y), None, "label 1000000000 in y_train.*at most"),
    ],
)
def test_label_problems_say_what_to_do(tmp_path, labels, names, message):
    arrays = good_arrays()
    arrays["y_train"], arrays["y_test"] = labels(arrays["y_train"]), labels(arrays["y_test"])
    if names:
        arrays["class_names"] = np.array(names)
    path = save_npz(tmp_path / "labels.npz", **arrays)
    with pytest.raises(SvmtoolError, match=message):
        load_npz(path)


def test_a_label_gap_loads_and_the_split_warns(tmp_path):
    arrays = good_arrays()
    arrays["y_train"] = np.where(arrays["y_train"] == 1, 0, arrays["y_train"])  # no class1
    arrays["y_test"] = np.where(arrays["y_test"] == 1, 0, arrays["y_test"])
    data = load_npz(save_npz(tmp_path / "gap.npz", **arrays))
    assert data.class_names == ["class0", "class1", "class2"]
    assert any("'class1'" in w and "no training images" in w for w in split(data).warnings)


def test_fashion_mnist_sized_split_uses_every_image():
    """60,000 + 10,000 images, label-sorted, as Fashion-MNIST is often saved; the pixels
    are a broadcast view, so this costs the index arithmetic only."""
    labels = np.repeat(np.arange(10), 6000)
    pixels = np.broadcast_to(np.zeros((1, 28, 28, 1), np.uint8), (60_000, 28, 28, 1))
    test = np.broadcast_to(np.zeros((1, 28, 28, 1), np.uint8), (10_000, 28, 28, 1))
    data = Dataset(pixels, labels, test, np.zeros(10_000, np.int64), [str(k) for k in range(10)],
                   "fashion.npz")  # fmt: skip
    parts = split(data, seed=0)
    assert (parts.train.size, parts.val.size, parts.test.size) == (59_000, 1_000, 10_000)
    np.testing.assert_array_equal(np.bincount(labels[parts.val]), [100] * 10)
    assert np.union1d(parts.train, parts.val).size == 60_000 and parts.warnings == []
