"""Untrusted inputs, round three: model files that carry a feature pipeline, size
options that would exhaust memory, class names (duplicate, empty, 300 characters
long) and Ctrl-C during download's cleanup. Each problem is one line naming the
field or option, never a traceback or an internal error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import cifar_archive, make_tiny, md5, run_limited
from PIL import Image
from test_model import rewrite
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.core.features import Features
from svmtool.errors import SvmtoolError
from svmtool.io import cifar
from svmtool.io import model as model_io
from svmtool.io.model import Model

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    assert "internal error" not in result.output and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- model files with a feature pipeline ----------------------------------------------

K, P = 4, 6 * 6 * 3  # centroids, patch length (6 x 6 x RGB)


def kmeans_model() -> Model:
    """A small, valid kmeans model for 8 x 8 RGB images (built, not trained)."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((P, P))
    whiten = q @ q.T / P + np.eye(P)  # symmetric positive definite
    arrays = {
        "centroids": rng.standard_normal((K, P)).astype(np.float32),
        "whiten_mean": rng.standard_normal(P),
        "whiten": whiten,
        "mean": rng.standard_normal(4 * K),
        "scale": rng.uniform(0.5, 2, 4 * K),
    }
    return Model(
        W=rng.standard_normal((4 * K + 1, 3)).astype(np.float32),
        mean_image=np.full((8, 8, 3), 128.0),
        class_names=["a", "b", "c"],
        settings={"data": "synthetic", "seed": 0},
        features=Features("kmeans", {"centroids": K, "patch": 6, "std_eps": 0.01}, arrays),
    )


def hog_model() -> Model:
    rng = np.random.default_rng(1)
    f = 9 + 10  # one 8 x 8 cell of 9 orientations, 10 hue bins
    return Model(
        W=rng.standard_normal((f + 1, 3)).astype(np.float32),
        mean_image=np.full((8, 8, 3), 128.0),
        class_names=["a", "b", "c"],
        settings={"data": "synthetic", "seed": 0},
        features=Features("hog", {"orientations": 9}, {"mean": np.zeros(f), "scale": np.ones(f)}),
    )


def pixels_model() -> Model:
    """A model of standardized 8 x 8 RGB pixels (what train --tune saves for pixels)."""
    rng = np.random.default_rng(2)
    d = 8 * 8 * 3
    arrays = {"mean": np.full(d, 128.0), "scale": rng.uniform(10, 60, d)}
    return Model(
        W=rng.standard_normal((d + 1, 3)).astype(np.float32),
        mean_image=np.full((8, 8, 3), 128.0),
        class_names=["a", "b", "c"],
        settings={"data": "synthetic", "seed": 0},
        features=Features("pixels", {"standardized": True, "std_eps": 40.0}, arrays),
    )


MODELS = {"kmeans": kmeans_model, "hog": hog_model, "pixels": pixels_model}


def singular(p: int = P) -> np.ndarray:
    v = np.ones((p, 1)) / np.sqrt(p)
    return np.eye(p) - v @ v.T  # a projection: finite, symmetric, rank p - 1


def asymmetric() -> np.ndarray:
    m = np.eye(P)
    m[0, 1] = 0.5
    return m


PIPELINE_DAMAGE = [
    ("kmeans", {"feature_whiten": singular()}, ["feature_whiten", "singular"]),
    ("kmeans", {"feature_whiten": np.zeros((P, P))}, ["feature_whiten", "singular"]),
    ("kmeans", {"feature_whiten": -np.eye(P)}, ["feature_whiten", "not positive definite"]),
    ("kmeans", {"feature_whiten": asymmetric()}, ["feature_whiten", "not symmetric"]),
    ("kmeans", {"feature_whiten": np.eye(P, dtype=np.int64)}, ["feature_whiten", "int64"]),
    ("kmeans", {"feature_whiten": np.eye(P - 1)}, ["feature_whiten", "(107, 107)", "(108, 108)"]),
    ("kmeans", {"feature_whiten_mean": np.zeros(P + 1)}, ["feature_whiten_mean", "(109,)"]),
    ("kmeans", {"feature_whiten_mean": np.full(P, np.inf)}, ["feature_whiten_mean", "infinite"]),
    ("kmeans", {"feature_centroids": np.full((K, P), np.nan, np.float32)},
     ["feature_centroids", "NaN"]),
    ("kmeans", {"feature_centroids": np.full((K, P), 1e30)}, ["feature_centroids", "1e+30"]),
    ("kmeans", {"feature_centroids": np.zeros((K, P), np.complex64)},
     ["feature_centroids", "complex64"]),
    ("kmeans", {"feature_centroids": np.zeros((0, P), np.float32)}, ["feature_centroids"]),
    ("kmeans", {"feature_scale": np.r_[np.ones(4 * K - 1), 0.0]}, ["feature_scale", "0"]),
    ("kmeans", {"feature_scale": -np.ones(4 * K)}, ["feature_scale", "-1"]),
    ("kmeans", {"feature_scale": np.ones((4 * K, 1))}, ["feature_scale", "(16, 1)", "(16,)"]),
    ("kmeans", {"feature_mean": np.r_[np.zeros(4 * K - 1), np.nan]}, ["feature_mean", "NaN"]),
    ("kmeans", {"feature_mean": np.zeros(4 * K + 4)}, ["feature_mean", "(20,)", "(16,)"]),
    ("kmeans", {"feature_mean": np.zeros(4 * K, np.float16)}, ["feature_mean", "float16"]),
    ("kmeans", {"features": np.array('{"kind": "kmeans", "params": {"patch": 5}}')},
     ["features", "patch"]),
    ("kmeans", {"features": np.array('{"kind": "kmeans", "params": {"centroids": "x"}}')},
     ["features", "centroids"]),
    ("kmeans", {"features": np.array('{"kind": "kmeans", "params": {"centroids": 9}}')},
     ["features", "centroids", "9"]),
    ("kmeans", {"features": np.array('{"kind": "kmeans", "params": {"std_eps": -1}}')},
     ["features", "std_eps"]),
    ("kmeans", {"features": np.array('{"kind": "kmeans", "params": []}')}, ["feature"]),
    ("kmeans", {"features": np.array('{"kind": ["kmeans"]}')}, ["features", "kind"]),
    ("hog", {"feature_scale": np.r_[np.ones(18), np.inf]}, ["feature_scale", "infinite"]),
    ("hog", {"feature_mean": np.zeros(18)}, ["feature_mean", "(18,)", "(19,)"]),
    ("hog", {"features": np.array('{"kind": "hog", "params": {"orientations": 0}}')},
     ["features", "orientations"]),
    ("pixels", {"feature_scale": np.r_[np.ones(191), 0.0]}, ["feature_scale", "0"]),
    ("pixels", {"feature_scale": np.full(192, np.nan)}, ["feature_scale", "NaN"]),
    ("pixels", {"feature_scale": np.full(192, 1e-20)}, ["feature_scale", "1e-20"]),
    ("pixels", {"feature_mean": np.zeros(191)}, ["feature_mean", "(191,)", "(192,)"]),
    ("pixels", {"feature_mean": np.full(192, 1e30)}, ["feature_mean", "1e+30"]),
    ("pixels", {"feature_scale": None}, ["pixels features lack scale"]),
    # The scale dropped but the pipeline still standardized, or the other way round:
    # W would score rows it was not trained on.
    ("pixels", {"feature_scale": None, "feature_mean": None}, ["lack mean, scale"]),
    ("pixels", {"features": np.array('{"kind": "pixels", "params": {}}')},
     ["plain pixel features hold arrays (mean, scale)"]),
    ("pixels", {"features": np.array('{"kind": "pixels", "params": {"standardized": 1}}')},
     ["standardized must be true or false"]),
    ("pixels", {"features": np.array(
        '{"kind": "pixels", "params": {"standardized": true, "std_eps": -1}}')},
     ["features", "std_eps"]),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "changes", "fragments"), PIPELINE_DAMAGE)
def test_every_damaged_pipeline_field_is_named(tmp_path, kind, changes, fragments):
    path = model_io.save(MODELS[kind](), tmp_path / "m.npz")
    model_io.load(path)  # the undamaged one loads
    rewrite(path, **changes)
    with pytest.raises(SvmtoolError) as caught:
        model_io.load(path)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "do not fit" not in message or "shape" in message
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    for args in (["predict", str(image)], ["visualize", "--out-dir", str(tmp_path / "v")]):
        one_line_error(run(*args, "--model", str(path)), *fragments)


def test_a_transform_planted_in_a_plain_pixel_model_is_refused(tmp_path):
    plain = pixels_model()
    plain.features = Features()
    path = model_io.save(plain, tmp_path / "m.npz")
    assert int(np.load(path)["format_version"]) == model_io.FORMAT_VERSION
    rewrite(path, feature_scale=np.ones(192), feature_mean=np.zeros(192))
    one_line_error(run("evaluate", "--model", str(path)), "plain pixel features hold arrays")
    # A standardized model is written as format 3 (an older svmtool refuses it).
    path = model_io.save(pixels_model(), tmp_path / "s.npz")
    assert int(np.load(path)["format_version"]) == model_io.STANDARDIZED_PIXELS_VERSION


def test_values_that_are_wrong_are_not_called_a_size_mismatch(tmp_path):
    path = model_io.save(kmeans_model(), tmp_path / "m.npz")
    rewrite(path, feature_scale=np.zeros(4 * K))
    with pytest.raises(SvmtoolError) as caught:
        model_io.load(path)
    assert "do not fit" not in str(caught.value) and "shape" not in str(caught.value)


def test_a_good_feature_model_still_works(tmp_path):
    path = model_io.save(kmeans_model(), tmp_path / "m.npz")
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8), "red").save(image)
    assert run("predict", str(image), "--model", str(path)).exit_code == 0
    assert run("visualize", "--model", str(path), "--out-dir", str(tmp_path / "v")).exit_code == 0


# --- sizes ------------------------------------------------------------------------------


@pytest.fixture
def small_npz(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, X_train=X[:50], y_train=np.arange(50) % 2, X_test=X[50:],
             y_test=np.arange(10) % 2)  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--features", "kmeans", "--centroids", "10000000", "--patches", "10000000"),
         ["--centroids", "--patches"]),
        (("--features", "kmeans", "--centroids", "10", "--patches", "10000000000"),
         ["--patches"]),
        (("--features", "kmeans", "--centroids", "5000000", "--patches", "5000000"),
         ["--centroids"]),
        (("--iters", "100000000000",), ["--iters"]),
        (("--lr", ",".join(f"{i}e-7" for i in range(1, 301)),
          "--reg", ",".join(f"{i}e3" for i in range(1, 301))), ["--lr", "--reg"]),
    ],
)  # fmt: skip
def test_size_options_are_bounded_before_allocating(small_npz, tmp_path, args, named):
    done = run_limited("train", "--data", str(small_npz), "--model", str(tmp_path / "m.npz"),
                       *args)  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    error = [line for line in lines if line.startswith("Error: ")]
    assert len(error) == 1 and "out of memory" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    for option in named:
        assert option in error[0], error[0]
    assert "memory" in error[0]


def test_sizes_that_fit_still_train(small_npz, tmp_path):
    result = run("train", "--data", str(small_npz), "--model", str(tmp_path / "m.npz"),
                 "--features", "kmeans", "--centroids", "5", "--patches", "300",
                 "--kmeans-iters", "2", "--iters", "20")  # fmt: skip
    assert result.exit_code == 0, result.output


# --- class names ------------------------------------------------------------------------


def names_npz(path, names):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    y = np.arange(40) % len(names)
    np.savez(path, X_train=X[:30], y_train=y[:30], X_test=X[30:], y_test=y[30:],
             class_names=np.array(names))  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (["cat", "cat", "dog"], "'cat' twice"),
        (["cat", "dog", "cat", "dog"], "'cat' twice"),
        (["cat", "", "dog"], "empty"),
        (["cat", "   ", "dog"], "empty"),
    ],
)
def test_duplicate_or_empty_class_names_are_refused_at_entry(tmp_path, names, fragment):
    path = names_npz(tmp_path / "d.npz", names)
    one_line_error(run("train", "--data", str(path), "--iters", "5"), "class_names", fragment)


def test_a_model_with_duplicate_class_names_is_refused(tmp_path):
    path = model_io.save(kmeans_model(), tmp_path / "m.npz")
    rewrite(path, class_names=np.array(["cat", "cat", "dog"]))
    with pytest.raises(SvmtoolError, match=r"class_names.*'cat' twice"):
        model_io.load(path)


def test_evaluate_json_has_one_entry_per_class(tmp_path):
    path = names_npz(tmp_path / "d.npz", ["cat", "Cat", "cat "])
    assert run("train", "--data", str(path), "--iters", "5").exit_code == 0
    result = run("evaluate", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert len(document["per_class"]) == len(document["class_names"]) == 3


def test_duplicate_names_in_cifar_meta_fall_back_to_the_real_ones(tmp_path):
    from conftest import extracted

    folder = extracted(tmp_path, make_tiny(), "binary")
    (folder / "batches.meta.txt").write_text("cat\n" * 10)
    assert cifar.load(folder).class_names == list(cifar.CLASS_NAMES)


# --- visualize file names -------------------------------------------------------------


def visualize_names(tmp_path, names):
    rng = np.random.default_rng(0)
    model = Model(
        W=rng.standard_normal((4 * 4 * 3 + 1, len(names))).astype(np.float32),
        mean_image=np.zeros((4, 4, 3)),
        class_names=names,
    )
    path = model_io.save(model, tmp_path / "m.npz")
    out = tmp_path / "v"
    result = run("visualize", "--model", str(path), "--out-dir", str(out), "--json")
    assert result.exit_code == 0, result.output
    return [p for p in json.loads(result.stdout)["files"] if "templates" not in p]


def test_long_class_names_give_bounded_unique_file_names(tmp_path):
    long = "x" * 300
    names = [long + "a", long + "b", "é" * 300, "ok"]
    files = visualize_names(tmp_path, names)
    templates = [Path(f).name for f in files if Path(f).name[:3] in ("00_", "01_", "02_", "03_")]
    assert len(templates) == 4 and len(set(templates)) == 4
    assert all(len(b.encode()) <= 100 for b in templates), templates
    assert templates[0] != templates[1]


@pytest.mark.parametrize("name", ["a/b", "..", ".", "con", "x" * 255, "\x00\x1b[2J", "nul.txt"])
def test_names_invalid_on_a_file_system_make_valid_file_names(tmp_path, name):
    files = visualize_names(tmp_path, [name, "other"])
    for f in files:
        assert (tmp_path / "v" / Path(f).name).is_file()


# --- Ctrl-C during download's cleanup ---------------------------------------------------


def test_ctrl_c_during_scratch_cleanup_finishes_the_cleanup(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(cifar_archive(make_tiny(), "binary"))
    data_dir = tmp_path / "data"
    real = shutil.rmtree
    calls = []

    def interrupted_rmtree(path, *args, **kwargs):
        calls.append(str(path))
        if len(calls) == 1 and ".extract." in str(path):
            # Ctrl-C arrives midway: part of the tree is gone, the rest is not.
            first = next(p for p in sorted(Path(path).rglob("*")) if p.is_file())
            first.unlink()
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    result = run("download", "--data-dir", str(data_dir), "--from-file", str(archive),
                 "--md5", md5(archive.read_bytes()))  # fmt: skip
    assert result.exit_code == 130, result.output
    assert calls, "the cleanup was never reached"
    leftovers = [p.name for p in data_dir.iterdir() if p.name.startswith(".extract.")]
    assert leftovers == [], leftovers
