"""`svmtool visualize`: the PNGs, their content, grayscale, and no plotting library."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.io import model as model_io
from svmtool.io.images import MANIFEST, montage, safe_filename, templates, to_pil
from svmtool.io.model import Model

runner = CliRunner()


def pattern_model(shape=(4, 5, 3), grid=None) -> tuple[Model, np.ndarray]:
    """Class 1's weights are a known pattern spanning [-1, 1]; the others are 0."""
    d = int(np.prod(shape))
    pattern = np.linspace(-1.0, 1.0, d).reshape(shape)
    W = np.zeros((d + 1, 3), dtype=np.float32)
    W[:-1, 1] = pattern.ravel()
    W[-1] = 123.0  # the bias row must not show up in the templates
    model = Model(
        W=W,
        mean_image=np.zeros(shape, np.float32),
        class_names=["zero", "pat/tern", "also zero"],
        loss_history=np.linspace(10, 2, 50),
        grid=grid or [],
    )
    return model, pattern


def run(*args):
    return runner.invoke(app, list(args))


def test_writes_every_file_and_prints_them(tmp_path):
    grid = [
        {"lr": lr, "reg": reg, "val_accuracy": acc}
        for lr, reg, acc in [
            (1e-7, 1e4, 0.3),
            (1e-7, 2e4, 0.35),
            (5e-7, 1e4, None),
            (5e-7, 2e4, 0.2),
        ]
    ]
    model, _ = pattern_model(grid=grid)
    model_io.save(model, tmp_path / "m.npz")
    out = tmp_path / "out"
    result = run("visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    classes = ["00_zero.png", "01_pat_tern.png", "02_also_zero.png"]
    expected = [*classes, "templates.png", "loss.png", "grid.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted([*expected, MANIFEST])
    assert result.stdout.splitlines() == [str(out / name) for name in expected]
    for name in ("00_zero.png", "01_pat_tern.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (5 * 4, 4 * 4)
    with Image.open(out / "loss.png") as im:
        assert im.format == "PNG" and im.width > 100
    assert not list(tmp_path.glob(".out.*"))  # no scratch folder left


def test_known_pattern_comes_out_as_that_pattern(tmp_path):
    model, pattern = pattern_model()
    model_io.save(model, tmp_path / "m.npz")
    out = tmp_path / "t"
    result = run(
        "visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out), "--zoom", "2"
    )
    assert result.exit_code == 0, result.output
    with Image.open(out / "01_pat_tern.png") as im:
        pixels = np.asarray(im)[::2, ::2]  # undo the nearest-neighbour zoom
    expected = np.rint(255 * (pattern + 1) / 2).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)
    with Image.open(out / "00_zero.png") as im:
        # Global scaling: 0 sits in the middle of the shared range [-1, 1].
        assert np.unique(np.asarray(im)).tolist() == [128]


def test_per_class_scaling_stretches_each_class():
    model, _ = pattern_model()
    shared = templates(model.W, model.image_shape, "global")
    own = templates(model.W * np.array([1, 0.5, 1], np.float32), model.image_shape, "per-class")
    assert own[1].min() == 0 and own[1].max() == 255
    assert shared[1].min() == 0 and shared[1].max() == 255


def test_grayscale_model_gives_grayscale_pngs(tmp_path):
    model, _ = pattern_model(shape=(7, 9, 1))
    model_io.save(model, tmp_path / "m.npz")
    out = tmp_path / "g"
    result = run("visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    with Image.open(out / "01_pat_tern.png") as im:
        assert im.mode == "L" and im.size == (9 * 4, 7 * 4)
    with Image.open(out / "templates.png") as im:
        assert im.mode == "L"


def test_without_matplotlib_templates_are_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    model, _ = pattern_model()
    model_io.save(model, tmp_path / "m.npz")
    out = tmp_path / "n"
    result = run("visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out))
    assert result.exit_code == 0, result.output
    assert "pip install 'svmtool[plots]'" in result.output
    names = sorted(p.name for p in out.iterdir() if p.name != MANIFEST)
    assert "loss.png" not in names and "templates.png" in names and len(names) == 4


@pytest.mark.parametrize("setup", ["missing", "garbage", "outdir-is-file"])
def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, setup):
    model_path = tmp_path / "m.npz"
    out = tmp_path / "out"
    if setup == "garbage":
        model_path.write_bytes(b"garbage")
    else:
        model_io.save(pattern_model()[0], model_path)
    if setup == "missing":
        model_path.unlink()
    if setup == "outdir-is-file":
        out.write_text("I am a file")
    result = run("visualize", "--model", str(model_path), "--out-dir", str(out))
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: ")
    assert (out.is_file() and out.read_text() == "I am a file") or not out.exists()


def test_safe_filename():
    assert safe_filename("automobile") == "automobile"
    assert safe_filename("a/b c") == "a_b_c"
    assert safe_filename("../..") == "class"


def test_a_second_run_removes_only_what_the_first_wrote(tmp_path):
    grid = [{"lr": 1e-7, "reg": r, "val_accuracy": 0.3} for r in (1e4, 2e4)]
    first, _ = pattern_model(grid=grid)  # classes zero, pat/tern, also zero; a grid.png
    model_io.save(first, tmp_path / "a.npz")
    out = tmp_path / "out"
    assert (
        run("visualize", "--model", str(tmp_path / "a.npz"), "--out-dir", str(out)).exit_code == 0
    )
    (out / "notes.txt").write_text("mine")  # the user's own files
    (out / "99_mine.png").write_bytes(b"my png")
    (out / "01_pat_tern.png").write_bytes(b"edited by the user")  # changed since: kept

    second = Model(
        W=np.zeros((4 * 5 * 3 + 1, 2), np.float32),
        mean_image=np.zeros((4, 5, 3)),
        class_names=["left", "right"],
    )
    model_io.save(second, tmp_path / "b.npz")
    result = run("visualize", "--model", str(tmp_path / "b.npz"), "--out-dir", str(out), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["00_left.png", "01_right.png", "templates.png", "notes.txt", "99_mine.png",
         "01_pat_tern.png", MANIFEST]
    )  # fmt: skip
    assert sorted(Path(p).name for p in payload["removed"]) == [
        "00_zero.png", "02_also_zero.png", "grid.png", "loss.png"
    ]  # fmt: skip
    assert [Path(p).name for p in payload["files"]] == ["00_left.png", "01_right.png",
                                                        "templates.png"]  # fmt: skip
    assert (out / "notes.txt").read_text() == "mine"


def test_removal_message_without_json(tmp_path):
    model, _ = pattern_model()
    model_io.save(model, tmp_path / "m.npz")
    out = tmp_path / "out"
    run("visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out))
    model.class_names = ["a", "b", "c"]
    model_io.save(model, tmp_path / "m.npz")
    result = run("visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out))
    assert result.exit_code == 0
    assert "removed 3 file(s) an earlier visualize wrote here" in result.stderr
    assert not (out / "00_zero.png").exists() and (out / "00_a.png").exists()


def test_a_damaged_manifest_removes_nothing(tmp_path):
    model, _ = pattern_model()
    model_io.save(model, tmp_path / "m.npz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.png").write_bytes(b"x")
    (out / "keep.txt").write_bytes(b"x")
    import hashlib

    digest = hashlib.sha256(b"x").hexdigest()
    (out / MANIFEST).write_text(
        json.dumps({"files": {"keep.png/../keep.txt": digest, "../keep.png": digest, "x": 1}})
    )
    assert (
        run("visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out)).exit_code == 0
    )
    assert (out / "keep.png").exists() and (out / "keep.txt").exists()


def test_a_folder_in_the_way_is_found_before_anything_is_written(tmp_path):
    model, _ = pattern_model()
    model_io.save(model, tmp_path / "m.npz")
    out = tmp_path / "out"
    assert (
        run("visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out)).exit_code == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "loss.png").unlink()
    (out / "loss.png").mkdir()  # a name visualize writes is now a folder
    del before["loss.png"]
    model.W = model.W * 2 - 0.5  # different templates: any write would show
    model_io.save(model, tmp_path / "m.npz")
    result = run("visualize", "--model", str(tmp_path / "m.npz"), "--out-dir", str(out))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: --out-dir {out}: loss.png is a folder; nothing was written"
        " (move it away or choose another --out-dir)"
    ]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def dark_runs(strip: np.ndarray, gap: int) -> int:
    """How many groups of dark columns, separated by at least ``gap`` light ones."""
    dark = np.flatnonzero((strip < 128).any(axis=0))
    return 0 if dark.size == 0 else 1 + int((np.diff(dark) > gap).sum())


def test_montage_labels_never_overlap_and_keep_their_size():
    names = ["a long class name one", "another long name", "third"]
    bands = []
    for zoom in (1, 4):
        tiles = [to_pil(np.full((32, 32, 3), 200, np.uint8), zoom) for _ in range(3)]
        sheet = np.asarray(montage(tiles, names).convert("L"))
        labels = sheet[6 + 32 * zoom :, :]  # the band under the pictures
        assert dark_runs(labels, gap=5) == 3, zoom  # three labels, apart
        bands.append(labels.shape[0])
    assert bands[0] == bands[1]  # the labels' size does not follow the zoom
