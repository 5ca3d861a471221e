"""CIFAR-10's own files as they are: Python 2 pickles, and archives checked to their last byte.

The python batches of cifar-10-python.tar.gz were written by Python 2's cPickle with numpy 1.x:
the dtype is pickled as numpy.dtype('u1', 0, 1) with integer flags, its state's byte order as a
Python 2 str. conftest.python_batch writes that layout, so every python-format test reads it.
"""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest
from conftest import batch_files, cifar_archive, extracted, md5, python_batch
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.errors import SvmtoolError
from svmtool.io import cifar

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_the_fixture_has_the_official_layout(tiny):
    """Guard for the fixture itself: integer dtype flags and a Python 2 str byte order,
    the bytes the official data_batch_1 holds."""
    body = python_batch(tiny.train_images[:12], tiny.train_labels[:12])
    assert body.startswith(b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\n")
    assert b"cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87R" in body
    assert b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" in body


def test_official_batch_reads_as_cs231n_reads_it(tmp_path, tiny):
    images, labels = tiny.train_images[:12], tiny.train_labels[:12]
    path = tmp_path / "data_batch_1"
    path.write_bytes(python_batch(images, labels))
    with open(path, "rb") as f:  # CS231n's load_CIFAR_batch
        theirs = pickle.load(f, encoding="latin1")
    ours_images, ours_labels = cifar._read_python_batch(path)
    expected = theirs["data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ours_images, expected)
    np.testing.assert_array_equal(ours_labels, theirs["labels"])
    np.testing.assert_array_equal(ours_images, images)


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_every_layout_numpy_writes_loads_the_same_pixels(tmp_path, tiny, protocol):
    """What today's numpy writes at each pickle protocol (5: _frombuffer with an in-band
    bytearray) reads as the official layout does."""
    images, labels = tiny.train_images[:12], tiny.train_labels[:12]
    batch = {
        b"data": images.transpose(0, 3, 1, 2).reshape(12, -1),
        b"labels": [int(v) for v in labels],
    }
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    got_images, got_labels = cifar._read_python_batch(path)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize(
    ("flags", "shown"),
    [
        (b"K\x01K\x01", "numpy.dtype('u1', 1, 1)"),  # aligned
        (b"K\x00K\x00", "numpy.dtype('u1', 0, 0)"),  # not a copy
        (b"K\x00K\x02", "numpy.dtype('u1', 0, 2)"),
        (b"K\x00N", "numpy.dtype('u1', 0, None)"),
    ],
)
def test_other_dtype_flags_are_refused_without_crying_tamper(tmp_path, tiny, flags, shown):
    body = python_batch(tiny.train_images[:12], tiny.train_labels[:12])
    path = tmp_path / "data_batch_1"
    path.write_bytes(body.replace(b"U\x02u1K\x00K\x01", b"U\x02u1" + flags, 1))
    with pytest.raises(SvmtoolError) as caught:
        cifar._read_python_batch(path)
    message = str(caught.value)
    assert shown in message and "numpy.dtype('u1', False, True)" in message
    assert "refusing" not in message and "altered" not in message


def test_python_and_binary_archives_give_byte_identical_caches(tmp_path, tiny):
    caches = {}
    for fmt in ("binary", "python"):
        body = cifar_archive(tiny, fmt)
        archive = tmp_path / f"{fmt}.tar.gz"
        archive.write_bytes(body)
        data_dir = tmp_path / fmt
        result = run(
            "download", "--data-dir", str(data_dir), "--format", fmt,
            "--from-file", str(archive), "--md5", md5(body),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        folder = cifar.cache_dir(data_dir)
        caches[fmt] = {p.name: p.read_bytes() for p in sorted(folder.iterdir())}
    assert caches["binary"].keys() == caches["python"].keys()
    for name in caches["binary"]:
        assert caches["binary"][name] == caches["python"][name], name


def test_official_python_folder_trains_evaluates_and_gradchecks(tmp_path, tiny):
    folder = extracted(tmp_path, tiny, "python")
    model = tmp_path / "model.npz"
    trained = run("train", "--data-dir", str(folder), "--iters", "3", "--model", str(model))
    assert trained.exit_code == 0, trained.output
    evaluated = run("evaluate", "--model", str(model), "--data-dir", str(folder), "--json")
    assert evaluated.exit_code == 0, evaluated.output
    checked = run("gradcheck", "--data-dir", str(folder), "--checks", "3", "--json")
    assert checked.exit_code in (0, 1), checked.output  # 1 only if a coordinate FAILs
    assert "Error" not in checked.output


# --- damaged archives: every compressed stream is read to its end ---------------


def damaged(body: bytes, where: str) -> bytes:
    """``body`` (a gzipped tar) with one byte changed at ``where``."""
    positions = {
        "header-method": 2,  # CM: 8 is deflate
        "header-flags": 3,  # FLG: a reserved bit
        "middle": len(body) // 2,
        "crc": len(body) - 8,
        "length": len(body) - 4,
        "last": len(body) - 1,
    }
    at = positions[where]
    flip = 0xE0 if where == "header-flags" else 0x01
    return body[:at] + bytes([body[at] ^ flip]) + body[at + 1 :]


@pytest.mark.parametrize("fmt", ["binary", "python"])
@pytest.mark.parametrize(
    "where", ["header-method", "header-flags", "middle", "crc", "length", "last"]
)
def test_one_damaged_byte_anywhere_is_refused_and_nothing_kept(tmp_path, tiny, fmt, where):
    body = damaged(cifar_archive(tiny, fmt), where)
    archive = tmp_path / "mirror.tar.gz"
    archive.write_bytes(body)
    data_dir = tmp_path / "data"
    result = run(
        "download", "--data-dir", str(data_dir), "--format", fmt,
        "--from-file", str(archive), "--md5", md5(body),  # the damaged copy's own md5
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error:") and len(result.output.strip().splitlines()) == 1
    assert "mirror.tar.gz" in result.output
    assert not os.path.lexists(cifar.cache_dir(data_dir))
    assert [p.name for p in data_dir.iterdir()] == [] if data_dir.exists() else True


def test_the_middle_damage_is_caught_by_the_crc_alone(tiny):
    """The tiny archives' pixels are random, so deflate stores them: a flipped byte in
    the middle decompresses without error into a wrong pixel, and only the trailer's
    CRC-32 (read after tarfile has stopped) says so."""
    body = damaged(cifar_archive(tiny, "binary"), "middle")
    with pytest.raises(gzip.BadGzipFile, match="CRC check failed"):
        gzip.decompress(body)


def test_an_intact_archive_still_installs(tmp_path, tiny):
    body = cifar_archive(tiny, "binary")
    archive = tmp_path / "mirror.tar.gz"
    archive.write_bytes(body)
    result = run(
        "download", "--data-dir", str(tmp_path / "d"), "--from-file", str(archive),
        "--md5", md5(body),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(batch_files(tiny, "binary")) == 7
