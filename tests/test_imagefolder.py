"""Image folders as --data: layout, reading as predict reads, the cache, the split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.errors import SvmtoolError
from svmtool.io import imagefolder
from svmtool.io.data import Dataset, load_dataset, split
from svmtool.io.images import read_image

CLASSES = ("cat", "dog", "emu")


def class_images(rng, per_class: int, shape=(8, 8, 3)) -> dict[str, list[np.ndarray]]:
    out = {}
    for k, name in enumerate(CLASSES):
        images = []
        for _ in range(per_class):
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            a[..., k % shape[2]] = 40 + 80 * k  # learnable: one channel says the class
            images.append(a)
        out[name] = images
    return out


def write_folder(root: Path, images: dict[str, list[np.ndarray]], names=None) -> None:
    for cls, arrays in images.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i, a in enumerate(arrays):
            name = names(cls, i) if names else f"{i:03d}.png"
            Image.fromarray(a.squeeze(-1) if a.shape[-1] == 1 else a).save(root / cls / name)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "pets"
    write_folder(root, class_images(np.random.default_rng(0), 10))
    return root


def test_a_flat_folder_loads_with_sorted_classes_and_a_stated_test_split(folder, tmp_path):
    ds = imagefolder.load(folder, tmp_path / "cache")
    assert ds.class_names == list(CLASSES)
    assert ds.train_images.shape == (24, 8, 8, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (6, 8, 8, 3)
    assert np.bincount(ds.test_labels).tolist() == [2, 2, 2]  # stratified: 20% of each
    assert ds.source == str(folder.resolve())
    text = " ".join(ds.notes)
    assert "6 of 30 images" in text and "test split" in text
    assert "8 x 8 RGB (the most common size" in text
    assert ds.report["cache"] == "built" and ds.report["skipped_count"] == 0


def test_pixels_are_read_exactly_as_predict_reads_them(folder, tmp_path):
    ds = imagefolder.load(folder, tmp_path / "cache", image_size=(5, 7))
    expected = {
        read_image(folder / c / f"{i:03d}.png", (5, 7, 3)).tobytes()
        for c in CLASSES
        for i in range(10)
    }
    got = {im.tobytes() for im in np.concatenate([ds.train_images, ds.test_images])}
    assert got == expected
    assert ds.train_images.shape[1:] == (5, 7, 3)


def test_train_and_test_subfolders_are_the_splits(tmp_path):
    rng = np.random.default_rng(1)
    write_folder(tmp_path / "d" / "train", class_images(rng, 4))
    test = class_images(rng, 2)
    del test["emu"]  # a class the test set lacks is fine
    write_folder(tmp_path / "d" / "test", test)
    ds = imagefolder.load(tmp_path / "d", tmp_path / "cache")
    assert (len(ds.train_labels), len(ds.test_labels)) == (12, 4)
    assert ds.class_names == list(CLASSES)
    assert sorted(ds.test_labels.tolist()) == [0, 0, 1, 1]
    assert ds.report["layout"] == "train-test" and ds.report["test_rule"] is None


def test_a_test_class_unknown_to_train_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    write_folder(tmp_path / "d" / "train", class_images(rng, 2))
    write_folder(tmp_path / "d" / "test", {"yak": class_images(rng, 1)["cat"]})
    with pytest.raises(SvmtoolError, match="'yak'"):
        imagefolder.load(tmp_path / "d", tmp_path / "cache")


def test_broken_hidden_linked_and_other_files(folder, tmp_path):
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "cat" / "a.gif.jpg").write_bytes(b"GIF89a" + bytes(20))
    (folder / "dog" / ".DS_Store.png").write_bytes(b"x")
    (folder / "dog" / "README.txt").write_text("hi")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), "red").save(outside)
    os.symlink(outside, folder / "emu" / "linked.png")
    os.symlink(folder / "cat", folder / "emu" / "linked-folder")
    ds = imagefolder.load(folder, tmp_path / "cache")
    assert len(ds.train_labels) + len(ds.test_labels) == 30  # the link's red image is not read
    report = ds.report
    assert report["skipped_count"] == 2
    assert [s["file"] for s in report["skipped"]] == ["cat/a.gif.jpg", "cat/broken.png"]
    assert report["ignored"] == {"hidden": 1, "links": 2, "not PNG/JPEG": 1}
    assert any("skipped 2 unreadable file(s): cat/a.gif.jpg" in n for n in ds.notes)
    # The second run says the same, from the cache.
    again = imagefolder.load(folder, tmp_path / "cache")
    assert again.report["cache"] == "read" and again.report["skipped"] == report["skipped"]


def test_a_folder_where_most_files_fail_is_an_error(tmp_path):
    root = tmp_path / "bad"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.jpg").write_bytes(b"nope")
    Image.new("L", (4, 4)).save(root / "a" / "ok.png")
    with pytest.raises(SvmtoolError, match="6 of 7 image files cannot be read"):
        imagefolder.load(root, tmp_path / "cache")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda r: (r / "only").mkdir(parents=True), "at least 2"),
        (lambda r: [(r / c).mkdir(parents=True) for c in "ab"], "holds no .png"),
    ],
)
def test_empty_folders_are_clear_errors(tmp_path, make, message):
    make(tmp_path / "d")
    with pytest.raises(SvmtoolError, match=message):
        imagefolder.load(tmp_path / "d", tmp_path / "cache")


def test_grayscale_is_kept_when_every_image_is(tmp_path):
    root = tmp_path / "g"
    write_folder(root, class_images(np.random.default_rng(2), 5, shape=(6, 6, 1)))
    ds = imagefolder.load(root, tmp_path / "cache")
    assert ds.train_images.shape[1:] == (6, 6, 1)
    Image.new("RGB", (6, 6), "blue").save(root / "cat" / "colour.png")
    ds = imagefolder.load(root, tmp_path / "cache")
    assert ds.train_images.shape[1:] == (6, 6, 3)


def test_large_or_mixed_sizes_default_to_32_unless_asked(tmp_path):
    root = tmp_path / "m"
    for cls, size in (("a", (100, 80)), ("b", (20, 30))):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", size, (i * 50, 0, 0)).save(root / cls / f"{i}.jpg")
    ds = imagefolder.load(root, tmp_path / "cache")
    assert ds.train_images.shape[1:] == (32, 32, 3)
    assert "default" in ds.report["size_rule"]
    ds = imagefolder.load(root, tmp_path / "cache", image_size=(12, 16), channels=1)
    assert ds.train_images.shape[1:] == (12, 16, 1)


def exif_rotated_jpeg(path: Path, size=(40, 20)) -> None:
    im = Image.new("RGB", size, "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees: 20 wide, 40 high
    im.save(path, format="JPEG", exif=exif)


def test_photos_of_mixed_kinds_train_and_predict(tmp_path):
    """EXIF-rotated JPEGs, RGBA and 16-bit PNGs, no conversion step."""
    root = tmp_path / "photos"
    (root / "rot").mkdir(parents=True)
    (root / "deep").mkdir()
    for i in range(4):
        exif_rotated_jpeg(root / "rot" / f"{i}.jpeg")
        rgba = np.zeros((40, 20, 4), np.uint8)
        rgba[..., 3] = 0 if i % 2 else 255  # transparent: white, as predict shows it
        Image.fromarray(rgba, "RGBA").save(root / "rot" / f"alpha{i}.png")
        deep = np.full((30, 30), 1000 * (i + 1), np.uint16)
        Image.fromarray(deep).save(root / "deep" / f"{i}.png")
    # EXIF orientation counts in the size: 20 x 40 (not 40 x 20) is the most common one.
    assert imagefolder.probe_files([str(root / "rot" / "0.jpeg")]) == [(40, 20, False)]
    runner = CliRunner()
    model = tmp_path / "m.npz"
    args = ["train", "--data", str(root), "--model", str(model), "--iters", "20"]
    result = runner.invoke(app, [*args, "--num-val", "2", "--data-dir", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert "20 x 40 RGB" in result.output
    result = runner.invoke(app, ["predict", "--model", str(model), str(root / "deep" / "0.png")])
    assert result.exit_code == 0, result.output


# --- the cache -------------------------------------------------------------------------


def test_the_cache_notices_a_changed_file_and_ignores_a_touch(folder, tmp_path):
    cache = tmp_path / "cache"
    first = imagefolder.load(folder, cache)
    target = folder / "dog" / "003.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes
    touched = imagefolder.load(folder, cache)
    assert touched.report["cache"] == "read"
    # Same name, same size, new pixels: the digest differs, so it is decoded again.
    a = np.asarray(Image.open(target)).copy()
    a[0, 0] ^= 0xFF
    Image.fromarray(a).save(target)
    changed = imagefolder.load(folder, cache)
    assert changed.report["cache"] == "built"
    before = {im.tobytes() for im in np.concatenate([first.train_images, first.test_images])}
    after = {im.tobytes() for im in np.concatenate([changed.train_images, changed.test_images])}
    assert before != after


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: (e / "train_images.npy").write_bytes(b"\x93NUMPY garbage"),
        lambda e: (e / "meta.json").write_text("{"),
        lambda e: (e / "test_labels.npy").unlink(),
        lambda e: np.save(e / "train_labels.npy", np.full(24, 99, np.int64)),
        lambda e: (e / "files.json").write_text("[[1, 2"),
    ],
)
def test_a_damaged_cache_entry_is_rebuilt_not_trusted(folder, tmp_path, damage):
    cache = tmp_path / "cache"
    first = imagefolder.load(folder, cache)
    entry = Path(first.report["cache_entry"])
    damage(entry)
    # A touched file makes the per-file list (files.json) the judge.
    target = folder / "cat" / "000.png"
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = imagefolder.load(folder, cache)
    assert again.report["cache"] == "built"
    assert any("cannot be used" in n and "rebuilding" in n for n in again.notes)
    np.testing.assert_array_equal(again.train_images, first.train_images)
    assert imagefolder.load(folder, cache).report["cache"] == "read"


def test_an_evaluate_style_request_at_the_built_size_reads_the_cache(folder, tmp_path):
    cache = tmp_path / "cache"
    imagefolder.load(folder, cache)
    assert imagefolder.load(folder, cache, (8, 8), 3).report["cache"] == "read"
    assert imagefolder.load(folder, cache, (4, 4), 3).report["cache"] == "built"


def test_decoding_in_worker_processes_gives_the_same_dataset(folder, tmp_path, monkeypatch):
    one = imagefolder.load(folder, tmp_path / "c1", workers=1)
    monkeypatch.setattr(imagefolder, "POOL_MIN_FILES", 0)
    monkeypatch.setattr(imagefolder, "CHUNK", 4)
    two = imagefolder.load(folder, tmp_path / "c2", workers=2)
    np.testing.assert_array_equal(one.train_images, two.train_images)
    np.testing.assert_array_equal(one.test_labels, two.test_labels)
    assert "2 worker(s)" in " ".join(two.notes)


# --- the split does not depend on the file order ---------------------------------------


def test_the_same_images_in_another_order_split_the_same(folder, tmp_path):
    ds = imagefolder.load(folder, tmp_path / "cache")
    perm = np.random.default_rng(5).permutation(len(ds.train_labels))
    shuffled = Dataset(
        ds.train_images[perm], ds.train_labels[perm], ds.test_images, ds.test_labels,
        ds.class_names, "x.npz",
    )  # fmt: skip
    a, b = split(ds, seed=3, num_val=5), split(shuffled, seed=3, num_val=5)
    for part in ("train", "val", "dev"):
        left = [ds.train_images[i].tobytes() for i in getattr(a, part)]
        right = [shuffled.train_images[i].tobytes() for i in getattr(b, part)]
        if part == "train":
            assert left == right  # the same images in the same SGD order
        else:
            assert sorted(left) == sorted(right)


def test_a_folder_trains_like_the_npz_of_the_same_images(tmp_path):
    rng = np.random.default_rng(7)
    images = class_images(rng, 12)
    root = tmp_path / "f"
    write_folder(root / "train", images)
    test = class_images(rng, 2)
    write_folder(root / "test", test)
    # The npz holds them in another order (interleaved classes).
    X = np.stack([images[c][i] for i in range(12) for c in CLASSES])
    y = np.array([k for _ in range(12) for k in range(3)])
    Xt = np.stack([a for c in CLASSES for a in test[c]])
    yt = np.repeat(np.arange(3), 2)
    npz = tmp_path / "same.npz"
    np.savez(npz, X_train=X, y_train=y, X_test=Xt, y_test=yt, class_names=np.array(CLASSES))
    runner = CliRunner()
    accuracies = []
    for data in (root, npz):
        out = tmp_path / f"{data.name}.model.npz"
        result = runner.invoke(
            app,
            ["train", "--data", str(data), "--model", str(out), "--iters", "30", "--json",
             "--num-val", "6", "--batch-size", "8", "--seed", "4",
             "--data-dir", str(tmp_path / "c")],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        metrics = {k: report["metrics"][k] for k in ("train_accuracy", "val_accuracy")}
        accuracies.append((metrics, report["loss_history"]))
    assert accuracies[0] == accuracies[1]


def test_train_json_reports_the_folder_and_evaluate_reads_it(folder, tmp_path):
    (folder / "emu" / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    runner = CliRunner()
    model = tmp_path / "m.npz"
    cache = ["--data-dir", str(tmp_path / "c")]
    args = ["train", "--data", str(folder), "--model", str(model), "--iters", "5", "--json"]
    result = runner.invoke(app, [*args, *cache])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["settings"]["data"] == str(folder.resolve())
    assert report["data"]["skipped"][0]["file"] == "emu/bad.jpg"
    result = runner.invoke(app, ["evaluate", "--model", str(model), *cache])
    assert result.exit_code == 0, result.output
    assert "read from the image cache" in result.output
    assert "on 6 images" in result.output
    result = runner.invoke(app, ["gradcheck", "--model", str(model), "--checks", "3", *cache])
    assert result.exit_code in (0, 1), result.output
    assert "image folder" in result.output


@pytest.mark.parametrize("text", ["0", "32x", "axb", "2000", "3x4x5"])
def test_bad_image_sizes_are_refused(text, tmp_path, folder):
    result = CliRunner().invoke(
        app, ["train", "--data", str(folder), "--image-size", text, "--model", "m.npz"]
    )
    assert result.exit_code != 0
    assert "--image-size" in result.output and "Traceback" not in result.output


def test_image_size_is_width_by_height():
    assert imagefolder.parse_image_size("64x48") == (48, 64)
    assert imagefolder.parse_image_size("28") == (28, 28)


def test_load_dataset_takes_a_folder(folder, tmp_path):
    ds = load_dataset(str(folder), tmp_path / "cache", image_size=(4, 4))
    assert ds.train_images.shape[1:] == (4, 4, 3)
