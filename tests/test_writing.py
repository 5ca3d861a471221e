"""Writing: nothing written through a planted link, nothing lost to a failed run,
permissions kept, a full disk named, stale scratch cleared by any command."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from conftest import cifar_archive, make_tiny, md5
from test_model import small_model
from typer.testing import CliRunner

from svmtool import cli, pipeline
from svmtool.cli import app
from svmtool.errors import SvmtoolError
from svmtool.io import cifar, download, files
from svmtool.io import model as model_io

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def archive_file(tmp_path) -> Path:
    path = tmp_path / "cifar.tar.gz"
    path.write_bytes(cifar_archive(make_tiny(), "binary"))
    return path


def import_args(data_dir: Path, archive: Path) -> list[str]:
    return [
        "download", "--data-dir", str(data_dir),
        "--from-file", str(archive), "--md5", md5(archive.read_bytes()),
    ]  # fmt: skip


# --- planted links ------------------------------------------------------------------


def test_lock_file_link_is_not_followed(tmp_path, archive_file):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (data_dir / cifar.LOCK_NAME).symlink_to(victim)
    result = run(*import_args(data_dir, archive_file))
    assert result.exit_code == 1 and "symbolic link" in result.output
    assert victim.read_text() == "precious"  # today: emptied


def test_part_file_link_is_not_followed(httpserver, tmp_path):
    body = cifar_archive(make_tiny(), "binary")
    httpserver.expect_request("/a.tgz").respond_with_data(body)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (data_dir / "cifar-10-binary.tar.gz.part").symlink_to(victim)
    url = httpserver.url_for("/a.tgz")
    result = run("download", "--data-dir", str(data_dir), "--url", url, "--md5", md5(body))
    assert result.exit_code == 1 and "symbolic link" in result.output
    assert victim.read_text() == "precious"


def test_archive_link_is_not_read(tmp_path, archive_file):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-10-binary.tar.gz").symlink_to(archive_file)
    result = run("download", "--data-dir", str(data_dir), "--md5", md5(archive_file.read_bytes()))
    assert result.exit_code == 1 and "symbolic link" in result.output


def test_cache_link_is_replaced_not_written_through(tmp_path, archive_file):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (data_dir / "cifar-10-cache").symlink_to(elsewhere)
    assert run(*import_args(data_dir, archive_file), "--force").exit_code == 0
    assert not (data_dir / "cifar-10-cache").is_symlink()
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]
    assert cifar.cache_state(data_dir) == "ok"


@pytest.mark.parametrize("force", [True, False])
def test_download_works_when_the_cache_path_is_a_file(tmp_path, archive_file, force):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cifar-10-cache").write_text("not a folder")
    assert "not a folder" in cifar.cache_state(data_dir)
    extra = ["--force"] if force else []
    result = run(*import_args(data_dir, archive_file), *extra)
    assert result.exit_code == 0, result.output
    assert cifar.cache_state(data_dir) == "ok"


def test_model_link_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"precious")
    link = tmp_path / "m.npz"
    link.symlink_to(victim)
    model_io.save(small_model(), link)
    assert victim.read_bytes() == b"precious"
    assert not link.is_symlink() and model_io.load(link).class_names == ["a", "b", "c"]


def test_own_files_refuse_links(tmp_path):
    (tmp_path / "x").symlink_to(tmp_path / "target")
    with pytest.raises(SvmtoolError, match="symbolic link"):
        files.open_own(tmp_path / "x")
    assert not (tmp_path / "target").exists()


# --- a failed run replaces nothing ----------------------------------------------------


def train_args(model: Path) -> list[str]:
    return ["train", "--data", "synthetic", "--iters", "5", "--model", str(model)]


def test_a_failure_after_training_keeps_the_earlier_model(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    assert run(*train_args(path)).exit_code == 0
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("the summary could not be printed")

    monkeypatch.setattr(cli.out, "print", broken)  # fails while printing the summary
    result = run(*train_args(path), "--seed", "3")
    assert result.exit_code == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]  # no temporary left


def test_an_unwritable_folder_fails_before_training(tmp_path, monkeypatch):
    def must_not_train(*args, **kwargs):
        raise AssertionError("trained although the model could not be written")

    monkeypatch.setattr(pipeline, "run_training", must_not_train)
    monkeypatch.setattr(pipeline, "prepare_training", must_not_train)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    result = run(*train_args(tmp_path / "m.npz"))
    assert result.exit_code == 1
    assert "Read-only file system" in result.output and "m.npz" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "prepare_training", lambda *a: pytest.fail("trained"))
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = run(*train_args(folder / "m.npz"))
    finally:
        folder.chmod(0o755)
    assert result.exit_code == 1 and "Permission denied" in result.output


# --- permissions --------------------------------------------------------------------


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


@pytest.mark.usefixtures("umask_027")
def test_a_new_model_follows_the_umask_and_a_replaced_one_keeps_its_mode(tmp_path):
    path = tmp_path / "m.npz"
    assert run(*train_args(path)).exit_code == 0
    assert mode_of(path) == 0o640  # 0666 & ~027; mkstemp alone gives 0600
    path.chmod(0o664)
    assert run(*train_args(path), "--seed", "1").exit_code == 0
    assert mode_of(path) == 0o664


@pytest.mark.usefixtures("umask_027")
def test_pngs_and_the_cache_follow_the_umask(tmp_path, archive_file):
    model = model_io.save(small_model(), tmp_path / "m.npz")
    out = tmp_path / "v"
    assert run("visualize", "--model", str(model), "--out-dir", str(out)).exit_code == 0
    assert {mode_of(p) for p in out.iterdir()} == {0o640}
    (out / "templates.png").chmod(0o644)
    assert run("visualize", "--model", str(model), "--out-dir", str(out)).exit_code == 0
    assert mode_of(out / "templates.png") == 0o644
    data_dir = tmp_path / "data"
    assert run(*import_args(data_dir, archive_file)).exit_code == 0
    cache = data_dir / "cifar-10-cache"
    assert mode_of(cache) == 0o750  # mkdtemp alone gives 0700
    assert {mode_of(p) for p in cache.iterdir()} == {0o640}


# --- stale scratch ------------------------------------------------------------------


def installed(tmp_path: Path, archive_file: Path) -> Path:
    data_dir = tmp_path / "data"
    assert run(*import_args(data_dir, archive_file)).exit_code == 0
    for name in (".extract.k1ll3d", ".cifar-10-cache.k1ll3d"):
        (data_dir / name).mkdir()
        (data_dir / name / "half.npy").write_bytes(b"\0" * 1000)
    return data_dir


def scratch(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if p.name.startswith(cifar.SCRATCH_PREFIXES))


def test_any_command_using_the_data_folder_clears_stale_scratch(tmp_path, archive_file):
    data_dir = installed(tmp_path, archive_file)
    result = run("train", "--data-dir", str(data_dir), "--iters", "2", "--model", "m.npz")
    assert result.exit_code == 0, result.output
    assert scratch(data_dir) == []
    data_dir = installed(tmp_path / "again", archive_file)
    assert run("evaluate", "--model", "m.npz", "--data-dir", str(data_dir)).exit_code == 0
    assert scratch(data_dir) == []


def test_scratch_of_a_running_download_is_left_alone(tmp_path, archive_file):
    fcntl = pytest.importorskip("fcntl")
    data_dir = installed(tmp_path, archive_file)
    with open(data_dir / cifar.LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a download is running
        cifar.load(data_dir)
    assert scratch(data_dir) == [".cifar-10-cache.k1ll3d", ".extract.k1ll3d"]


# --- full disks and failed runs -------------------------------------------------------


def test_a_full_disk_while_building_the_cache_is_named(tmp_path, archive_file, monkeypatch):
    def short_write(*args, **kwargs):
        raise OSError("6144000 requested and 3391360 written")  # numpy's tofile, disk full

    monkeypatch.setattr(np, "save", short_write)
    data_dir = tmp_path / "data"
    result = run(*import_args(data_dir, archive_file))
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert "no space left on device while writing" in line and "train_images.npy" in line
    assert "MB free there" in line and "requested" not in line
    assert not data_dir.exists()  # nothing of the failed run is left


def test_a_full_disk_while_downloading_is_named(httpserver, tmp_path, monkeypatch):
    body = cifar_archive(make_tiny(), "binary")
    httpserver.expect_request("/a.tgz").respond_with_data(body)
    real_open_own = download.open_own

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, block):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download, "open_own", lambda *a, **k: Full(real_open_own(*a, **k)))
    url = httpserver.url_for("/a.tgz")
    result = run("download", "--data-dir", str(tmp_path), "--url", url, "--md5", md5(body))
    assert result.exit_code == 1
    assert "no space left on device while writing" in result.output
    assert "cifar-10-binary.tar.gz.part" in result.output
    assert len(httpserver.log) == 1  # a full disk is not retried


def test_a_failed_download_removes_the_folders_it_created(httpserver, tmp_path):
    httpserver.expect_request("/missing").respond_with_data("no", status=404)
    data_dir = tmp_path / "new" / "deeper" / "data"
    result = run("download", "--data-dir", str(data_dir), "--url", httpserver.url_for("/missing"))
    assert result.exit_code == 1
    assert not (tmp_path / "new").exists()
    # A folder that was there before stays.
    existing = tmp_path / "existing"
    existing.mkdir()
    run("download", "--data-dir", str(existing), "--url", httpserver.url_for("/missing"))
    assert existing.is_dir()


# --- the feature cache ----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.usefixtures("deadline")
def test_feature_cache_entries_are_never_waited_on_or_followed(tmp_path):
    from svmtool.io.featurecache import FeatureCache

    cache = FeatureCache(tmp_path / "feature-cache")
    key = {"what": "test"}
    layout = {"a": ((6,), np.float64)}
    entry = cache.store(key, {"a": np.arange(6.0)})
    np.testing.assert_array_equal(cache.load(key, layout)["a"], np.arange(6.0))
    (entry / "a.npy").unlink()
    os.mkfifo(entry / "a.npy")  # a planted FIFO: a miss, at once
    assert cache.load(key, layout) is None
    (entry / "a.npy").unlink()
    (entry / "a.npy").symlink_to(tmp_path / "elsewhere.npy")
    np.save(tmp_path / "elsewhere.npy", np.arange(6.0))
    assert cache.load(key, layout) is None  # a link is not followed


@pytest.mark.usefixtures("umask_027")
def test_feature_cache_entries_follow_the_umask(tmp_path):
    from svmtool.io.featurecache import FeatureCache

    entry = FeatureCache(tmp_path / "fc").store({"k": 1}, {"a": np.zeros(3)})
    assert mode_of(entry) == 0o750
