"""train/evaluate/predict/visualize with --features hog and kmeans, the model file's
pipeline, and the feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.errors import SvmtoolError
from svmtool.evaluation import model_rows
from svmtool.io import model as model_io

runner = CliRunner()
KMEANS_SMALL = ("--centroids", "16", "--patches", "2000", "--kmeans-iters", "10")


def run(*args: str):
    return runner.invoke(app, list(args))


def stripes(n: int, shape, rng) -> tuple[np.ndarray, np.ndarray]:
    """Three classes: vertical, horizontal, diagonal stripes at a random phase and
    contrast, plus noise. Pixels at a fixed place do not tell the class; edges do."""
    h, w, c = shape
    labels = rng.integers(0, 3, n)
    yy, xx = np.mgrid[0:h, 0:w]
    images = np.empty((n, h, w, c))
    for i, label in enumerate(labels):
        coord = (xx, yy, xx + yy)[label]
        wave = np.sign(np.sin(2 * np.pi * coord / 6 + rng.uniform(0, 2 * np.pi)))
        images[i] = (128 + rng.uniform(30, 90) * wave)[..., None] + rng.normal(0, 20, (h, w, c))
    return np.clip(images, 0, 255).astype(np.uint8), labels


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    X_train, y_train = stripes(240, (16, 16, 3), rng)
    X_test, y_test = stripes(30, (16, 16, 3), rng)
    path = tmp_path / "stripes.npz"
    np.savez(path, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
             class_names=np.array(["vertical", "horizontal", "diagonal"]))  # fmt: skip
    return path


def train(npz, model, *extra):
    result = run("train", "--data", str(npz), "--model", str(model), "--iters", "300", *extra)
    assert result.exit_code == 0, result.output
    return result


def test_hog_end_to_end(npz, tmp_path):
    model_path = tmp_path / "hog.npz"
    train(npz, model_path, "--features", "hog")
    model = model_io.load(model_path)
    assert model.features.kind == "hog"
    # 4 cells x 9 bins, 10 hue bins, 4 cells x 3 colour means, bias
    assert model.W.shape == (2 * 2 * 9 + 10 + 2 * 2 * 3 + 1, 3)
    # the hog defaults, not the pixel ones: the L2-SVM, reg chosen on validation
    settings = model.settings
    assert settings["solver"] == "lbfgs" and settings["loss"] == "squared-hinge"
    assert settings["selection"]["method"] == "regularization path"
    chosen, refit = settings["selection"]["chosen_reg"], settings["selection"]["refit"]
    # refit on train + val: the chosen reg times N_train / N_all
    assert settings["reg"] == refit["reg"] == pytest.approx(chosen * 216 / 240)
    assert refit["rows"] == 240 and "lr" not in settings
    assert settings["features"] == "hog" and model.features.params["cell"] == 8
    assert model.metrics["val_accuracy"] > 0.8  # chance is 1/3
    evaluated = json.loads(run("evaluate", "--model", str(model_path), "--json").stdout)
    assert evaluated["count"] == 30 and evaluated["accuracy"] > 0.8

    pictures = run("visualize", "--model", str(model_path), "--out-dir", str(tmp_path / "v"))
    assert pictures.exit_code == 0, pictures.output
    assert "no image template" in pictures.output
    with Image.open(tmp_path / "v" / "hog_cells.png") as im:
        assert im.mode == "RGB"
    with Image.open(tmp_path / "v" / "00_vertical_hog_cells.png") as im:
        assert im.size == (2 * 32, 2 * 32)  # 2 x 2 cells, 8 px each, zoom 4

    checked = run("gradcheck", "--model", str(model_path), "--checks", "5")
    assert checked.exit_code == 0, checked.output


def test_kmeans_end_to_end_and_predict_equals_evaluate(npz, tmp_path):
    model_path = tmp_path / "km.npz"
    # Seed 1: with 24 validation images and a 16-centroid dictionary the accuracy varies
    # with the split (0.46..1.0 over seeds 0..11); seed 1 is a typical one (0.83).
    train(npz, model_path, "--features", "kmeans", *KMEANS_SMALL, "--lr", "0.1", "--reg", "1e-4",
          "--seed", "1")  # fmt: skip
    model = model_io.load(model_path)
    a = model.features.arrays
    assert model.features.kind == "kmeans" and a["centroids"].shape == (16, 108)
    assert model.W.shape == (4 * 16 + 1, 3)
    assert model.metrics["val_accuracy"] > 0.75  # chance is 1/3

    # The model alone predicts a PNG exactly as evaluate scores the same image.
    with np.load(npz) as data:
        image = data["X_test"][:1]
    Image.fromarray(image[0]).save(tmp_path / "one.png")
    predicted = run("predict", str(tmp_path / "one.png"), "--model", str(model_path), "--top", "3")
    assert predicted.exit_code == 0, predicted.output
    scores = (model_rows(model, image) @ model.W)[0]
    label = model.class_names[int(scores.argmax())]
    assert label in predicted.stdout.splitlines()[3]
    for name, score in zip(model.class_names, scores, strict=True):
        assert f"{name} {score:.2f}" in predicted.stdout

    one = tmp_path / "one.npz"
    np.savez(one, X_train=np.repeat(image, 240, 0), y_train=np.arange(240) % 3,
             X_test=image, y_test=np.array([int(scores.argmax())]),
             class_names=np.array(model.class_names))  # fmt: skip
    evaluated = run("evaluate", "--model", str(model_path), "--data", str(one), "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == 1.0

    pictures = run("visualize", "--model", str(model_path), "--out-dir", str(tmp_path / "v"))
    assert pictures.exit_code == 0, pictures.output
    with Image.open(tmp_path / "v" / "centroids.png") as im:
        assert im.size == (4 * 25 + 1, 4 * 25 + 1)  # 16 patches in a 4 x 4 grid, 6 px x 4


def test_feature_cache_is_reused_and_invalidated_by_a_setting(npz, tmp_path):
    first = train(npz, tmp_path / "a.npz", "--features", "kmeans", *KMEANS_SMALL)
    assert "stored in the feature cache" in first.output and "read from" not in first.output
    second = train(npz, tmp_path / "b.npz", "--features", "kmeans", *KMEANS_SMALL)
    assert "k-means dictionary read from the feature cache" in second.output
    assert "features of 240 images read from the feature cache" in second.output
    a, b = model_io.load(tmp_path / "a.npz"), model_io.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.features.arrays["centroids"], b.features.arrays["centroids"])

    # evaluate on the validation split reads the entry train stored, and agrees with train
    evaluated = run("evaluate", "--model", str(tmp_path / "a.npz"), "--split", "val", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert "features of 240 images read from the feature cache" in evaluated.output
    assert json.loads(evaluated.stdout)["accuracy"] == a.metrics["val_accuracy"]

    changed = train(npz, tmp_path / "c.npz", "--features", "kmeans", "--centroids", "9",
                    "--patches", "2000", "--kmeans-iters", "5")  # fmt: skip
    assert "read from" not in changed.output
    reseeded = train(npz, tmp_path / "d.npz", "--features", "kmeans", *KMEANS_SMALL, "--seed", "1")
    assert "read from" not in reseeded.output
    uncached = train(npz, tmp_path / "e.npz", "--features", "kmeans", *KMEANS_SMALL, "--no-cache")
    assert "feature cache" not in uncached.output

    # A damaged entry is a miss, and the next run replaces it.
    cache = tmp_path / "cache"  # $SVMTOOL_CACHE_DIR (conftest)
    for meta in cache.glob("*/meta.json"):
        meta.write_text("{broken")
    again = train(npz, tmp_path / "f.npz", "--features", "kmeans", *KMEANS_SMALL)
    assert "read from" not in again.output
    np.testing.assert_array_equal(model_io.load(tmp_path / "f.npz").W, a.W)


def test_grayscale_six_by_six_works_with_every_feature_set(tmp_path):
    rng = np.random.default_rng(1)
    X, y = stripes(200, (6, 7, 1), rng)
    path = tmp_path / "small.npz"
    np.savez(path, X_train=X[:180], y_train=y[:180], X_test=X[180:], y_test=y[180:])
    for features in ("hog", "kmeans"):
        model_path = tmp_path / f"{features}.npz"
        train(path, model_path, "--features", features, "--centroids", "4", "--patches", "500")
        model = model_io.load(model_path)
        # grayscale: no hue bins; hog: one cell, its 9 bins and its mean
        expected = 9 + 1 + 1 if features == "hog" else 4 * 4 + 1
        assert model.W.shape == (expected, 3)
        assert run("evaluate", "--model", str(model_path)).exit_code == 0
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "p.png")
        assert run("predict", str(tmp_path / "p.png"), "--model", str(model_path)).exit_code == 0


def test_old_pixel_models_still_load(tmp_path, npz):
    model_path = tmp_path / "m.npz"
    train(npz, model_path)
    with np.load(model_path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "features"}
    arrays["format_version"] = np.array(1)
    np.savez(model_path, **arrays)
    model = model_io.load(model_path)
    assert model.features.kind == "pixels"
    assert run("evaluate", "--model", str(model_path)).exit_code == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": np.array('{"kind": "sift"}')}, "unknown features"),
        ({"features": np.array("{nope")}, "damaged feature description"),
        ({"feature_centroids": np.zeros((16, 107), np.float32)}, "centroids have shape"),
        ({"feature_scale": None}, "lack scale"),
        ({"feature_mean": np.full(64, np.nan)}, "feature_mean holds NaN"),
    ],
)
def test_damaged_feature_pipelines_are_refused(tmp_path, npz, change, message):
    model_path = tmp_path / "km.npz"
    train(npz, model_path, "--features", "kmeans", *KMEANS_SMALL, "--no-cache")
    with np.load(model_path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for key, value in change.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(model_path, **arrays)
    with pytest.raises(SvmtoolError, match=message):
        model_io.load(model_path)
    result = run("evaluate", "--model", str(model_path))
    assert result.exit_code == 1 and result.output.startswith("Error: ")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--features", "sift"), "'--features': 'sift' is not one of"),
        (("--features", "kmeans", "--centroids", "0"), "'--centroids': must be >= 1"),
        (("--features", "kmeans", "--centroids", "50", "--patches", "10"), "'--patches': must"),
        (("--features", "hog", "--lr-decay", "0"), "'--lr-decay': must be in (0, 1]"),
    ],
)
def test_bad_feature_options(npz, tmp_path, args, fragment):
    result = run("train", "--data", str(npz), "--model", str(tmp_path / "m.npz"), *args)
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_kmeans_needs_six_pixels(tmp_path):
    X = np.zeros((40, 5, 8, 1), np.uint8)
    path = tmp_path / "tiny.npz"
    np.savez(path, X_train=X, y_train=np.arange(40) % 2, X_test=X[:4], y_test=np.arange(4) % 2)
    result = run("train", "--data", str(path), "--features", "kmeans")
    assert result.exit_code == 1 and "at least 6 x 6" in result.output


def test_kmeans_without_patches_learns_from_a_sample_scaled_to_the_data(npz, tmp_path):
    model_path = tmp_path / "k.npz"
    train(npz, model_path, "--features", "kmeans", "--centroids", "16", "--reg", "1")
    params = model_io.load(model_path).features.params
    # 216 training images: 8 per image is 1,728, above 64 per centroid (1,024)
    assert params["patches"] == 8 * 216 and params["kmeans_tol"] == 1e-4
