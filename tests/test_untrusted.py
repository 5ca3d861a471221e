"""Untrusted files: every size bounded before allocating, every field validated,
only PNG and JPEG decoded, never a FIFO waited on. Each problem is one line.

The inputs that would allocate gigabytes if a check regressed run in a child
process under a memory limit (conftest.run_limited).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import batch_files, cifar_archive, extracted, make_tiny, run_limited, tar_gz
from PIL import Image
from test_model import rewrite, small_model
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.errors import SvmtoolError
from svmtool.io import cifar, images
from svmtool.io import model as model_io
from svmtool.io.data import load_npz
from svmtool.io.download import safe_extract
from svmtool.io.npzfile import read_npz

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "internal error" not in lines[0] and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def user_npz(path: Path, **changes) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "X_train": rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8),
        "y_train": np.arange(20) % 2,
        "X_test": rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8),
        "y_test": np.arange(6) % 2,
    }
    arrays.update(changes)
    return save_npz(path, **arrays)


# --- FIFOs and devices where a file is expected ----------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.usefixtures("deadline")
def test_fifo_where_a_file_is_expected_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    one_line_error(run("evaluate", "--model", str(fifo)), "is a FIFO, not a regular file")
    one_line_error(run("train", "--data", str(fifo)), "is a FIFO")
    png = tmp_path / "pipe.png"
    os.mkfifo(png)
    model = model_io.save(small_model(shape=(4, 4, 3)), tmp_path / "m.npz")
    result = run("predict", str(png), "--model", str(model))
    assert result.exit_code == 1 and "is a FIFO" in result.output
    folder = extracted(tmp_path / "d", make_tiny(), "binary")
    (folder / "data_batch_2.bin").unlink()
    os.mkfifo(folder / "data_batch_2.bin")
    with pytest.raises(SvmtoolError, match="is a FIFO"):
        cifar.load(folder)


def test_device_where_a_file_is_expected_is_refused():
    with pytest.raises(SvmtoolError, match="is a device"):
        read_npz(Path(os.devnull), "dataset")


# --- npz members --------------------------------------------------------------------


def zip_with(path: Path, name: str, data: bytes, compress=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        zf.writestr(name, data)
    return path


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def patch_zip(path: Path, offset_in_header: int, value: bytes) -> None:
    """Overwrite a field in both the local header and the central directory entry."""
    data = bytearray(path.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + offset_in_header : local + offset_in_header + len(value)] = value
    # The central directory's fields sit 2 bytes later (it has "version made by").
    data[central + offset_in_header + 2 : central + offset_in_header + 2 + len(value)] = value
    path.write_bytes(bytes(data))


def test_npz_member_that_is_not_npy(tmp_path):
    path = zip_with(tmp_path / "d.npz", "X_train.txt", b"hello")
    one_line_error(run("train", "--data", str(path)), "member X_train.txt is not an .npy array")


def test_encrypted_npz_member(tmp_path):
    path = zip_with(tmp_path / "d.npz", "X_train.npy", npy_bytes(np.zeros(3)))
    patch_zip(path, 6, struct.pack("<H", 0x1))  # general purpose flag: encrypted
    one_line_error(run("train", "--data", str(path)), "member X_train.npy is encrypted")


def test_npz_member_with_unknown_compression(tmp_path):
    path = zip_with(tmp_path / "d.npz", "X_train.npy", npy_bytes(np.zeros(3)))
    patch_zip(path, 8, struct.pack("<H", 99))  # compression method 99 (AES)
    one_line_error(run("train", "--data", str(path)), "compression method 99")


def lying_npy(shape: tuple[int, ...], dtype: str = "<f8", payload: bytes = b"\0" * 64) -> bytes:
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    text = repr(header).encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


def test_npy_header_that_disagrees_with_its_size(tmp_path):
    path = zip_with(tmp_path / "d.npz", "X_train.npy", lying_npy((100_000, 100_000)))
    with pytest.raises(SvmtoolError, match=r"header says float64 \(100000, 100000\)"):
        read_npz(path, "dataset")


def test_npy_header_lie_under_a_memory_limit(tmp_path):
    """80 GB claimed by a 200-byte member: refused, never allocated."""
    path = zip_with(tmp_path / "d.npz", "X_train.npy", lying_npy((100_000, 100_000)))
    done = run_limited("train", "--data", str(path))
    assert done.returncode == 1, done.stderr
    assert "header says" in done.stderr and "Traceback" not in done.stderr


def test_object_arrays_are_refused_before_loading(tmp_path):
    path = save_npz(tmp_path / "d.npz", X_train=np.array([object()], dtype=object))
    one_line_error(run("train", "--data", str(path)), "refusing to unpickle")


def test_a_billion_classes_are_refused_under_a_memory_limit(tmp_path):
    path = user_npz(tmp_path / "d.npz", y_train=np.r_[np.zeros(19, np.int64), 10**9])
    done = run_limited("train", "--data", str(path), "--iters", "1")
    assert done.returncode == 1, done.stderr
    assert "label 1000000000 in y_train" in done.stderr and "Traceback" not in done.stderr


def test_class_names_must_be_strings(tmp_path):
    path = user_npz(tmp_path / "d.npz", class_names=np.array([1.5, 2.5]))
    with pytest.raises(SvmtoolError, match="class_names must be a list of strings"):
        load_npz(path)


# --- pickled batches ----------------------------------------------------------------

# Each is a whole data_batch_1 file; the rest of the folder is a valid CIFAR-10.
PROTO2 = b"\x80\x02"
HOSTILE_PICKLES = {
    # BINBYTES8 with a length of 2**40: the C unpickler allocates it up front.
    "binbytes8": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xx",
    # A memo index of 2**30: the C unpickler resizes its memo to twice that.
    "memo": PROTO2 + b"N" + b"r" + struct.pack("<I", 1 << 30) + b".",
    # numpy.ndarray((10**6, 10**5)) called directly: 100 GB.
    "ndarray_call": PROTO2 + b"cnumpy\nndarray\n" + b"J\x40\x42\x0f\x00J\xa0\x86\x01\x00\x86\x85R.",
    # _reconstruct(ndarray, (10**10,), b'b'): an empty array of 10 GB.
    "reconstruct": PROTO2
    + b"cnumpy.core.multiarray\n_reconstruct\n"
    + b"cnumpy\nndarray\n"
    + b"\x8a\x05\x00\xe4\x0bT\x02\x85"
    + b"U\x01b\x87R.",
}


def nested_labels_pickle() -> bytes:
    """labels = [[[L]*1000]*1000]: 10**9 ints from a few bytes, via the memo."""
    inner = pickle.dumps([0] * 1000, protocol=2)[2:-1]  # the list, without PROTO/STOP
    body = PROTO2 + b"}(" + b"U\x06labels" + inner + b"q\x01"
    for _ in range(2):  # each level: a list holding the previous level 1000 times
        body += b"(" + b"h\x01" * 1000 + b"lq\x01"
    body += b"U\x04data" + b"N" + b"u."
    return body


def codec_bomb() -> bytes:
    """_codecs.encode(..., 'hex') applied 40 times: 2**40 bytes from a short string."""
    body = PROTO2
    for _ in range(40):
        body += b"c_codecs\nencode\n"
    body += b"U\x02ab"
    for _ in range(40):
        body += b"X\x03\x00\x00\x00hex\x86R"
    return body + b"."


def hostile_folders(root: Path) -> dict[str, Path]:
    tiny = make_tiny()
    cases = dict(HOSTILE_PICKLES)
    cases["nested_labels"] = nested_labels_pickle()
    cases["codec_bomb"] = codec_bomb()
    cases["string_labels"] = pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [b"cat", b"dog"]}, protocol=2
    )
    folders = {}
    for name, content in cases.items():
        folder = root / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for file, data in batch_files(tiny, "python").items():
            (folder / file).write_bytes(data)
        (folder / "data_batch_1").write_bytes(content)
        folders[name] = folder
    return folders


def test_hostile_pickles_are_refused_under_a_memory_limit(tmp_path):
    folders = hostile_folders(tmp_path)
    code = (
        "import json, sys\n"
        "from svmtool.io import cifar\n"
        "from svmtool.errors import SvmtoolError\n"
        "out = {}\n"
        "for name, folder in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        cifar.load(__import__('pathlib').Path(folder))\n"
        "        out[name] = 'loaded'\n"
        "    except SvmtoolError as exc:\n"
        "        out[name] = str(exc)\n"
        "    except BaseException as exc:\n"
        "        out[name] = 'UNCAUGHT ' + type(exc).__name__\n"
        "print(json.dumps(out))\n"
    )
    done = run_limited("-c", code, json.dumps({k: str(v) for k, v in folders.items()}))
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert set(results) == set(folders)
    for name, message in results.items():
        assert "data_batch_1" in message, (name, message)
        assert "UNCAUGHT" not in message and message != "loaded", (name, message)
    assert "labels must be integers, found bytes" in results["string_labels"]
    assert "reconstructed" in results["reconstruct"]


def test_a_real_batch_still_loads_with_the_checks(tmp_path):
    tiny = make_tiny()
    folder = extracted(tmp_path, tiny, "python")
    np.testing.assert_array_equal(cifar.load(folder).train_images, tiny.train_images)


# --- tar archives -------------------------------------------------------------------


def test_tar_members_adding_up_past_the_bound_are_refused_before_extracting(tmp_path):
    info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_9.bin")
    info.size = cifar.MAX_EXTRACTED_BYTES  # with the first member, past the bound
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        first = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        first.size = 3073
        tar.addfile(first, io.BytesIO(b"\0" * 3073))
        tar.fileobj.write(tarfile.TarInfo.tobuf(info))  # the header alone: the data never comes
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    with pytest.raises(SvmtoolError, match="add up to more than 400,000,000 bytes"):
        safe_extract(archive, out, cifar.MAX_EXTRACTED_BYTES, cifar.MAX_MEMBERS)
    assert not out.exists()  # nothing extracted


def test_tar_with_too_many_members_is_refused(tmp_path):
    archive = tmp_path / "many.tar.gz"
    archive.write_bytes(tar_gz({f"f{i}": b"" for i in range(cifar.MAX_MEMBERS + 1)}))
    one_line_error(
        run("download", "--data-dir", str(tmp_path / "d"), "--from-file", str(archive),
            "--md5", __import__("hashlib").md5(archive.read_bytes()).hexdigest()),
        f"more than {cifar.MAX_MEMBERS} members",
    )  # fmt: skip


def test_tar_bomb_under_a_memory_limit(tmp_path):
    """One member claiming 1 TB: refused from its header."""
    info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
    info.size = 1 << 40
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.fileobj.write(info.tobuf(format=tarfile.GNU_FORMAT))
        tar.fileobj.write(b"\0" * (1 << 20))
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(buffer.getvalue())
    digest = __import__("hashlib").md5(archive.read_bytes()).hexdigest()
    data_dir = tmp_path / "d"
    done = run_limited(
        "download", "--data-dir", str(data_dir), "--from-file", str(archive), "--md5", digest
    )
    assert done.returncode == 1 and "add up to more than" in done.stderr, done.stderr
    assert not data_dir.exists()  # the run created it, and removed it


def test_duplicate_tar_member_is_refused(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for content in (b"first", b"second"):
            info = tarfile.TarInfo("a/x")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    archive = tmp_path / "dup.tar.gz"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(SvmtoolError, match="twice"):
        safe_extract(archive, tmp_path / "out")


# --- the cache ----------------------------------------------------------------------


def built_cache(tmp_path: Path) -> Path:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(cifar_archive(make_tiny(), "binary"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    cifar.install_archive(archive, data_dir, "binary")
    return data_dir


def test_cache_meta_without_class_names(tmp_path):
    data_dir = built_cache(tmp_path)
    meta_path = data_dir / "cifar-10-cache" / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["class_names"]
    meta_path.write_text(json.dumps(meta))
    one_line_error(
        run("train", "--data-dir", str(data_dir), "--iters", "1"),
        "lacks the ten class names",
        "download --force",
    )


@pytest.mark.parametrize("bad", [-1, 10, 255])
def test_cache_labels_out_of_range(tmp_path, bad):
    data_dir = built_cache(tmp_path)
    labels_path = data_dir / "cifar-10-cache" / "train_labels.npy"
    labels = np.load(labels_path)
    labels[7] = bad
    np.save(labels_path, labels)
    one_line_error(
        run("train", "--data-dir", str(data_dir), "--iters", "1"), "outside 0..9", "--force"
    )


def test_cache_npy_header_that_disagrees_with_its_file(tmp_path):
    data_dir = built_cache(tmp_path)
    path = data_dir / "cifar-10-cache" / "test_labels.npy"
    path.write_bytes(lying_npy((10,), "<i8", b"\0" * 40))  # 40 bytes for 80
    assert "says int64 (10,) (80 bytes) but holds 40" in cifar.cache_state(data_dir)


# --- model files --------------------------------------------------------------------

DAMAGED_FIELDS = [
    ({"format_version": np.array("one")}, "format_version"),
    ({"format_version": np.array([1, 1])}, "format_version"),
    ({"svmtool_version": np.array(3.0)}, "svmtool_version"),
    ({"W": np.zeros((37, 3), np.int64)}, "W is int64"),
    ({"W": np.zeros(37 * 3, np.float32)}, "W is float32"),
    ({"W": np.full((37, 3), np.nan, np.float32)}, "W holds NaN"),
    ({"W": np.full((37, 3), np.inf, np.float32)}, "W holds NaN or infinite"),
    ({"mean_image": np.zeros((4, 3, 3), np.uint8)}, "mean_image is uint8"),
    ({"mean_image": np.full((4, 3, 3), np.nan)}, "mean_image holds NaN"),
    ({"mean_image": np.zeros((3, 4, 3))}, "inconsistent"),
    ({"image_shape": np.array([4, 3])}, "image_shape"),
    ({"image_shape": np.array([4, -3, -3])}, "image_shape"),
    ({"image_shape": np.array([4.0, 3.0, 3.0])}, "image_shape"),
    ({"image_shape": np.array([[4, 3, 3]])}, "image_shape"),
    ({"image_shape": np.array([2, 3, 6])}, "inconsistent"),
    ({"class_names": np.array([1, 2, 3])}, "class_names is int64"),
    ({"class_names": np.array([["a", "b", "c"]])}, "class_names"),
    ({"class_names": np.array("abc")}, "class_names"),
    ({"settings": np.array("[1, 2]")}, "settings must be a JSON object"),
    ({"settings": np.array(["{}", "{}"])}, "settings is <U2 (2,)"),
    ({"settings": np.array('{"seed": "zero"}')}, "setting seed"),
    ({"settings": np.array('{"seed": -4}')}, "setting seed is -4"),
    ({"settings": np.array('{"data": 7}')}, "setting data"),
    ({"settings": np.array('{"num_train": true}')}, "setting num_train"),
    ({"settings": np.array('{"lr": NaN}')}, "setting lr"),
    ({"settings": np.array("[" * 100_000 + "]" * 100_000)}, "nested more than"),
    ({"settings": np.array('{"a":' * 40 + "1" + "}" * 40)}, "nested more than"),
    ({"settings": np.array('{"lr": 1' + "0" * 5000 + "}")}, "damaged metadata"),
    ({"metrics": np.array("3")}, "metrics must be a JSON object"),
    ({"grid": np.array("{}")}, "grid must be a JSON list"),
    ({"grid": np.array("[1]")}, "grid entry 0 is not an object"),
    ({"grid": np.array('[{"lr": "x", "reg": 1}]')}, "grid entry 0 lacks"),
    ({"grid": np.array('[{"lr": 1, "reg": 1, "val_accuracy": "high"}]')}, "val_accuracy"),
    ({"loss_history": np.array(["a", "b"])}, "loss_history"),
    ({"loss_history": np.zeros((2, 2))}, "loss_history"),
]


@pytest.mark.parametrize(("changes", "message"), DAMAGED_FIELDS)
def test_every_damaged_model_field_is_one_clear_line(tmp_path, changes, message):
    path = model_io.save(small_model(), tmp_path / "m.npz")
    rewrite(path, **changes)
    with pytest.raises(SvmtoolError) as caught:
        model_io.load(path)
    assert message in str(caught.value)
    # and through the commands that read models
    image = tmp_path / "x.png"
    Image.new("RGB", (5, 5)).save(image)
    for args in (["predict", str(image)], ["visualize", "--out-dir", str(tmp_path / "v")]):
        one_line_error(run(*args, "--model", str(path)), message)


def test_nan_weights_give_no_predictions(tmp_path):
    path = model_io.save(small_model(), tmp_path / "m.npz")
    rewrite(path, W=np.full((37, 3), np.nan, np.float32))
    image = tmp_path / "x.png"
    Image.new("RGB", (5, 5)).save(image)
    result = run("predict", str(image), "--model", str(path))
    assert result.exit_code == 1 and "NaN" in result.output


def test_a_good_model_still_loads(tmp_path):
    path = model_io.save(small_model(), tmp_path / "m.npz")
    assert model_io.load(path).class_names == ["a", "b", "c"]


# --- images -------------------------------------------------------------------------


def test_predict_never_starts_an_external_program(tmp_path, monkeypatch):
    """An EPS file would go to Ghostscript: here a fake 'gs' that leaves a mark."""
    marker = tmp_path / "gs-ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    eps = tmp_path / "picture.png"  # the name does not matter, the content does
    Image.new("RGB", (8, 8), "red").save(eps, format="EPS")
    model = model_io.save(small_model(shape=(4, 4, 3)), tmp_path / "m.npz")
    result = run("predict", str(eps), "--model", str(model))
    assert result.exit_code == 1
    assert "not a PNG or JPEG file" in result.output
    assert not marker.exists()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_images_over_the_pixel_limit_are_refused_with_one_line(tmp_path):
    model = model_io.save(small_model(shape=(4, 4, 3)), tmp_path / "m.npz")
    # Just over Pillow's limit (where it only warns and decodes anyway), and far over it.
    for name, size in (("warned.png", (10_000, 9_000)), ("bomb.png", (60_000, 60_000))):
        (tmp_path / name).write_bytes(png_header_only(*size))
    done = run_limited(
        "predict", str(tmp_path / "warned.png"), str(tmp_path / "bomb.png"), "--model", str(model)
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr  # no Python warning, no traceback
    assert "warned.png: refusing an image of 90,000,000 pixels" in lines[0]
    assert "bomb.png: refusing an image of 3,600,000,000 pixels" in lines[1]


def test_pixel_limit_leaks_no_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 40)).save(path)  # 1600 pixels: Pillow would warn, then decode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SvmtoolError, match="refusing an image of 1,600 pixels"):
            images.read_image(path, (4, 4, 3))


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 64], [257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    got = images.read_image(path, (2, 2, 1))
    np.testing.assert_array_equal(got[..., 0], [[0, 64], [128, 255]])
    rgb = images.read_image(path, (2, 2, 3))
    np.testing.assert_array_equal(rgb[..., 1], [[0, 64], [128, 255]])


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    stored = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as phones write it
    path = tmp_path / "phone.png"
    stored.save(path, exif=exif)
    got = images.read_image(path, (3, 2, 3))  # shown 3 tall, 2 wide
    np.testing.assert_array_equal(got, np.rot90(pixels, k=-1))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_are_shown_over_white(tmp_path, mode):
    path = tmp_path / f"{mode}.png"
    if mode == "P":
        im = Image.new("P", (2, 1))
        im.putpalette([0, 0, 0, 255, 0, 0])
        im.putpixel((0, 0), 0)
        im.putpixel((1, 0), 1)
        im.save(path, transparency=0)
        expected = [[255, 255, 255], [255, 0, 0]]
    else:
        color = (0, 0, 0, 0) if mode == "RGBA" else (0, 0)
        half = (0, 0, 0, 128) if mode == "RGBA" else (0, 128)
        im = Image.new(mode, (2, 1), color)
        im.putpixel((1, 0), half)
        im.save(path)
        expected = [[255, 255, 255], [127, 127, 127]]
    got = images.read_image(path, (1, 2, 3))
    np.testing.assert_allclose(got[0].astype(int), expected, atol=1)


def test_predict_reads_a_missing_file_as_one_line(tmp_path):
    model = model_io.save(small_model(shape=(4, 4, 3)), tmp_path / "m.npz")
    result = run("predict", str(tmp_path / "none.png"), "--model", str(model))
    assert result.exit_code == 1 and "image not found" in result.output


def test_npz_expanding_past_the_machines_memory_is_refused(tmp_path, monkeypatch):
    """A deflated member may expand 1000-fold; its declared size is checked first."""
    from svmtool.io import npzfile

    path = tmp_path / "d.npz"
    np.savez_compressed(path, X_train=np.zeros(100_000, np.uint8))  # 100 kB from ~200 bytes
    monkeypatch.setattr(npzfile, "physical_memory", lambda: 50_000)
    with pytest.raises(SvmtoolError, match="more than this machine's"):
        read_npz(path, "dataset")


@pytest.mark.parametrize("where", ["cache", "manifest"])
def test_deeply_nested_json_in_our_own_files_is_damage_not_a_crash(tmp_path, where):
    deep = "[" * 100_000 + "]" * 100_000
    if where == "cache":
        data_dir = built_cache(tmp_path)
        (data_dir / "cifar-10-cache" / "meta.json").write_text(deep)
        assert "damaged" in cifar.cache_state(data_dir)
    else:
        model = model_io.save(small_model(), tmp_path / "m.npz")
        out = tmp_path / "v"
        out.mkdir()
        (out / ".svmtool-visualize.json").write_text(deep)
        assert run("visualize", "--model", str(model), "--out-dir", str(out)).exit_code == 0


def test_unreadable_exif_is_ignored_as_a_viewer_does(tmp_path):
    path = tmp_path / "badexif.png"
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff garbage"
    Image.new("RGB", (4, 3), "red").save(path, exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning escapes read_image
        got = images.read_image(path, (3, 4, 3))
    assert (got == [255, 0, 0]).all()


def test_damaged_dtype_descriptions_never_reach_numpy(tmp_path):
    """numpy's dtype.__setstate__ crashes the interpreter (SIGSEGV) on a state two
    bytes shorter than it wrote: the unpickler must not hand it one. Run in a child."""
    tiny = make_tiny()
    good = batch_files(tiny, "python")["data_batch_1"]
    at = good.find(b"NNNJ")  # inside the dtype's state: (3, '|', None, None, None, -1, -1, 0)
    variants = {
        "short_state": good[:at] + good[at + 2 :],
        # The fixture is a Python 2 pickle, as the official files are: SHORT_BINSTRINGs.
        "object_dtype": good.replace(b"U\x02u1", b"U\x02O8", 1),
        "odd_order": good.replace(b"U\x01|", b"U\x01>", 1),
    }
    folders = {}
    for name, content in variants.items():
        folder = tmp_path / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for file, data in batch_files(tiny, "python").items():
            (folder / file).write_bytes(data)
        (folder / "data_batch_1").write_bytes(content)
        folders[name] = str(folder)
    code = (
        "import json, sys, pathlib\n"
        "from svmtool.io import cifar\n"
        "from svmtool.errors import SvmtoolError\n"
        "for name, folder in json.loads(sys.argv[1]).items():\n"
        "    try:\n"
        "        cifar.load(pathlib.Path(folder))\n"
        "        print(name, 'loaded', flush=True)\n"
        "    except SvmtoolError as exc:\n"
        "        print(name, 'refused', exc, flush=True)\n"
    )
    done = run_limited("-c", code, json.dumps(folders))
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)  # -11: crashed
    lines = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert lines["short_state"] == "loaded"  # u1 needs nothing from its state
    assert lines["object_dtype"].startswith("refused") and "dtype 'O8'" in lines["object_dtype"]
    assert lines["odd_order"].startswith("refused")


def raw_npy(header_text: str, payload: bytes = b"") -> bytes:
    text = header_text.encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + payload


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f8', 'fortran_order': False, 'shape': (",  # the tokenizer's TokenError
        "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), 'x': [[[[",
        "{'descr': 7, 'fortran_order': False, 'shape': (3,)}",
    ],
)
def test_damaged_npy_headers_are_one_line(tmp_path, header):
    path = zip_with(tmp_path / "m.npz", "W.npy", raw_npy(header, b"\0" * 24))
    with pytest.raises(SvmtoolError, match="cannot read model"):
        read_npz(path, "model")


def test_fuzzed_files_only_ever_give_one_line_errors():
    """Seeded mutations of a pickled batch, a model file, PNG and JPEG images and a
    tar: every failure is an SvmtoolError, with warnings as errors, in a child
    process (a crash or a MemoryError fails this test, not the run)."""
    script = Path(__file__).parent / "fuzz_inputs.py"
    done = run_limited("-W", "error", str(script), "100")
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert json.loads(done.stdout) == {}
