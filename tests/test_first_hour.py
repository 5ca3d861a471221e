"""A user's first hour with their own data (issue 20): models that always load,
usage errors in one form, messages in the user's words, the feature cache's place."""

from __future__ import annotations

import json
import os
import re
import time

import numpy as np
import pytest
from conftest import cifar_archive, extracted, md5
from PIL import Image
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.errors import SvmtoolError
from svmtool.io import model as model_io

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), prog_name="svmtool")


def one_line(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def usage_error(result, command: str, option: str, *fragments: str) -> None:
    """Typer's own form: exit 2, one line naming the option, the help to see."""
    line = one_line(result, 2, *fragments)
    assert line.startswith(f"Error: Invalid value for '{option}': "), line
    assert line.endswith(f"(see 'svmtool {command} --help')"), line


def small_npz(path, n_train=200, n_test=40, shape=(6, 5, 1), classes=3, seed=0, **override):
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 40, (classes, *shape))

    def draw(n):
        labels = np.arange(n) % classes
        images = np.clip(128 + patterns[labels] + rng.normal(0, 20, (n, *shape)), 0, 255)
        return images.astype(np.uint8), labels

    X_train, y_train = draw(n_train)
    X_test, y_test = draw(n_test)
    arrays = {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# --- 1. whatever train writes, every command loads ------------------------------------


def test_a_grid_without_a_validation_split_is_refused_before_training(tmp_path):
    model = tmp_path / "x.npz"
    result = run(
        "train", "--data", "synthetic", "--num-val", "0", "--lr", "1e-7,1e-6", "--iters", "5",
        "--model", str(model),
    )  # fmt: skip
    one_line(result, 1, "--num-val 0", "a grid", "validation")
    assert not model.exists()


def test_a_model_without_validation_split_loads_in_every_command(tmp_path):
    model = tmp_path / "x.npz"
    result = run(
        "train", "--data", "synthetic", "--num-val", "0", "--iters", "5", "--model", str(model),
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["val_accuracy"] is None
    loaded = model_io.load(model)
    assert loaded.metrics["val_accuracy"] is None
    for args in (["evaluate"], ["gradcheck", "--checks", "2"]):
        assert run(*args, "--model", str(model)).exit_code == 0
    viz = run("visualize", "--model", str(model), "--out-dir", str(tmp_path / "t"))
    assert viz.exit_code == 0, viz.output


def test_save_refuses_what_load_would_refuse(tmp_path):
    good = model_io.Model(
        W=np.zeros((13, 2), np.float32), mean_image=np.zeros((2, 2, 3)), class_names=["a", "b"]
    )
    model_io.save(good, tmp_path / "good.npz")
    model_io.load(tmp_path / "good.npz")
    bad = [
        model_io.Model(W=np.full((13, 2), np.nan, np.float32), mean_image=good.mean_image,
                       class_names=["a", "b"]),
        model_io.Model(W=good.W, mean_image=good.mean_image, class_names=["a", "b"],
                       grid=[{"lr": float("inf"), "reg": 0.0}]),
        model_io.Model(W=good.W, mean_image=good.mean_image, class_names=["a", "b", "c"]),
    ]  # fmt: skip
    for k, model in enumerate(bad):
        path = tmp_path / f"bad{k}.npz"
        with pytest.raises(SvmtoolError, match="would not load"):
            model_io.save(model, path)
        assert not path.exists()
    # An undefined accuracy is written as null (strict JSON), never as NaN, which
    # load refuses in a grid: what train wrote with --num-val 0 before.
    nan = float("nan")
    odd = model_io.Model(W=good.W, mean_image=good.mean_image, class_names=["a", "b"],
                         metrics={"val_accuracy": nan},
                         grid=[{"lr": 1.0, "reg": 0.0, "val_accuracy": nan}] * 2)  # fmt: skip
    model_io.save(odd, tmp_path / "odd.npz")
    loaded = model_io.load(tmp_path / "odd.npz")
    assert loaded.metrics == {"val_accuracy": None} and loaded.grid[0]["val_accuracy"] is None


# --- 2. what a model can be used for is said at train time ----------------------------


def test_four_channel_data_says_at_train_time_that_predict_cannot_read_files(tmp_path):
    data = small_npz(tmp_path / "rgba4.npz", shape=(6, 5, 4))
    model = tmp_path / "m.npz"
    result = run("train", "--data", str(data), "--iters", "20", "--lr", "1e-5", "--model",
                 str(model))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4 channels" in result.stderr and "predict" in result.stderr
    assert "X_train[..., :3]" in result.stderr  # the fix, if they are RGBA
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.png")
    predicted = run("predict", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--model",
                    str(model))  # fmt: skip
    # One message for the model, not one per file.
    one_line(predicted, 1, "4-channel images", "evaluate")


# --- 3. a CIFAR-format folder that is not the full dataset -----------------------------


def test_a_partial_cifar_folder_says_its_real_split_and_scores_the_test_images_there_are(
    tmp_path, tiny
):
    folder = extracted(tmp_path, tiny, "binary")  # 60 training images, 10 test
    model = tmp_path / "m.npz"
    result = run("train", "--data-dir", str(folder), "--iters", "5", "--model", str(model))
    assert result.exit_code == 0, result.output
    assert "CS231n's split" not in result.stdout
    assert "the first 54" in result.stdout and "the last 6" in result.stdout
    evaluated = run("evaluate", "--model", str(model), "--num-test", "1000")
    assert evaluated.exit_code == 0, evaluated.output
    assert "on 10 images" in evaluated.stdout
    assert "--num-test 1000" in evaluated.stderr and "10" in evaluated.stderr


# --- 4. every value the command line cannot accept: exit 2, one form -------------------


@pytest.mark.parametrize(
    ("args", "option", "fragments"),
    [
        (["train", "--lr", "five"], "--lr", ["'five'"]),
        (["train", "--lr", "-1"], "--lr", ["must be > 0"]),
        (["train", "--reg", "1,x"], "--reg", ["'1,x'"]),
        (["train", "--features", "knn"], "--features", ["pixels, hog, kmeans"]),
        (["train", "--dtype", "float16"], "--dtype", ["float32", "float64"]),
        (["train", "--batch-size", "0"], "--batch-size", ["must be >= 1"]),
        (["train", "--iters", "0"], "--iters", ["must be >= 1"]),
        (["train", "--seed", "-1"], "--seed", ["must be >= 0"]),
        (["train", "--lr-decay", "2"], "--lr-decay", ["(0, 1]"]),
        (["train", "--num-train", "0"], "--num-train", ["must be >= 1"]),
        (["train", "--print-every", "-5"], "--print-every", ["must be >= 0"]),
        (["evaluate", "--split", "validation"], "--split", ["val, train or test"]),
        (["evaluate", "--num-test", "0"], "--num-test", ["must be >= 1"]),
        (["predict", "x.png", "--top", "0"], "--top", ["must be >= 1"]),
        (["visualize", "--zoom", "0"], "--zoom", ["1..64"]),
        (["visualize", "--scale", "local"], "--scale", ["global or per-class"]),
        (["download", "--format", "zip"], "--format", ["binary or python"]),
        (["download", "--md5", "xyz"], "--md5", ["32 hexadecimal digits"]),
        (["gradcheck", "--h", "5"], "--h", ["(0, 0.1]"]),
        (["gradcheck", "--sweep-delta", "0,x"], "--sweep-delta", ["'0,x'"]),
        (["gradcheck", "--coord", "1,2,3"], "--coord", ["d,c"]),
        (["download", "--dataset", "minst"], "--dataset", ["did you mean mnist?"]),
        (["download", "--dataset", "mnist", "--format", "python"], "--format", ["cifar10"]),
        (["train", "--image-size", "axb"], "--image-size", ["WIDTHxHEIGHT"]),
    ],
)
def test_values_the_command_line_cannot_accept_are_usage_errors(
    args, option, fragments, trained_model
):
    if args[0] in ("train", "gradcheck"):
        args = [*args, "--data", "synthetic"]
    if args[0] in ("evaluate", "predict", "visualize"):
        args = [*args, "--model", str(trained_model)]
    usage_error(run(*args), args[0], option, *fragments)


def test_usage_errors_come_before_any_file_is_read(tmp_path):
    # No model file here: the value is refused first, as click refuses --iters five.
    for args, option in [
        (["evaluate", "--split", "validation"], "--split"),
        (["evaluate", "--num-test", "0"], "--num-test"),
        (["predict", "x.png", "--top", "0"], "--top"),
        (["visualize", "--scale", "local"], "--scale"),
    ]:
        usage_error(run(*args, "--model", str(tmp_path / "none.npz")), args[0], option)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.npz"
    result = run("train", "--data", "synthetic", "--iters", "20", "--model", str(path))
    assert result.exit_code == 0, result.output
    return path


# --- 5. option names as typed; did-you-mean for values ---------------------------------


def test_messages_name_options_as_typed(tmp_path):
    result = run("train", "--data", "synthetic", "--num-train", "999999", "--iters", "5")
    line = one_line(result, 1, "--num-train", "exceeds the 5000 training images")
    assert "num_train" not in line


@pytest.mark.parametrize(
    ("args", "option", "suggestion"),
    [
        (["train", "--data", "cifar"], "--data", "did you mean cifar10?"),
        (["train", "--data", "synthtic"], "--data", "did you mean synthetic?"),
        (["train", "--data", "fashion"], "--data", "did you mean fashion.npz?"),
        (["train", "--data", "synthetic", "--features", "HOG"], "--features", "did you mean hog?"),
        (["train", "--data", "synthetic", "--dtype", "float"], "--dtype", "did you mean float"),
        (["evaluate", "--split", "Test"], "--split", "did you mean test?"),
    ],
)
def test_did_you_mean_for_values(args, option, suggestion, tmp_path, trained_model):
    small_npz(tmp_path / "fashion.npz")
    if args[0] == "evaluate":
        args = [*args, "--model", str(trained_model)]
    usage_error(run(*args), args[0], option, suggestion)


# --- 6. a model from another dataset: what cannot be overridden first ------------------


def test_another_datasets_model_names_the_image_shape_before_the_class_names(tmp_path):
    data = small_npz(tmp_path / "gray.npz", shape=(28, 28, 1), classes=10)
    model = tmp_path / "m.npz"
    trained = run("train", "--data", str(data), "--iters", "5", "--model", str(model))
    assert trained.exit_code == 0, trained.output
    for command in (["evaluate"], ["gradcheck", "--checks", "2"]):
        line = one_line(run(*command, "--model", str(model), "--data", "synthetic"), 1)
        assert "(32, 32, 3)" in line and "(28, 28, 1)" in line, line
        assert "--ignore-class-names" not in line


# --- 7. download --from-file of something else ------------------------------------------


def test_an_unofficial_archive_says_md5_accepts_its_own_checksum(tmp_path, tiny):
    archive = tmp_path / "mine.tar.gz"
    body = cifar_archive(tiny, "binary")
    archive.write_bytes(body)
    result = run("download", "--data-dir", str(tmp_path / "d"), "--from-file", str(archive))
    one_line(result, 1, "checksum mismatch", f"--md5 {md5(body)}", "trust")
    ok = run("download", "--data-dir", str(tmp_path / "d"), "--from-file", str(archive),
             "--md5", md5(body))  # fmt: skip
    assert ok.exit_code == 0, ok.output


def test_an_npz_given_to_download_says_to_train_with_it(tmp_path):
    data = small_npz(tmp_path / "fashion.npz")
    result = run("download", "--data-dir", str(tmp_path / "d"), "--from-file", str(data))
    one_line(result, 1, "not a CIFAR-10 archive", f"--data {data}")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    one_line(
        run("download", "--data-dir", str(tmp_path / "d"), "--from-file", str(other)),
        1, "not a CIFAR-10 archive",
    )  # fmt: skip


# --- 8. common .npz shapes ---------------------------------------------------------------


def _train(data, tmp_path, *extra):
    return run("train", "--data", str(data), "--iters", "5", "--lr", "1e-5",
               "--model", str(tmp_path / "m.npz"), *extra)  # fmt: skip


def test_keras_lower_case_keys_are_read(tmp_path):
    path = small_npz(tmp_path / "k.npz")
    arrays = dict(np.load(path))
    np.savez(path, x_train=arrays["X_train"], y_train=arrays["y_train"],
             x_test=arrays["X_test"], y_test=arrays["y_test"])  # fmt: skip
    result = _train(path, tmp_path)
    assert result.exit_code == 0, result.output


def test_labels_of_shape_n_by_1_are_read_and_one_hot_gets_the_fix(tmp_path):
    path = small_npz(tmp_path / "col.npz")
    arrays = dict(np.load(path))
    np.savez(path, **{**arrays, "y_train": arrays["y_train"][:, None],
                      "y_test": arrays["y_test"][:, None]})  # fmt: skip
    assert _train(path, tmp_path).exit_code == 0
    np.savez(path, **{**arrays, "y_train": np.eye(3)[arrays["y_train"]],
                      "y_test": np.eye(3)[arrays["y_test"]]})  # fmt: skip
    one_line(_train(path, tmp_path), 1, "one-hot", "y_train=y_train.argmax(axis=1)")


def test_string_labels_become_classes(tmp_path):
    path = small_npz(tmp_path / "s.npz")
    arrays = dict(np.load(path))
    names = np.array(["cat", "dog", "emu"])
    np.savez(path, **{**arrays, "y_train": names[arrays["y_train"]],
                      "y_test": names[arrays["y_test"]]})  # fmt: skip
    result = _train(path, tmp_path)
    assert result.exit_code == 0, result.output
    assert model_io.load(tmp_path / "m.npz").class_names == ["cat", "dog", "emu"]


def test_object_class_names_are_refused_with_the_fix_and_never_unpickled(tmp_path):
    path = small_npz(tmp_path / "o.npz")
    arrays = dict(np.load(path))
    np.savez(path, **arrays, class_names=np.array(["a", "b", "c"], dtype=object))
    one_line(_train(path, tmp_path), 1, "class_names", "np.array(class_names, dtype=str)")


def test_nan_pixels_are_named_as_such(tmp_path):
    X = np.random.default_rng(0).random((30, 4, 4)).astype(np.float32)
    X[3, 1, 1] = np.nan
    path = small_npz(tmp_path / "n.npz", n_train=30, shape=(4, 4), X_train=X)
    line = one_line(_train(path, tmp_path), 1, "NaN")
    assert "[nan, nan]" not in line


def test_labels_from_one_offer_only_the_fix_that_works(tmp_path):
    path = small_npz(tmp_path / "one.npz")
    arrays = dict(np.load(path))
    np.savez(path, **{**arrays, "y_train": arrays["y_train"] + 1, "y_test": arrays["y_test"] + 1})
    line = one_line(_train(path, tmp_path), 1, "save y_train=y_train - 1")
    assert "add class_names" not in line


# --- 9. the feature cache: the user's cache folder, list and clear ---------------------


def _hog(data, tmp_path, *extra):
    return run("train", "--data", str(data), "--features", "hog", "--iters", "5",
               "--model", str(tmp_path / "m.npz"), *extra)  # fmt: skip


def test_the_feature_cache_is_not_in_the_data_folder(tmp_path):
    (tmp_path / "data").mkdir()
    data = small_npz(tmp_path / "data" / "d.npz", shape=(16, 16, 1))
    result = _hog(data, tmp_path)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "data" / "feature-cache").exists()
    assert not (tmp_path / "default-data" / "feature-cache").exists()
    cache = tmp_path / "cache"  # conftest's SVMTOOL_CACHE_DIR
    assert os.environ["SVMTOOL_CACHE_DIR"] == str(cache)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    moved = _hog(data, tmp_path, "--cache-dir", str(tmp_path / "elsewhere"))
    assert moved.exit_code == 0, moved.output
    assert any((tmp_path / "elsewhere").iterdir())


def test_cache_list_and_clear(tmp_path):
    (tmp_path / "data").mkdir()
    data = small_npz(tmp_path / "data" / "d.npz", shape=(16, 16, 1))
    assert _hog(data, tmp_path).exit_code == 0
    listed = run("cache", "list")
    assert listed.exit_code == 0, listed.output
    assert "hog features of 200 images" in listed.stdout and str(data) in listed.stdout
    assert ": 1 entry, " in listed.stderr + listed.stdout  # not '1 entries'
    entries = json.loads(run("cache", "list", "--json").stdout)["entries"]
    assert len(entries) == 1 and entries[0]["bytes"] > 0 and entries[0]["age_seconds"] >= 0
    cache = tmp_path / "cache"
    # Not ours: a stray file, a link to a folder that must survive, a folder of the user's.
    (cache / "notes.txt").write_text("mine")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep").write_text("x")
    (cache / ("0" * 32)).symlink_to(precious)
    (cache / "mine").mkdir()
    kept = run("cache", "clear", "--older-than", "1d")
    assert kept.exit_code == 0, kept.output
    assert len(json.loads(run("cache", "list", "--json").stdout)["entries"]) == 1
    old = time.time() - 3 * 86400
    entry = cache / entries[0]["name"]
    os.utime(entry / "meta.json", (old, old))
    cleared = run("cache", "clear", "--older-than", "2d")
    assert cleared.exit_code == 0, cleared.output
    assert not entry.exists() and "removed 1 entry (" in cleared.stderr
    assert "removed 0 entries (" in kept.stderr
    assert (precious / "keep").exists() and (cache / "notes.txt").exists()
    assert (cache / "mine").is_dir()
    assert _hog(data, tmp_path).exit_code == 0
    assert run("cache", "clear").exit_code == 0
    assert json.loads(run("cache", "list", "--json").stdout)["entries"] == []
    usage_error(run("cache", "clear", "--older-than", "soon"), "cache clear", "--older-than")


# --- 10. help that says what a user decides ------------------------------------------


def test_train_help_leaves_the_internals_to_the_docs():
    text = run("train", "--help").output
    assert "interleaved" not in text and "docs/train.md" in text
    assert len(text.splitlines()) < 80


def test_argument_help_continues_under_its_first_line(monkeypatch):
    monkeypatch.setenv("COLUMNS", "70")
    lines = run("predict", "--help").output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("IMAGE"))
    first, second = lines[start], lines[start + 1]
    assert second.strip(), lines
    indent = re.match(r"\s*", second).end()
    assert indent == first.index("PNG"), (first, second)
