"""CIFAR-100, Fashion-MNIST and MNIST: real-format files made here, served from 127.0.0.1."""

from __future__ import annotations

import dataclasses
import gzip
import io
import struct
import tarfile

import numpy as np
import pytest
from conftest import md5, py2_pickle
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.errors import DataNotFound, SvmtoolError
from svmtool.io import named
from svmtool.io.data import DOWNLOADABLE, NAMED_DATASETS, load_dataset, split

runner = CliRunner()


def idx(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes, gzipped, as the MNIST files are."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes())


def mnist_files(seed: int = 0, n_train: int = 40, n_test: int = 10) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (n_train, 7, 5))),
        "train-labels-idx1-ubyte.gz": idx(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx(rng.integers(0, 256, (n_test, 7, 5))),
        "t10k-labels-idx1-ubyte.gz": idx(np.arange(n_test) % 10),
    }


def with_md5s(monkeypatch, name: str, files: dict[str, bytes]) -> None:
    """The spec's published checksums replaced by those of the files made here."""
    spec = named.SPECS[name]
    resources = tuple(dataclasses.replace(r, md5=md5(files[r.filename])) for r in spec.resources)
    monkeypatch.setitem(named.SPECS, name, dataclasses.replace(spec, resources=resources))


def serve_all(httpserver, files: dict[str, bytes], prefix: str) -> str:
    for filename, body in files.items():
        httpserver.expect_request(f"{prefix}{filename}").respond_with_data(body)
    return httpserver.url_for(prefix)


def test_the_named_list_is_one_constant():
    assert set(DOWNLOADABLE) <= set(NAMED_DATASETS)
    assert {"cifar10", "cifar100", "fashion-mnist", "mnist", "synthetic"} == set(NAMED_DATASETS)
    for spec in named.SPECS.values():
        assert all(len(r.md5) == 32 for r in spec.resources)


def test_fashion_mnist_downloads_verifies_and_loads(httpserver, monkeypatch, tmp_path):
    files = mnist_files()
    with_md5s(monkeypatch, "fashion-mnist", files)
    url = serve_all(httpserver, files, "/fashion/")
    data = tmp_path / "data"
    result = runner.invoke(
        app, ["download", "--dataset", "fashion-mnist", "--url", url, "--data-dir", str(data)]
    )
    assert result.exit_code == 0, result.output
    assert "40 training, 10 test images" in result.output
    assert not (data / "fashion-mnist").exists()  # the .gz files are removed once cached
    ds = load_dataset("fashion-mnist", data)
    assert ds.train_images.shape == (40, 7, 5, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10, 7, 5, 1)
    assert ds.class_names[0] == "T-shirt/top" and len(ds.class_names) == 10
    assert ds.train_labels.tolist() == [k % 10 for k in range(40)]
    expected = np.frombuffer(gzip.decompress(files["train-images-idx3-ubyte.gz"])[16:], np.uint8)
    np.testing.assert_array_equal(ds.train_images.reshape(-1), expected)
    parts = split(ds, seed=0)
    assert parts.rule == "stratified" and parts.val.size == 4 and parts.test.size == 10
    again = runner.invoke(
        app, ["download", "--dataset", "fashion-mnist", "--url", url, "--data-dir", str(data)]
    )
    assert "already in" in again.output


def test_a_corrupted_file_is_refused_by_its_checksum(httpserver, monkeypatch, tmp_path):
    files = mnist_files()
    with_md5s(monkeypatch, "mnist", files)
    bad = bytearray(files["t10k-images-idx3-ubyte.gz"])
    bad[-12] ^= 0x01
    url = serve_all(httpserver, {**files, "t10k-images-idx3-ubyte.gz": bytes(bad)}, "/m/")
    data = tmp_path / "data"
    result = runner.invoke(
        app, ["download", "--dataset", "mnist", "--url", url, "--data-dir", str(data)]
    )
    assert result.exit_code == 1
    assert "checksum mismatch" in result.output and "t10k-images" in result.output
    assert not (data / "mnist-cache").exists()
    with pytest.raises(DataNotFound, match="svmtool download --dataset mnist"):
        load_dataset("mnist", data)


def test_the_next_mirror_is_tried(httpserver, monkeypatch, tmp_path):
    files = mnist_files()
    spec = named.SPECS["mnist"]
    with_md5s(monkeypatch, "mnist", files)
    dead = httpserver.url_for("/gone/")
    live = serve_all(httpserver, files, "/live/")
    monkeypatch.setitem(
        named.SPECS, "mnist", dataclasses.replace(named.SPECS["mnist"], mirrors=(dead, live))
    )
    result = named.download("mnist", tmp_path / "d")
    assert (result.train_count, result.test_count) == (40, 10)
    assert spec.mirrors[0].startswith("https://")


def test_from_file_is_a_folder_of_the_published_files(monkeypatch, tmp_path):
    files = mnist_files()
    with_md5s(monkeypatch, "mnist", files)
    offline = tmp_path / "usb"
    offline.mkdir()
    for name, body in files.items():
        (offline / name).write_bytes(body)
    result = runner.invoke(
        app, ["download", "--dataset", "mnist", "--from-file", str(offline), "--data-dir", "d"]
    )
    assert result.exit_code == 0, result.output
    assert all((offline / n).exists() for n in files)  # an import never removes the user's copy
    assert load_dataset("mnist", tmp_path / "d").class_names == [str(k) for k in range(10)]


def test_an_offline_folder_of_idx_files_loads_unconverted(tmp_path):
    for name, body in mnist_files().items():
        (tmp_path / name).write_bytes(body)
    ds = load_dataset("mnist", tmp_path)
    assert ds.train_images.shape == (40, 7, 5, 1)


def raw_idx(header: bytes, data: bytes) -> bytes:
    return gzip.compress(header + data)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (raw_idx(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 2, 2), bytes(7)), "gzip trailer"),
        (raw_idx(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 2, 2), bytes(9)), "gzip trailer"),
        (raw_idx(b"\x01\x02\x08\x03", b""), "no IDX magic"),
        (raw_idx(b"\x00\x00\x0d\x03", b""), "not unsigned bytes"),
        (raw_idx(b"\x00\x00\x08\x02" + struct.pack(">2I", 2, 2), bytes(4)), "2 dimensions"),
        (raw_idx(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**31, 9999, 9999), b""), "implausible"),
        (b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 2, 2) + bytes(7), "the file holds"),
    ],
)
def test_malformed_idx_files_are_one_clear_error(tmp_path, body, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(body)
    with pytest.raises(SvmtoolError, match=message):
        named.read_idx(path, 3)


def test_a_damaged_gzip_stream_is_caught_by_its_crc(tmp_path):
    good = idx(np.arange(24).reshape(2, 3, 4))
    damaged = bytearray(good)
    damaged[-8] ^= 0xFF  # the CRC-32 in the trailer: only reading to the end sees it
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(SvmtoolError, match="CRC"):
        named.read_idx(path, 3)
    path.write_bytes(good)
    assert named.read_idx(path, 3).shape == (2, 3, 4)


def test_trailing_bytes_after_the_data_are_refused(tmp_path):
    header = b"\x00\x00\x08\x01" + struct.pack(">I", 3)
    path = tmp_path / "l.gz"
    # Two gzip members: the second one's bytes are more than the header accounts for.
    path.write_bytes(gzip.compress(header + b"\x01\x02\x03") + gzip.compress(b"\x00"))
    with pytest.raises(SvmtoolError):
        named.read_idx(path, 1)


# --- CIFAR-100 ---------------------------------------------------------------------------


def cifar100_archive(n_train: int = 30, n_test: int = 10, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)

    def part(n: int) -> bytes:
        fine = [int(v) for v in rng.integers(0, 100, n)]
        return py2_pickle(
            {
                b"filenames": [f"f{i}.png".encode() for i in range(n)],
                b"batch_label": b"training batch 1 of 1",
                b"fine_labels": fine,
                b"coarse_labels": [v // 5 for v in fine],
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            }
        )

    meta = py2_pickle(
        {
            b"fine_label_names": [n.encode() for n in named.CIFAR100_FINE],
            b"coarse_label_names": [n.encode() for n in named.CIFAR100_COARSE],
        }
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in (("train", part(n_train)), ("test", part(n_test)), ("meta", meta)):
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def test_cifar100_from_file_fine_and_coarse(monkeypatch, tmp_path):
    body = cifar100_archive()
    archive = tmp_path / "cifar-100-python.tar.gz"
    archive.write_bytes(body)
    with_md5s(monkeypatch, "cifar100", {"cifar-100-python.tar.gz": body})
    result = runner.invoke(
        app, ["download", "--dataset", "cifar100", "--from-file", str(archive), "--data-dir", "d"]
    )
    assert result.exit_code == 0, result.output
    fine = load_dataset("cifar100", tmp_path / "d")
    assert fine.train_images.shape == (30, 32, 32, 3) and fine.test_images.shape == (10, 32, 32, 3)
    assert len(fine.class_names) == 100 and fine.class_names[0] == "apple"
    coarse = load_dataset("cifar100", tmp_path / "d", labels="coarse")
    assert len(coarse.class_names) == 20 and coarse.class_names[-1] == "vehicles_2"
    np.testing.assert_array_equal(coarse.train_labels, fine.train_labels // 5)
    with pytest.raises(SvmtoolError, match="applies to cifar100"):
        load_dataset("mnist", tmp_path / "d", labels="coarse")


def test_cifar100_coarse_trains_and_the_model_remembers_it(monkeypatch, tmp_path):
    body = cifar100_archive(n_train=60)
    with_md5s(monkeypatch, "cifar100", {"cifar-100-python.tar.gz": body})
    (tmp_path / "a.tar.gz").write_bytes(body)
    named.download("cifar100", tmp_path / "d", from_file=tmp_path / "a.tar.gz")
    common = ["--data", "cifar100", "--data-dir", str(tmp_path / "d")]
    result = runner.invoke(
        app, ["train", *common, "--labels", "coarse", "--iters", "5", "--model", "m.npz"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", "--model", "m.npz"])
    assert result.exit_code == 0, result.output
    assert "on 10 images" in result.output


def test_a_corrupted_cifar100_archive_is_refused(monkeypatch, tmp_path):
    body = cifar100_archive()
    with_md5s(monkeypatch, "cifar100", {"cifar-100-python.tar.gz": body})
    bad = bytearray(body)
    bad[len(bad) // 2] ^= 0x40
    (tmp_path / "bad.tar.gz").write_bytes(bytes(bad))
    with pytest.raises(SvmtoolError, match="checksum mismatch"):
        named.download("cifar100", tmp_path / "d", from_file=tmp_path / "bad.tar.gz")
    assert not (tmp_path / "d").exists()


def test_a_damaged_named_cache_is_refused_with_the_fix(monkeypatch, tmp_path):
    files = mnist_files()
    with_md5s(monkeypatch, "mnist", files)
    offline = tmp_path / "usb"
    offline.mkdir()
    for name, body in files.items():
        (offline / name).write_bytes(body)
    named.download("mnist", tmp_path / "d", from_file=offline)
    (tmp_path / "d" / "mnist-cache" / "train_labels.npy").write_bytes(b"junk")
    with pytest.raises(SvmtoolError, match="--force"):
        load_dataset("mnist", tmp_path / "d")


def test_md5_is_refused_for_four_file_datasets(tmp_path):
    result = runner.invoke(
        app, ["download", "--dataset", "mnist", "--md5", "0" * 32, "--data-dir", "d"]
    )
    assert result.exit_code != 0 and "--md5" in result.output


def test_an_unknown_dataset_is_one_line(tmp_path):
    result = runner.invoke(app, ["download", "--dataset", "svhn", "--data-dir", "d"])
    assert result.exit_code == 2 and "'--dataset': 'svhn' is not one of" in result.output
