"""train's choice of loss, solver and settings; the L2-SVM model through every command."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.core.features import Features
from svmtool.errors import SvmtoolError
from svmtool.io import model as model_io
from svmtool.trainplan import TRAIN_DEFAULTS, default_patches, train_plan

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_plan_keeps_cs231n_for_pixels_and_selects_for_features():
    pixels = train_plan("pixels", None, None, None, None, False)
    assert pixels["solver"] == "sgd" and pixels["loss"] == "hinge" and not pixels["tune"]
    assert pixels["lrs"] == [1e-7] and pixels["regs"] == [2.5e4] and pixels["iters"] == 1500
    for kind in ("hog", "kmeans"):
        plan = train_plan(kind, None, None, None, None, False)
        assert plan["solver"] == "lbfgs" and plan["tune"] and plan["loss"] == "squared-hinge"
        # --lr means SGD on the notes' hinge, as before
        sgd = train_plan(kind, "0.01", None, None, None, False)
        assert sgd["solver"] == "sgd" and sgd["loss"] == "hinge" and not sgd["tune"]
        assert sgd["regs"] == [TRAIN_DEFAULTS[kind]["reg"]]
    tuned = train_plan("pixels", None, None, None, None, True)
    assert tuned["solver"] == "lbfgs" and tuned["tune"]
    # --tune with --lr: an SGD grid bounded by the given values
    grid = train_plan("pixels", "1e-7,1e-5", "1e3,1e5", None, None, True)
    assert grid["solver"] == "sgd" and grid["lrs"] == pytest.approx([1e-7, 1e-6, 1e-5])
    assert grid["regs"] == pytest.approx([1e3, 1e4, 1e5])
    fixed = train_plan("kmeans", None, "0.5", "hinge", None, False)
    assert fixed == {**fixed, "solver": "lbfgs", "regs": [0.5], "loss": "hinge", "tune": False}
    with pytest.raises(SvmtoolError, match="--lr: applies to --solver sgd"):
        train_plan("hog", "0.1", None, None, "lbfgs", False)
    with pytest.raises(SvmtoolError, match="--loss: 'l1' is not one of hinge, squared-hinge"):
        train_plan("hog", None, None, "l1", None, False)


def blobs_npz(path, shape=(8, 8, 1), n=300, seed=0):
    """Three classes of images, each a fixed random pattern plus noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 255, (3, *shape))

    def images(count):
        y = rng.integers(0, 3, count)
        X = patterns[y] + rng.normal(0, 90, (count, *shape))
        return np.clip(X, 0, 255).astype(np.uint8), y

    (X_train, y_train), (X_test, y_test) = images(n), images(60)
    np.savez(path, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
             class_names=np.array(["a", "b", "c"]))  # fmt: skip
    return path


def test_pixels_default_on_other_data_says_the_settings_are_cifars(tmp_path):
    data = blobs_npz(tmp_path / "blobs.npz")
    result = run("train", "--data", str(data), "--model", str(tmp_path / "m.npz"), "--iters", "20")
    assert result.exit_code == 0, result.output
    assert "CS231n's for CIFAR-10, not chosen for this data" in result.output
    assert f"run: svmtool train --data {data} --tune" in result.output
    # Settings the user chose are theirs: no such note.
    chosen = run("train", "--data", str(data), "--model", str(tmp_path / "m.npz"),
                 "--iters", "20", "--lr", "1e-7")  # fmt: skip
    assert chosen.exit_code == 0 and "not chosen for this data" not in chosen.output


def test_tune_on_pixels_records_the_path_and_a_squared_hinge_model_agrees_everywhere(tmp_path):
    data = blobs_npz(tmp_path / "blobs.npz")
    model_path = tmp_path / "m.npz"
    result = run("train", "--data", str(data), "--model", str(model_path), "--tune", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["settings"]["loss"] == "squared-hinge" and doc["settings"]["solver"] == "lbfgs"
    sel = doc["selection"]
    assert sel["method"] == "regularization path" and sel["tried"] == len(doc["grid"]) >= 3
    chosen = [g for g in doc["grid"] if g.get("best")]
    assert len(chosen) == 1 and chosen[0]["reg"] == sel["chosen_reg"]
    assert chosen[0]["val_accuracy"] == max(g["val_accuracy"] for g in doc["grid"])
    # The chosen reg is then solved on train + val (the refit), reg scaled by N_train / N_all.
    sizes, refit = doc["sizes"], sel["refit"]
    assert refit["rows"] == sizes["train"] + sizes["val"]
    assert (
        doc["settings"]["reg"]
        == refit["reg"]
        == pytest.approx(sel["chosen_reg"] * sizes["train"] / refit["rows"])
    )
    assert doc["metrics"]["objective"] == refit["objective"] and doc["metrics"]["converged"]
    assert doc["settings"]["bias"] == "free"  # pixels: the bias is not penalized

    model = model_io.load(model_path)
    assert model.loss == "squared-hinge"
    # predict, file by file, gives the classes evaluate counts.
    with np.load(data) as npz:
        X_test, y_test = npz["X_test"], npz["y_test"]
    paths = []
    for i, image in enumerate(X_test):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image[..., 0]).save(paths[-1])
    predicted = run("predict", *paths, "--model", str(model_path), "--json")
    assert predicted.exit_code == 0, predicted.output
    labels = [p["prediction"] for p in json.loads(predicted.stdout)["predictions"]]
    index = np.array([model.class_names.index(label) for label in labels])
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (y_test, index), 1)
    evaluated = run("evaluate", "--model", str(model_path), "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["confusion"] == confusion.tolist()
    pictures = run("visualize", "--model", str(model_path), "--out-dir", str(tmp_path / "v"))
    assert pictures.exit_code == 0, pictures.output


def test_tune_standardizes_pixels_and_every_command_scores_the_rows_train_did(tmp_path):
    from svmtool.commands.visualize import pictures_of
    from svmtool.core.features import standardization
    from svmtool.core.train import accuracy
    from svmtool.evaluation import model_rows
    from svmtool.io import images
    from svmtool.io.data import load_dataset, split
    from svmtool.pipeline import prepare_training
    from svmtool.trainplan import TrainRequest

    data = blobs_npz(tmp_path / "blobs.npz")
    model_path = tmp_path / "m.npz"
    result = run("train", "--data", str(data), "--model", str(model_path), "--tune")
    assert result.exit_code == 0, result.output
    assert "pixels, standardized per pixel" in result.output
    model = model_io.load(model_path)
    params, arrays = model.features.params, model.features.arrays
    assert params["standardized"] and params["std_eps"] > 0
    # Learned on the training rows only: each pixel's mean and spread there.
    dataset = load_dataset(str(data), None)
    parts = split(dataset, seed=0)
    flat = dataset.train_images.reshape(dataset.train_images.shape[0], -1)
    mean, plain = standardization(flat, 0.0, parts.train)
    np.testing.assert_allclose(arrays["mean"], mean)
    np.testing.assert_allclose(arrays["scale"] ** 2, plain**2 + params["std_eps"])
    assert params["std_eps"] == pytest.approx(0.1 * np.mean(plain**2))
    # The rows evaluate (and predict, gradcheck) build are the ones train solved on.
    request = TrainRequest(lrs=[], regs=[], data=str(data), solver="lbfgs", tune=True)
    prepared = prepare_training(request)
    np.testing.assert_array_equal(model_rows(model, dataset.train_images, parts.val),
                                  prepared.X_val)  # fmt: skip
    evaluated = run("evaluate", "--model", str(model_path), "--split", "val", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(
        float(accuracy(model.W, prepared.X_val, prepared.y_val))
    )
    # visualize shows W in pixel space: each weight over its pixel's scale.
    folded = model.W.astype(np.float64)
    folded[:-1] /= arrays["scale"][:, None]
    files = pictures_of(model, "global", 1)
    expected = images.to_pil(images.templates(folded, model.image_shape)[0], 1)
    assert np.array_equal(np.asarray(files["00_a.png"]), np.asarray(expected))
    plain_files = pictures_of(dataclasses.replace(model, features=Features()), "global", 1)
    assert not np.array_equal(np.asarray(plain_files["00_a.png"]), np.asarray(expected))
    # CS231n's recipe (pixels without --tune) keeps the raw rows and format 2.
    sgd = run("train", "--data", str(data), "--model", str(tmp_path / "s.npz"), "--iters", "5")
    assert sgd.exit_code == 0, sgd.output
    assert model_io.load(tmp_path / "s.npz").features == Features()
    assert int(np.load(tmp_path / "s.npz")["format_version"]) == model_io.FORMAT_VERSION


def test_the_table_marks_the_chosen_reg(tmp_path):
    data = blobs_npz(tmp_path / "blobs.npz")
    result = run("train", "--data", str(data), "--model", str(tmp_path / "m.npz"), "--tune",
                 "--reg", "1e2,1e4")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "reg path (L-BFGS to convergence" in result.output and "chosen" in result.output
    assert "refit on train + val" in result.output and "objective (train + val)" in result.output
    model = model_io.load(tmp_path / "m.npz")
    assert model.settings["selection"]["range"] == [1e4, 1e2]
    assert 1e2 <= model.settings["reg"] <= 1e4
    # half a decade apart, the bounds included; the path may stop early
    assert len(model.grid) + len(model.settings["selection"]["skipped"]) == 5


def test_model_loss_is_validated_and_old_files_are_hinge(tmp_path):
    data = blobs_npz(tmp_path / "blobs.npz")
    path = tmp_path / "m.npz"
    assert run("train", "--data", str(data), "--model", str(path), "--iters", "5").exit_code == 0
    model = model_io.load(path)
    assert model.loss == "hinge"
    del model.settings["loss"]  # a file from before the option
    model_io.save(model, path)
    assert model_io.load(path).loss == "hinge"
    # A file that says another loss is refused (on load; save refuses to write one).
    with np.load(path, allow_pickle=False) as npz:
        arrays = dict(npz)
    arrays["settings"] = np.array(json.dumps({**model.settings, "loss": "cubic"}))
    np.savez(path, **arrays)
    with pytest.raises(SvmtoolError, match="setting loss is 'cubic', not hinge or squared-hinge"):
        model_io.load(path)


def test_hog_cells_fit_28_pixel_images_and_say_so(tmp_path):
    data = blobs_npz(tmp_path / "f.npz", shape=(28, 28, 1), n=120)
    result = run("train", "--data", str(data), "--model", str(tmp_path / "m.npz"),
                 "--features", "hog", "--reg", "1")  # fmt: skip
    assert result.exit_code == 0, result.output
    # 4 x 4 cells x 9 bins, and each cell's mean
    assert "hog (7x7-pixel cells, cell colours, 160 values)" in result.output
    model = model_io.load(tmp_path / "m.npz")
    assert model.features.params["cell"] == 7 and model.W.shape == (161, 3)


def test_kmeans_patches_scale_with_the_training_images():
    # Coates et al.'s 8 per image (400,000 for 50,000), at least 64 per centroid
    assert default_patches(50_000, 1600) == 400_000
    assert default_patches(49_000, 1600) == 392_000
    assert default_patches(3_438, 1600) == 64 * 1600
    assert default_patches(500_000, 1600) == 400_000  # never more than before
    assert default_patches(10, 4) == 256
    assert default_patches(10, 500_000) == 500_000  # never fewer than the centroids
