"""What reaches the terminal: outside text printed literally, numbers never cut,
one-line usage errors with documented exit codes, no Python warnings."""

from __future__ import annotations

import io
import json
import re
import warnings

import numpy as np
import pytest
from conftest import cifar_archive, grayscale_classes, make_tiny, md5
from PIL import Image
from rich.table import Table
from typer.testing import CliRunner

from svmtool import pipeline
from svmtool.cli import app
from svmtool.core import gradcheck as gc
from svmtool.terminal import (
    clean,
    literal,
    literal_lines,
    make_console,
    number_column,
    print_table,
    text_column,
)

runner = CliRunner()

# Markup Rich would interpret (or choke on), an emoji code, and what a terminal
# would obey: clear screen, colour, bell, carriage return, a one-byte CSI, a
# right-to-left override.
HOSTILE = "[bold]cat[/x]:smile:\x1b[2J\x1b[31m\x07\r\x9b\u202eevil"
VISIBLE = "[bold]cat[/x]:smile:\\x1b[2J\\x1b[31m\\x07\\x0d\\x9b\\u202eevil"
FORBIDDEN = ["\x1b", "\x07", "\r", "\x9b", "\u202e"]


def run(*args: str):
    return runner.invoke(app, list(args))


def assert_literal(output: str, text: str = VISIBLE) -> None:
    for char in FORBIDDEN:
        assert char not in output, repr(output)
    assert text in output, output


def test_clean_shows_control_characters_as_escapes():
    assert clean(HOSTILE) == VISIBLE
    assert clean("tab\there\nnew\u2028line\x7f") == "tab\\x09here\\x0anew\\u2028line\\x7f"
    assert clean("plain café ✓ [b]") == "plain café ✓ [b]"


def test_literal_lines_keeps_line_breaks_only():
    text = literal_lines('Traceback:\n  File "[bold]x.py"\x1b[2J\n\rError').plain
    assert text.split("\n") == ["Traceback:", '  File "[bold]x.py"\\x1b[2J', "\\x0dError"]


def test_literal_is_not_markup():
    console = make_console()
    console.file = io.StringIO()
    console.print(literal("[bold]x[/x] :smile:"))
    console.print("[/y] also a plain string [red]")
    assert console.file.getvalue() == "[bold]x[/x] :smile:\n[/y] also a plain string [red]\n"


def numbers_table(rows: int = 4) -> tuple[Table, list[str]]:
    table = Table(title="gradient check")
    for name in ("d", "c", "numeric", "analytic", "rel error", "kink samples"):
        number_column(table, name)
    text_column(table, "status")
    values = []
    rng = np.random.default_rng(0)
    for i in range(rows):
        row = [
            str(1000 + i),
            str(i),
            f"{rng.normal():.8g}",
            f"{rng.normal() * 1e-3:.8g}",
            f"{10.0 ** -rng.integers(1, 12):.2e}",
            str(i),
        ]
        values += row
        table.add_row(*row, literal(HOSTILE))
    return table, values


@pytest.mark.parametrize("width", [40, 45, 50, 55, 60, 80, 120])
def test_numbers_are_never_cut_at_any_width(width):
    table, values = numbers_table()
    console = make_console()
    console.file = io.StringIO()
    console.width = width
    print_table(console, table)
    text = console.file.getvalue()
    words = set(text.split())
    for value in values:
        assert value in words, (value, text)  # whole, on one line
    assert "…" not in text
    assert_literal(text.replace("\n", ""), "")  # the names fold, their escapes stay visible


def test_a_table_that_fits_keeps_its_frame_and_a_narrow_one_folds_names():
    table = Table()
    text_column(table, "class")
    number_column(table, "accuracy")
    table.add_row(literal("a/very/long/path/to/some/image/file/name.png"), "0.1234")
    console = make_console()
    console.file = io.StringIO()
    console.width = 30
    print_table(console, table)
    text = console.file.getvalue()
    assert "0.1234" in text and max(len(line) for line in text.splitlines()) <= 30
    folded = "".join(line.split()[0] for line in text.splitlines()[2:])
    assert folded == "a/very/long/path/to/some/image/file/name.png"  # every character kept

    wide, _ = numbers_table()
    console.file = io.StringIO()
    console.width = 200
    print_table(console, wide)
    assert "┏" in console.file.getvalue()  # the usual frame when there is room


# --- outside text through every command --------------------------------------------


@pytest.fixture
def hostile_npz(tmp_path):
    """A user's .npz with hostile class names, in a folder with a hostile name."""
    folder = tmp_path / HOSTILE  # "[bold]cat[" / "x]:smile:...": the path holds "[/x]"
    folder.mkdir(parents=True)
    X_train, y_train, X_test, y_test = grayscale_classes(np.random.default_rng(0), 300, 60)
    path = folder / "data.npz"
    names = np.array([HOSTILE, "[/x]", "fine"])
    np.savez(path, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
             class_names=names)  # fmt: skip
    return path


def test_hostile_names_and_paths_print_literally_everywhere(tmp_path, hostile_npz):
    model = hostile_npz.parent / "model.npz"
    trained = run(
        "train", "--data", str(hostile_npz), "--lr", "1e-4", "--reg", "1", "--iters", "50",
        "--batch-size", "50", "--model", str(model),
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert_literal(trained.stdout)  # the data row of the summary
    assert_literal(trained.stderr)  # "model written to ..."

    evaluated = run("evaluate", "--model", str(model))
    assert evaluated.exit_code == 0, evaluated.output
    assert_literal(evaluated.stdout)
    assert "[/x]" in evaluated.stdout

    image = hostile_npz.parent / "photo.png"
    Image.fromarray(np.full((10, 10), 99, np.uint8)).save(image)
    predicted = run("predict", str(image), "--model", str(model), "--top", "3")
    assert predicted.exit_code == 0, predicted.output
    assert_literal(predicted.stdout)

    out_dir = hostile_npz.parent / "out"
    pictures = run("visualize", "--model", str(model), "--out-dir", str(out_dir))
    assert pictures.exit_code == 0, pictures.output
    assert_literal(pictures.stdout)

    checked = run("gradcheck", "--model", str(model), "--checks", "3")
    assert checked.exit_code == 0, checked.output
    assert_literal(checked.stdout)

    as_json = json.loads(run("evaluate", "--model", str(model), "--json").stdout)
    assert as_json["class_names"][0] == HOSTILE  # JSON carries the exact text, escaped by JSON


def test_hostile_text_in_errors_and_usage_errors(tmp_path):
    missing = run("evaluate", "--model", str(tmp_path / HOSTILE))
    assert missing.exit_code == 1 and len(missing.output.strip().splitlines()) == 1
    assert_literal(missing.output)

    usage = run("train", "--" + HOSTILE)
    assert usage.exit_code == 2 and len(usage.output.strip().splitlines()) == 1
    assert_literal(usage.output, "--" + VISIBLE)


def test_download_messages_print_the_path_literally(tmp_path):
    body = cifar_archive(make_tiny(), "binary")
    archive = tmp_path / "c.tar.gz"
    archive.write_bytes(body)
    data_dir = tmp_path / HOSTILE
    data_dir.parent.mkdir()
    result = run(
        "download", "--from-file", str(archive), "--md5", md5(body), "--data-dir", str(data_dir)
    )
    assert result.exit_code == 0, result.output
    assert_literal(result.stdout)
    again = run("download", "--data-dir", str(data_dir))
    assert again.exit_code == 0
    assert_literal(again.stderr)  # "CIFAR-10 is already in ..."


# --- usage errors, help, exit codes ----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--bogus"], "No such option: --bogus"),
        (["train", "--iters", "abc"], "'--iters'"),
        (["predict"], "Missing argument 'IMAGE'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["--bogus"], "No such option: --bogus"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, fragment):
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ") and fragment in lines[0]
    assert "--help" in lines[0]


@pytest.mark.parametrize(
    "command", ["download", "train", "evaluate", "predict", "gradcheck", "visualize"]
)
def test_help_shows_no_python_types(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert not re.search(r"<\w+(\[[\w, ]*\])?>", result.output), result.output
    assert "list[" not in result.output


def test_help_shows_metavars_and_the_tol_default():
    assert "IMAGE" in run("predict", "--help").output
    assert "--model FILE" in run("evaluate", "--help").output
    text = run("gradcheck", "--help").output
    assert "[default: 1e-06]" in " ".join(text.split())
    assert float("1e-06") == gc.DEFAULT_TOL


@pytest.mark.parametrize("command", ["train", "gradcheck"])
def test_negative_seed_is_one_line(command):
    result = run(command, "--data", "synthetic", "--seed", "-1", "--iters" if command == "train"
                 else "--checks", "5")  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [
        f"Error: Invalid value for '--seed': must be >= 0, got -1 (see 'root {command} --help')"
    ]


# --- no Python warning reaches the user ------------------------------------------------


def test_a_warning_from_anywhere_does_not_reach_the_user(monkeypatch, tmp_path):
    original = pipeline.prepare_training

    def noisy(*args, **kwargs):
        warnings.warn("something numpy said", RuntimeWarning, stacklevel=1)
        np.float32(1e39)  # an overflow numpy warns about
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare_training", noisy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(
            "train", "--data", "synthetic", "--iters", "5", "--model", str(tmp_path / "m.npz")
        )
    assert result.exit_code == 0, result.output
    assert not caught and "Warning" not in result.output


def test_sgd_with_a_huge_reg_warns_nothing():
    from svmtool.core.train import sgd_grid

    X = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32)
    y = np.arange(50) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = sgd_grid(X, y, 3, [1e-3, 1e-3], [1e300, 1.0], iters=20, batch_size=10,
                          rng=np.random.default_rng(0))  # fmt: skip
    assert result.diverged_at[0] >= 0 and result.diverged_at[1] == -1


def test_the_bar_shows_a_huge_loss_in_a_few_digits_and_diverged_as_a_word():
    from svmtool.render.progress import loss_text as _loss_text

    assert _loss_text(5.19304) == "5.1930"
    assert _loss_text(9000017513735852939184586096640.0) == "9.0000e+30"
    assert _loss_text(float("nan")) == "diverged" and _loss_text(float("inf")) == "diverged"
