"""The command line, driven through typer.testing.CliRunner."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from conftest import cifar_archive, grayscale_classes, md5
from PIL import Image
from typer.testing import CliRunner

from svmtool import __version__
from svmtool.cli import app
from svmtool.core import gradcheck as gc
from svmtool.core.loss import hinge
from svmtool.io import cifar
from svmtool.io import model as model_io

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, *fragments: str, code: int = 1) -> None:
    """One ``Error:`` line holding every fragment; code 2 is a usage error."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained on the synthetic data through the CLI, shared by the module."""
    path = tmp_path_factory.mktemp("model") / "svm_model.npz"
    result = run("train", "--data", "synthetic", "--model", str(path))
    assert result.exit_code == 0, result.output
    return path


def test_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    for name in ("download", "train", "evaluate", "predict", "gradcheck", "visualize"):
        assert name in result.output


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.output.strip() == f"svmtool {__version__}"


def test_train_synthetic_table_and_model(trained):
    model = model_io.load(trained)
    assert model.W.shape == (3073, 10) and model.W.dtype == np.float32
    assert model.settings["data"] == "synthetic" and model.settings["iters"] == 1500
    assert model.metrics["val_accuracy"] > 0.3  # chance is 0.1
    assert model.loss_history.shape == (1500,)


def test_train_prints_table_and_path(tmp_path):
    result = run(
        "train", "--data", "synthetic", "--iters", "20", "--model", str(tmp_path / "m.npz")
    )
    assert result.exit_code == 0, result.output
    assert "val accuracy" in result.stdout and "iterations/s" in result.stdout
    assert f"model written to {tmp_path / 'm.npz'}" in result.output


def test_train_json(tmp_path):
    result = run(
        "train",
        "--data",
        "synthetic",
        "--iters",
        "20",
        "--json",
        "--model",
        str(tmp_path / "m.npz"),
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["settings"]["lr"] == 1e-7 and payload["settings"]["batch_size"] == 200
    assert 0 <= payload["metrics"]["val_accuracy"] <= 1
    assert payload["metrics"]["train_seconds"] > 0
    assert len(payload["grid"]) == 1


def test_grid_search_marks_best_and_diverged(tmp_path):
    path = tmp_path / "grid.npz"
    result = run(
        "train", "--data", "synthetic", "--iters", "60", "--lr", "1e-7,3e-7,1e-2",
        "--reg", "1e3,2.5e4", "--model", str(path), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    grid = json.loads(result.stdout)["grid"]
    assert len(grid) == 6
    diverged = [g for g in grid if g["diverged"]]
    assert diverged and all(g["lr"] == 1e-2 for g in diverged)
    assert diverged[0]["val_accuracy"] is None
    best = [g for g in grid if g.get("best")]
    assert len(best) == 1
    alive = [g for g in grid if not g["diverged"]]
    assert best[0]["val_accuracy"] == max(g["val_accuracy"] for g in alive)
    model = model_io.load(path)
    assert model.settings["lr"] == best[0]["lr"] and len(model.grid) == 6

    table = run(
        "train", "--data", "synthetic", "--iters", "60", "--lr", "1e-7,1e-2", "--reg", "2.5e4",
        "--model", str(path),
    )  # fmt: skip
    assert table.exit_code == 0
    assert "best" in table.stdout and "diverged" in table.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        # lr * reg = 1250: the L2 step alone multiplies W by -2499 each step.
        (["--lr", "5e-2"], ["lr * reg is above 1 for lr=0.05 reg=25000", "lower --reg or --lr"]),
        (["--reg", "1e300"], ["lr * reg is above 1", "reg=1e+300"]),
        (["--lr", "1e38", "--reg", "0"], ["with lr=1e+38 the steps overshoot", "smaller --lr"]),
        (["--delta", "1e37"], ["--delta 1e+37 is too large", "the learning rate is not the cause"]),
    ],
)
def test_divergence_names_the_cause_and_saves_nothing(tmp_path, args, fragments):
    path = tmp_path / "m.npz"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run("train", "--data", "synthetic", "--iters", "40", "--model", str(path), *args)
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: training diverged") and "No model was saved" in last
    for fragment in fragments:
        assert fragment in last
    assert "Warning" not in result.output and not caught  # no Python warning reaches the user
    assert "Traceback" not in result.output
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--lr", "-1"], ["'--lr': must be > 0, got -1.0"]),
        (["--lr", "fast"], ["'--lr': 'fast' is not a number"]),
        (["--reg", "-5"], ["'--reg': must be >= 0, got -5.0"]),
        (["--iters", "0"], ["'--iters': must be >= 1, got 0"]),
        (["--batch-size", "0"], ["'--batch-size': must be >= 1"]),
        (["--dtype", "float16"], ["'--dtype': 'float16' is not one of float32, float64"]),
        (["--num-train", "999999"], ["exceeds the 5000 training images", 1]),
        (["--model", "no/such/dir/m.npz"], ["does not exist", 1]),
        (["--data", "missing.npz"], ["not found", 1]),
    ],
)
def test_train_bad_options(args, fragments):
    # A value no data could make right is a usage error (2); the rest are errors (1).
    code = fragments.pop() if isinstance(fragments[-1], int) else 2
    result = run("train", "--data", "synthetic", "--iters", "5", *args)
    one_line_error(result, *fragments, code=code)


def test_train_without_data_names_the_download_command(tmp_path):
    result = run("train", "--data-dir", str(tmp_path / "nothing"))
    one_line_error(result, "svmtool download --data-dir", "not in")


def test_train_download_flag_fetches_first(httpserver, tiny, tmp_path, monkeypatch):
    body = cifar_archive(tiny, "binary")
    httpserver.expect_request("/c.tgz").respond_with_data(body)
    spec = cifar.ARCHIVES["binary"]
    monkeypatch.setitem(
        cifar.ARCHIVES,
        "binary",
        cifar.Archive(
            "binary", httpserver.url_for("/c.tgz"), md5(body), len(body), spec.filename, spec.folder
        ),
    )
    data_dir = tmp_path / "data"
    result = run(
        "train", "--download", "--data-dir", str(data_dir), "--iters", "5",
        "--model", str(tmp_path / "m.npz"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert cifar.cache_state(data_dir) == "ok"
    assert model_io.load(tmp_path / "m.npz").settings["num_train"] == 54


def test_evaluate_table_and_json(trained):
    result = run("evaluate", "--model", str(trained))
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout and "confusion matrix" in result.stdout
    payload = json.loads(
        run("evaluate", "--model", str(trained), "--split", "val", "--json").stdout
    )
    assert payload["count"] == 500 and len(payload["confusion"]) == 10
    assert sum(map(sum, payload["confusion"])) == 500
    assert payload["accuracy"] > 0.3
    one_line_error(
        run("evaluate", "--model", str(trained), "--split", "dev"),
        "Invalid value for '--split': 'dev' is not one of val, train or test", code=2,
    )  # fmt: skip


def test_predict_images(trained, tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    Image.fromarray(data).save(tmp_path / "a.png")
    Image.fromarray(data[..., 0]).save(tmp_path / "b.jpg")  # grayscale JPEG
    (tmp_path / "c.png").write_bytes(b"not an image")
    result = run(
        "predict", str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), str(tmp_path / "c.png"),
        "--model", str(trained),
    )  # fmt: skip
    assert result.exit_code == 1  # one file failed
    assert "a.png" in result.stdout and "b.jpg" in result.stdout
    assert "c.png: cannot read the image" in result.output
    ok = run("predict", str(tmp_path / "a.png"), "--model", str(trained))
    assert ok.exit_code == 0 and "stripes-" in ok.stdout


def test_gradcheck_table_defaults_to_synthetic_with_notice():
    result = run("gradcheck", "--delta", "1.0")
    assert result.exit_code == 0, result.output
    assert "not downloaded" in result.output and "synthetic" in result.output
    assert "status" in result.stdout and "worst relative error" in result.stdout
    assert "naive vs vectorized" in result.stdout
    assert "FAIL" not in result.stdout


def test_gradcheck_json_sweep_and_kinks(trained):
    result = run(
        "gradcheck", "--model", str(trained), "--checks", "20", "--json", "--sweep-delta", "0,1,10"
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["data"] == "synthetic" and payload["samples"] == 500
    assert len(payload["checks"]) == 20 and payload["passed"] is True
    assert [row["delta"] for row in payload["sweep_delta"]] == [0.0, 1.0, 10.0]
    for row in payload["sweep_delta"]:  # every coordinate, at both points
        for point in ("at_check_point", "at_given_W"):
            assert row[point]["coordinates"] == 3073 * 10
            assert 0 <= row[point]["straddled"] <= row[point]["coordinates"]
    assert payload["sweep_interpretation"][0].startswith("At the check point, over all 30730")
    assert payload["naive_vs_vectorized"]["loss_difference"] < 1e-9
    statuses = {c["status"] for c in payload["checks"]}
    assert statuses <= {"ok", "kink"}


def test_gradcheck_show_kinks_at_a_degenerate_point():
    # delta = 0 with W tiny: the sweep and the kink listing have plenty to show.
    result = run(
        "gradcheck", "--data", "synthetic", "--delta", "0", "--show-kinks", "--coord", "5,3",
        "--coord", "3072,0", "--sweep-delta", "0,1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "h*|x_nd|" in result.stdout or "kink samples" in result.stdout


def test_gradcheck_fails_with_a_wrong_gradient(monkeypatch):
    def wrong(W, X, y, reg, delta):
        data_loss, coeff = hinge(X @ W, y, delta)
        coeff[np.arange(len(y)), y] = 0.0  # the forgotten -sum(beta) term
        return float(data_loss), X.T @ coeff

    monkeypatch.setattr(gc, "svm_loss", wrong)
    result = run("gradcheck", "--data", "synthetic", "--checks", "5")
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "likely wrong" in result.stdout


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--h", "-1e-5"], ["'--h': must be in (0, 0.1], got -1e-05"]),
        (["--h", "0"], ["'--h': must be in (0, 0.1]"]),
        (["--h", "5"], ["'--h': must be in (0, 0.1], got 5"]),
        (["--delta", "1e308", "--checks", "1"], ["the loss is inf", "--delta 1e+308", 1]),
        (["--coord", "99999,0"], ["coordinate (99999, 0) is outside W, which is 3073 x 10", 1]),
        (["--coord", "1,2,3"], ["'--coord': must be d,c"]),
        (["--tol", "0"], ["'--tol': must be > 0"]),
        (["--delta", "-1"], ["'--delta': must be >= 0"]),
        (["--sweep-delta", "0,x"], ["'--sweep-delta': '0,x' is not a number"]),
        (["--model", "nope.npz"], ["model file not found", 1]),
    ],
)
def test_gradcheck_bad_options(args, fragments):
    code = fragments.pop() if isinstance(fragments[-1], int) else 2
    one_line_error(run("gradcheck", "--data", "synthetic", *args), *fragments, code=code)


def test_download_bad_options(tmp_path):
    one_line_error(
        run("download", "--data-dir", str(tmp_path), "--format", "zip"),
        "'--format': 'zip' is not one of binary or python", code=2,
    )  # fmt: skip
    one_line_error(
        run("download", "--data-dir", str(tmp_path), "--md5", "xyz"),
        "'--md5': must be 32", code=2,
    )  # fmt: skip
    one_line_error(
        run("download", "--data-dir", str(tmp_path), "--from-file", str(tmp_path / "no.tgz")),
        "no such file",
    )
    (tmp_path / "file").write_text("x")
    one_line_error(run("download", "--data-dir", str(tmp_path / "file")), "not a folder")


def test_users_own_grayscale_npz_end_to_end(tmp_path, monkeypatch):
    """Any H x W x C works through every command: here 8 x 6 grayscale, 3 classes."""
    rng = np.random.default_rng(0)
    X_train, y_train, X_test, y_test = grayscale_classes(rng, 300, 50)
    data = tmp_path / "mine.npz"
    monkeypatch.chdir(tmp_path)
    np.savez("mine.npz", X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
             class_names=np.array(["left", "middle", "right"]))  # fmt: skip
    model = tmp_path / "m.npz"
    trained = run(
        "train", "--data", "mine.npz", "--lr", "1e-4", "--reg", "1", "--iters", "200",
        "--batch-size", "50", "--model", str(model),
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    loaded = model_io.load(model)
    assert loaded.image_shape == (8, 6, 1) and loaded.W.shape == (49, 3)
    assert loaded.metrics["val_accuracy"] > 0.6  # chance is 1/3
    assert loaded.settings["data"] == str(data.resolve())  # found from any folder later

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    evaluated = run("evaluate", "--model", str(model), "--json")
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout)["count"] == 50

    pictures = run("visualize", "--model", str(model), "--out-dir", str(tmp_path / "t"))
    assert pictures.exit_code == 0, pictures.output
    with Image.open(tmp_path / "t" / "01_middle.png") as im:
        assert im.mode == "L" and im.size == (6 * 4, 8 * 4)

    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    predicted = run("predict", str(tmp_path / "c.png"), "--model", str(model))
    assert predicted.exit_code == 0, predicted.output

    checked = run("gradcheck", "--model", str(model), "--checks", "20")
    assert checked.exit_code == 0, checked.output
    assert "samples of " + str(data) in checked.stdout


def test_predict_json(trained, tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"no")
    result = run(
        "predict", str(tmp_path / "a.png"), str(tmp_path / "bad.png"), "--model", str(trained),
        "--json", "--top", "2",
    )  # fmt: skip
    assert result.exit_code == 1  # one image failed
    payload = json.loads(result.stdout)
    good, bad = payload["predictions"]
    assert good["image"] == str(tmp_path / "a.png") and good["error"] is None
    assert good["prediction"] == good["scores"][0]["class"] and len(good["scores"]) == 2
    assert bad["prediction"] is None and "cannot read the image" in bad["error"]
    assert "bad.png: cannot read the image" in result.stderr
    ok = run("predict", str(tmp_path / "a.png"), "--model", str(trained), "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["predictions"][0]["error"] is None


def test_a_batch_larger_than_the_data_is_said_and_recorded(tmp_path):
    path = tmp_path / "m.npz"
    result = run(
        "train", "--data", "synthetic", "--num-train", "300", "--batch-size", "1000",
        "--iters", "5", "--model", str(path),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        "--batch-size 1000 is larger than the 300 training images: every step uses all 300"
        in result.stderr
    )
    settings = model_io.load(path).settings
    assert settings["batch_size"] == 300 and settings["batch_size_requested"] == 1000


def test_many_classes_show_the_most_confused_pairs(tmp_path):
    rng = np.random.default_rng(0)
    n_classes = 30
    X = rng.integers(0, 256, (600, 4, 4, 1), dtype=np.uint8)
    y = np.arange(600) % n_classes
    names = np.array([f"class-{i:02d}" for i in range(n_classes)])
    np.savez(tmp_path / "many.npz", X_train=X, y_train=y, X_test=X[:300], y_test=y[:300],
             class_names=names)  # fmt: skip
    model = tmp_path / "m.npz"
    assert run("train", "--data", str(tmp_path / "many.npz"), "--iters", "20", "--lr", "1e-5",
               "--model", str(model)).exit_code == 0  # fmt: skip
    result = run("evaluate", "--model", str(model))
    assert result.exit_code == 0, result.output
    assert "most confused pairs" in result.stdout and "rows: true" not in result.stdout
    assert "30 x 30 confusion matrix is in the output of --json" in result.stdout
    payload = json.loads(run("evaluate", "--model", str(model), "--json").stdout)
    confusion = np.array(payload["confusion"])
    assert confusion.shape == (30, 30)
    off = confusion - np.diag(np.diag(confusion))
    i, j = np.unravel_index(off.argmax(), off.shape)
    # The largest off-diagonal cell is the first row of the pairs table.
    pairs = result.stdout[result.stdout.index("most confused pairs") :].splitlines()
    first = next(line for line in pairs if "class-" in line)
    assert names[i] in first and names[j] in first and str(off[i, j]) in first


def test_narrow_terminals_keep_every_digit(trained, monkeypatch):
    args = ["gradcheck", "--model", str(trained), "--checks", "6", "--sweep-delta", "0,1,10"]
    payload = json.loads(run(*args, "--json").stdout)
    monkeypatch.setenv("COLUMNS", "45")
    result = run(*args)
    assert result.exit_code == 0, result.output
    words = set(result.stdout.split())
    for check in payload["checks"]:
        assert f"{check['rel_error']:.2e}" in words
        assert f"{check['numeric']:.8g}" in words
    assert "…" not in result.stdout

    confusion = json.loads(run("evaluate", "--model", str(trained), "--json").stdout)["confusion"]
    narrow = run("evaluate", "--model", str(trained)).stdout
    # The matrix does not fit: the most confused pairs instead.
    assert "most confused pairs" in narrow and "a 45-column terminal is too narrow" in narrow
    monkeypatch.setenv("COLUMNS", "60")
    wide = run("evaluate", "--model", str(trained)).stdout
    rows = [line.split() for line in wide.splitlines() if "stripes-" in line]
    counts = [r[2:] for r in rows if len(r) == 12]  # the matrix rows: "0 name n n n ..."
    assert [list(map(int, r)) for r in counts] == confusion


def test_progress_bar_shows_the_leader_and_an_eta(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    result = run(
        "train", "--data", "synthetic", "--iters", "200", "--lr", "1e-7,1e-2", "--reg", "2.5e4",
        "--model", str(tmp_path / "m.npz"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    bar = result.stderr.splitlines()[0]
    # lr=1e-2 diverges (lr * reg > 1): the bar follows the configuration that leads.
    assert "grid of 2" in bar and "best lr=1e-07 reg=25000 loss" in bar and " in " in bar
    assert re.search(r"loss \d+\.\d{4} ", bar)


def test_sgd_reports_the_leader_by_validation_accuracy():
    from svmtool.core.train import predict, sgd_grid

    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 6))
    y = np.arange(400) % 3
    X = (centers[y] + rng.normal(0, 1, (400, 6))).astype(np.float64)
    X = np.hstack([X, np.ones((400, 1))])
    seen = []
    result = sgd_grid(
        X[:300], y[:300], 3, [1e-3, 1e-3, 50.0], [1e-6, 3.0, 1.0], iters=100, batch_size=30,
        rng=np.random.default_rng(1), X_val=X[300:], y_val=y[300:],
        on_step=lambda it, losses, leader: seen.append((it, leader)),
    )  # fmt: skip
    assert result.diverged_at[2] >= 0  # lr * reg = 50
    leaders = [leader for _, leader in seen]
    assert leaders[0] == -1 and 2 not in leaders[-3:]
    val_acc = (predict(result.weights[:2], X[300:]) == y[300:]).mean(axis=1)
    assert leaders[-1] == int(np.argmax(val_acc))


# --- CS231n's numbers: init, the notebook's loss lines, the loss history ---------------


def test_train_prints_the_notebooks_loss_lines_and_json_has_the_history(tmp_path):
    result = run(
        "train", "--data", "synthetic", "--iters", "250", "--print-every", "100", "--json",
        "--model", str(tmp_path / "m.npz"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("iteration")]
    assert [line.split(":")[0] for line in lines] == [
        "iteration 0 / 250", "iteration 100 / 250", "iteration 200 / 250",
    ]  # fmt: skip
    payload = json.loads(result.stdout)
    history = payload["loss_history"]
    assert len(history) == 250
    assert lines[0] == f"iteration 0 / 250: loss {history[0]:f}"
    assert lines[1] == f"iteration 100 / 250: loss {history[100]:f}"
    # CS231n's iteration-0 loss on CIFAR-shaped data: reg * sum(W^2) = 2.5e4 * 3073 * 10
    # * 0.001^2 = 768 in expectation, plus a data loss near 22 (see the README): about 790.
    assert 760 < history[0] < 820
    assert payload["settings"]["init_scale"] == 0.001


def test_init_scale_zero_starts_at_the_hinges_c_minus_1(tmp_path):
    result = run(
        "train", "--data", "synthetic", "--iters", "1", "--init-scale", "0", "--json",
        "--model", str(tmp_path / "m.npz"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["loss_history"] == [9.0]  # every margin is delta = 1, for 9 wrong classes
    assert payload["settings"]["init_scale"] == 0.0
    one_line_error(
        run("train", "--data", "synthetic", "--init-scale", "-1"),
        "'--init-scale': must be >= 0", code=2,
    )  # fmt: skip
    one_line_error(
        run("train", "--data", "synthetic", "--print-every", "-5"),
        "'--print-every': must be >= 0", code=2,
    )  # fmt: skip


def test_grid_loss_lines_name_each_configuration(tmp_path):
    result = run(
        "train", "--data", "synthetic", "--iters", "5", "--print-every", "5",
        "--lr", "1e-7,2e-7", "--model", str(tmp_path / "m.npz"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "iteration 0 / 5: loss " in result.stderr
    assert "(lr 1e-07, reg 25000)" in result.stderr and "(lr 2e-07, reg 25000)" in result.stderr


# --- a user's own data: honest splits, other layouts, other test sets -------------------


def fashion_like(path, n_train=600, n_test=100, names=None, seed=0, sort=True):
    """A Fashion-MNIST-shaped dataset in Keras' layout: (N, 28, 28) uint8, saved sorted
    by label (a common layout), ten classes."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 50, (10, 28, 28))

    def draw(n):
        labels = np.sort(np.arange(n) % 10) if sort else rng.permutation(np.arange(n) % 10)
        images = np.clip(128 + patterns[labels] + rng.normal(0, 30, (n, 28, 28)), 0, 255)
        return images.astype(np.uint8), labels

    X_train, y_train = draw(n_train)
    X_test, y_test = draw(n_test)
    extra = {} if names is None else {"class_names": np.array(names)}
    np.savez(path, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test, **extra)
    return path


FASHION = ["tshirt", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "boot"]  # fmt: skip


@pytest.fixture(scope="module")
def fashion_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fashion")
    data = fashion_like(folder / "fashion.npz", names=FASHION)
    model = folder / "fashion_model.npz"
    result = run(
        "train", "--data", str(data), "--lr", "1e-6", "--reg", "10", "--iters", "300",
        "--batch-size", "100", "--model", str(model), "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return data, model, json.loads(result.stdout)


def test_keras_layout_sorted_by_label_trains_on_everything_with_a_stratified_val(
    fashion_model, tmp_path
):
    _, model, payload = fashion_model
    # 600 images: 60 validate (6 per class, although the file is sorted by label),
    # the other 540 all train.
    assert payload["sizes"] == {
        "train": 540, "val": 60, "test": 100, "split": "stratified",
        "split_description": "stratified val, seed 0",
    }  # fmt: skip
    assert payload["warnings"] == []
    assert payload["metrics"]["val_accuracy"] > 0.5  # chance is 0.1; by position it was 0
    loaded = model_io.load(model)
    assert loaded.image_shape == (28, 28, 1) and loaded.settings["split"] == "stratified"

    evaluated = run("evaluate", "--model", str(model), "--split", "val", "--json")
    val = json.loads(evaluated.stdout)
    assert val["count"] == 60 and all(sum(row) == 6 for row in val["confusion"])
    assert val["accuracy"] == payload["metrics"]["val_accuracy"]  # the same split again
    test = run("evaluate", "--model", str(model))
    assert test.exit_code == 0, test.output
    assert "on 100 images (the whole test set)" in test.stdout
    first = run("evaluate", "--model", str(model), "--num-test", "40")
    assert "on 40 images (the first 40 of 100 test images)" in first.stdout
    more = run("evaluate", "--model", str(model), "--num-test", "101")
    assert more.exit_code == 0 and "on 100 images (the whole test set)" in more.stdout
    assert "--num-test 101 asks for more than the 100 test images there are" in more.stderr

    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(tmp_path / "photo.png")
    predicted = run("predict", str(tmp_path / "photo.png"), "--model", str(model))
    assert predicted.exit_code == 0 and any(n in predicted.stdout for n in FASHION)
    pictures = run("visualize", "--model", str(model), "--out-dir", str(tmp_path / "t"))
    assert pictures.exit_code == 0, pictures.output
    with Image.open(tmp_path / "t" / "09_boot.png") as im:
        assert im.mode == "L" and im.size == (28 * 4, 28 * 4)


def test_evaluate_on_another_test_set_ignores_the_training_split(fashion_model, tmp_path):
    _, model, _ = fashion_model
    # Fewer training images than the model's 540 + 60 split: irrelevant for a test split.
    other = fashion_like(tmp_path / "other.npz", n_train=50, n_test=70, names=FASHION)
    result = run("evaluate", "--model", str(model), "--data", str(other), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 70


def test_evaluate_refuses_other_class_names_unless_told(fashion_model, tmp_path):
    _, model, _ = fashion_model
    digits = fashion_like(tmp_path / "digits.npz", names=[str(k) for k in range(10)])
    one_line_error(
        run("evaluate", "--model", str(model), "--data", str(digits)),
        "label 0 is '0' in the data but 'tshirt' in the model", "--ignore-class-names",
    )  # fmt: skip
    ignored = run("evaluate", "--model", str(model), "--data", str(digits), "--ignore-class-names")
    assert ignored.exit_code == 0, ignored.output
    assert "tshirt" in ignored.stdout  # the model's names label the table

    few = fashion_like(tmp_path / "few.npz", names=[*FASHION[:9], "boot"])
    np.savez(
        tmp_path / "eleven.npz",
        **{k: v for k, v in np.load(few).items() if k != "class_names"},
        class_names=np.array([*FASHION, "hat"]),
    )
    one_line_error(
        run("evaluate", "--model", str(model), "--data", str(tmp_path / "eleven.npz"),
            "--ignore-class-names"),
        "the data has 11 classes, the model 10",
    )  # fmt: skip


def test_gradcheck_on_data_of_another_shape_is_a_clean_error(fashion_model):
    _, model, _ = fashion_model
    expected = "the data's images are (32, 32, 3) but the model expects (28, 28, 1)"
    one_line_error(run("gradcheck", "--model", str(model), "--data", "synthetic"), expected)
    one_line_error(run("evaluate", "--model", str(model), "--data", "synthetic",
                       "--ignore-class-names"), expected)  # fmt: skip


def test_labels_from_one_are_refused_with_the_fix(tmp_path):
    path = fashion_like(tmp_path / "one.npz")
    arrays = dict(np.load(path))
    np.savez(path, **{**arrays, "y_train": arrays["y_train"] + 1, "y_test": arrays["y_test"] + 1})
    one_line_error(
        run("train", "--data", str(path), "--iters", "5"),
        "no image is labelled 0", "save y_train=y_train - 1 and y_test=y_test - 1",
    )  # fmt: skip


def test_a_class_without_training_images_is_warned_about(tmp_path):
    path = fashion_like(tmp_path / "gap.npz", sort=False)
    arrays = dict(np.load(path))
    arrays["y_train"] = np.where(arrays["y_train"] == 4, 5, arrays["y_train"])
    np.savez(path, **arrays)
    result = run("train", "--data", str(path), "--iters", "5", "--model", str(tmp_path / "m.npz"))
    assert result.exit_code == 0, result.output
    assert "Warning: 1 of 10 classes have no training images ('class4')" in result.stderr


# --- the data folder: remembered by the model, and advice that works -------------------


def test_the_model_remembers_its_data_folder(tmp_path, tiny, monkeypatch):
    from conftest import extracted

    folder = extracted(tmp_path / "cs231n" / "datasets", tiny, "python")
    monkeypatch.chdir(tmp_path / "cs231n")
    result = run(
        "train", "--data-dir", "datasets/cifar-10-batches-py", "--iters", "5",
        "--model", str(tmp_path / "m.npz"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = model_io.load(tmp_path / "m.npz").settings
    assert settings["data_dir"] == str(folder.resolve()) and settings["split"] == "cs231n"
    # A tiny folder: CS231n's rule (by position), not its sizes.
    assert "54 train, 6 val (by position: the first 54 and the last 6 of 60" in result.stdout

    monkeypatch.chdir(tmp_path)  # elsewhere, and $SVMTOOL_DATA_DIR holds nothing
    evaluated = run("evaluate", "--model", "m.npz", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["count"] == 10  # CIFAR's whole (tiny) test batch
    checked = run("gradcheck", "--model", "m.npz", "--checks", "3")
    assert checked.exit_code == 0, checked.output
    assert "samples of cifar10" in checked.stdout

    folder.rename(tmp_path / "moved")
    for command in ("evaluate", "gradcheck"):
        failed = run(command, "--model", "m.npz")
        one_line_error(failed, f"trained on CIFAR-10 from {folder.resolve()}", "--data-dir")
        assert "--download" not in failed.output  # neither command has it
    moved = run("evaluate", "--model", "m.npz", "--data-dir", str(tmp_path / "moved"))
    assert moved.exit_code == 0, moved.output


def test_advice_names_only_options_of_the_command(trained, tmp_path):
    evaluated = run("evaluate", "--model", str(trained), "--data", "cifar10")
    one_line_error(evaluated, "svmtool download --data-dir", "pass --data-dir FOLDER")
    assert "--download" not in evaluated.output.replace("svmtool download", "")
    trained_ = run("train", "--iters", "5", "--model", str(tmp_path / "m.npz"))
    one_line_error(trained_, "svmtool download --data-dir", "pass --download", "--data synthetic")


def test_gradcheck_never_falls_back_from_data_the_user_named(tmp_path):
    one_line_error(
        run("gradcheck", "--data-dir", str(tmp_path / "typo")),
        f"CIFAR-10 is not in {tmp_path / 'typo'}", "--data synthetic",
    )  # fmt: skip
    one_line_error(run("gradcheck", "--data", "cifar10"), "CIFAR-10 is not in")
    one_line_error(run("gradcheck", "--data", str(tmp_path / "typo.npz")), "not found")
    # Nothing named ($SVMTOOL_DATA_DIR, set by conftest to an empty folder, is the standing
    # default, not a choice): the synthetic batch, with a notice naming the folder.
    fallback = run("gradcheck", "--checks", "2")
    assert fallback.exit_code == 0, fallback.output
    assert f"CIFAR-10 is not downloaded in {tmp_path / 'default-data'}" in fallback.stderr
