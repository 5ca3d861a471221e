"""The model file: round trip, no pickle, clear errors, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from svmtool.errors import SvmtoolError
from svmtool.io import model as model_io
from svmtool.io.model import Model


def small_model(shape=(4, 3, 3), classes=("a", "b", "c")) -> Model:
    rng = np.random.default_rng(0)
    d = int(np.prod(shape))
    return Model(
        W=rng.standard_normal((d + 1, len(classes))).astype(np.float32),
        mean_image=rng.random(shape).astype(np.float32),
        class_names=list(classes),
        settings={"lr": 1e-7, "reg": 2.5e4, "data": "synthetic", "seed": 0},
        metrics={"val_accuracy": 0.5},
        loss_history=np.linspace(9, 5, 20),
        grid=[{"lr": 1e-7, "reg": 2.5e4, "val_accuracy": 0.5}],
    )


def test_round_trip_without_pickle(tmp_path):
    original = small_model()
    path = model_io.save(original, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as npz:  # loads with pickle off
        assert set(npz.files) == {*model_io.REQUIRED, "features"}
    loaded = model_io.load(path)
    np.testing.assert_array_equal(loaded.W, original.W)
    assert loaded.W.dtype == np.float32
    np.testing.assert_array_equal(loaded.mean_image, original.mean_image)
    assert loaded.class_names == ["a", "b", "c"]
    assert loaded.settings == original.settings and loaded.grid == original.grid
    np.testing.assert_array_equal(loaded.loss_history, original.loss_history)
    assert loaded.image_shape == (4, 3, 3)


def test_write_leaves_no_temporary_files(tmp_path):
    model_io.save(small_model(), tmp_path / "m.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    model_io.save(small_model(), path)
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(OSError, match="disk full"):
        model_io.save(small_model(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def rewrite(path, **changes):
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": np.array(99)}, "model format 99"),
        ({"W": None}, "lacks W"),
        ({"W": np.zeros((5, 3), np.float32)}, "inconsistent"),
        ({"class_names": np.array(["a", "b"])}, "inconsistent"),
        ({"settings": np.array("{not json")}, "damaged metadata"),
        ({"grid": np.array([object()], dtype=object)}, "refusing to unpickle"),
    ],
)
def test_bad_model_files(tmp_path, changes, message):
    path = model_io.save(small_model(), tmp_path / "m.npz")
    rewrite(path, **changes)
    with pytest.raises(SvmtoolError, match=message):
        model_io.load(path)


def test_missing_model_says_how_to_make_one(tmp_path):
    with pytest.raises(SvmtoolError, match="svmtool train"):
        model_io.load(tmp_path / "none.npz")


def test_save_into_a_folder_is_refused(tmp_path):
    with pytest.raises(SvmtoolError, match="is a folder"):
        model_io.save(small_model(), tmp_path)
