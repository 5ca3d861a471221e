"""The feature cache as untrusted input: a damaged entry (wrong rows, width or
dtype, non-finite values, a meta.json naming other arrays, a huge or special
meta.json, anything but a folder at an entry's place) is recomputed with the
clean run's exact result and replaced; a cache that cannot be written is said
and skipped; scratch left by a killed run is cleared unless a live run owns it.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_limited
from test_feature_pipeline import stripes
from typer.testing import CliRunner

from svmtool.cli import app
from svmtool.io import featurecache
from svmtool.io import model as model_io
from svmtool.trainfeatures import feature_cache

runner = CliRunner()
KMEANS_TINY = ("--centroids", "8", "--patches", "400", "--kmeans-iters", "3")


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def npz(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    X_train, y_train = stripes(120, (12, 12, 3), rng)
    X_test, y_test = stripes(12, (12, 12, 3), rng)
    path = tmp_path / "stripes.npz"
    np.savez(path, X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    return path


def cache_root() -> Path:
    return feature_cache(None).root


def train(npz: Path, model: Path, *extra: str):
    result = run("train", "--data", str(npz), "--model", str(model), "--iters", "60", *extra)
    assert result.exit_code == 0, result.output
    assert "internal error" not in result.output
    return result


def entries(what: str) -> list[Path]:
    """The cache's entry folders whose key is ``what`` ('features' or 'kmeans-fit')."""
    found = []
    for meta in cache_root().glob("*/meta.json"):
        if json.loads(meta.read_text())["key"]["what"] == what:
            found.append(meta.parent)
    return found


def rewrite_entry(folder: Path, **arrays: np.ndarray) -> None:
    """Replace arrays of an entry, with a meta.json that agrees with them."""
    meta = json.loads((folder / "meta.json").read_text())
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
        meta["arrays"][name] = [list(array.shape), str(array.dtype)]
    (folder / "meta.json").write_text(json.dumps(meta))


def val_accuracy(path: Path) -> float:
    return model_io.load(path).metrics["val_accuracy"]


def raw_of(folder: Path) -> np.ndarray:
    return np.load(folder / "raw.npy")


RAW_DAMAGE = {
    "ten_rows": lambda raw: raw[:10],
    "more_rows": lambda raw: np.concatenate([raw, raw[:5]]),
    "narrower": lambda raw: raw[:, :-3],
    "wider": lambda raw: np.concatenate([raw, raw[:, :2]], axis=1),
    "float64": lambda raw: raw.astype(np.float64),
    "nan": lambda raw: np.where(np.arange(raw.shape[1]) == 3, np.nan, raw).astype(raw.dtype),
    "inf": lambda raw: np.where(np.arange(raw.shape[1]) == 0, np.inf, raw).astype(raw.dtype),
    "two_d_to_one_d": lambda raw: raw.ravel(),
}


@pytest.mark.parametrize("damage", sorted(RAW_DAMAGE))
def test_damaged_raw_features_are_recomputed_exactly(npz, tmp_path, damage):
    clean = tmp_path / "clean.npz"
    train(npz, clean, "--features", "hog")
    (entry,) = entries("features")
    good = raw_of(entry)
    rewrite_entry(entry, raw=RAW_DAMAGE[damage](good))
    # An earlier good model at the path train writes must not be replaced by a broken one.
    again = tmp_path / "again.npz"
    shutil.copy(clean, again)
    result = train(npz, again, "--features", "hog")
    assert "read from the feature cache" not in result.output
    assert f"the feature cache entry {entry} is damaged" in result.output
    assert val_accuracy(again) == val_accuracy(clean)
    np.testing.assert_array_equal(model_io.load(again).W, model_io.load(clean).W)
    # and not permanent: the entry was replaced, the next run reads it
    np.testing.assert_array_equal(raw_of(entry), good)
    third = train(npz, tmp_path / "third.npz", "--features", "hog")
    assert "read from the feature cache" in third.output


def test_damaged_features_in_evaluate_are_recomputed(npz, tmp_path):
    model = tmp_path / "km.npz"
    train(npz, model, "--features", "kmeans", *KMEANS_TINY)
    before = json.loads(run("evaluate", "--model", str(model), "--split", "val", "--json").stdout)
    (entry,) = entries("features")
    raw = raw_of(entry)
    raw[:, 1] = np.nan
    rewrite_entry(entry, raw=raw)
    result = run("evaluate", "--model", str(model), "--split", "val", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == before["accuracy"]


@pytest.mark.parametrize(
    ("name", "fault"),
    [(n, f) for n in ("centroids", "whiten_mean", "whiten") for f in ("nan", "shape", "dtype")]
    + [("whiten", "singular")],
)
def test_damaged_kmeans_dictionary_is_relearned(npz, tmp_path, name, fault):
    clean = tmp_path / "clean.npz"
    train(npz, clean, "--features", "kmeans", *KMEANS_TINY)
    (entry,) = entries("kmeans-fit")
    array = np.load(entry / f"{name}.npy")
    if fault == "nan":
        array = array.copy()
        array.flat[0] = np.nan
    elif fault == "shape":
        array = array[:-1]
    elif fault == "dtype":
        array = array.astype(np.float16)
    else:
        array = np.zeros_like(array)
    rewrite_entry(entry, **{name: array})
    again = tmp_path / "again.npz"
    result = train(npz, again, "--features", "kmeans", *KMEANS_TINY)
    assert "k-means dictionary read from" not in result.output
    assert "is damaged" in result.output
    assert val_accuracy(again) == val_accuracy(clean)


@pytest.mark.parametrize(
    "arrays",
    [{}, {"other": [[3], "float32"]}, {"raw": [[3], "float32"], "extra": [[3], "float32"]}],
    ids=["none", "other", "extra"],
)
def test_meta_naming_other_arrays_is_damage(npz, tmp_path, arrays):
    clean = tmp_path / "clean.npz"
    train(npz, clean, "--features", "hog")
    (entry,) = entries("features")
    meta = json.loads((entry / "meta.json").read_text())
    meta["arrays"] = arrays
    (entry / "meta.json").write_text(json.dumps(meta))
    for name in arrays:
        np.save(entry / f"{name}.npy", np.zeros(3, np.float32))
    again = tmp_path / "again.npz"
    train(npz, again, "--features", "hog")
    assert val_accuracy(again) == val_accuracy(clean)
    third = train(npz, tmp_path / "3.npz", "--features", "hog")
    assert "read from the feature cache" in third.output


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"cache_format": 1, "key": 3, "arrays": []}',
        '{"cache_format": true}',
        '{"arrays": {"raw": "x"}}',
        '{"arrays": {"raw": [["a"], 7]}}',
        '{"arrays": {"../../../etc/passwd": [[1], "float32"]}}',
    ],
)
def test_meta_of_the_wrong_types_is_damage(npz, tmp_path, text):
    clean = tmp_path / "clean.npz"
    train(npz, clean, "--features", "hog")
    (entry,) = entries("features")
    meta = json.loads((entry / "meta.json").read_text())
    fields = json.loads(text)
    if isinstance(fields, dict) and "cache_format" not in fields:
        meta.update(fields)
        text = json.dumps(meta)
    (entry / "meta.json").write_text(text)
    again = tmp_path / "again.npz"
    train(npz, again, "--features", "hog")
    assert val_accuracy(again) == val_accuracy(clean)


def test_huge_sparse_meta_is_not_read_under_a_memory_limit(npz, tmp_path):
    train(npz, tmp_path / "clean.npz", "--features", "hog")
    (entry,) = entries("features")
    with open(entry / "meta.json", "r+b") as f:
        f.truncate(5 << 30)  # 5 GiB of holes: no disk used
    done = run_limited("train", "--data", str(npz), "--model", str(tmp_path / "m.npz"),
                       "--iters", "60", "--features", "hog")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "read from the feature cache" not in done.stderr
    assert (entry / "meta.json").stat().st_size < 1 << 20  # replaced


class Hung(BaseException):
    """Raised by the alarm: a BaseException, so no ``except OSError`` (a
    TimeoutError is one) or ``except Exception`` on the way can swallow it."""


@pytest.fixture
def hang_guard():
    import signal

    def expire(signum, frame):
        raise Hung("blocked: something opened a FIFO and waited")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.usefixtures("hang_guard")
@pytest.mark.parametrize("where", ["meta.json", "raw.npy", "entry"])
def test_fifo_in_an_entry_is_damage_never_waited_on(npz, tmp_path, where):
    clean = tmp_path / "clean.npz"
    train(npz, clean, "--features", "hog")
    (entry,) = entries("features")
    if where == "entry":
        shutil.rmtree(entry)
        os.mkfifo(entry)
    else:
        (entry / where).unlink()
        os.mkfifo(entry / where)
    again = tmp_path / "again.npz"
    train(npz, again, "--features", "hog")
    assert val_accuracy(again) == val_accuracy(clean)
    assert entry.is_dir() and (entry / "meta.json").is_file()


@pytest.mark.parametrize("where", ["meta.json", "raw.npy", "entry", "file"])
def test_links_in_an_entry_are_never_followed(npz, tmp_path, where):
    clean = tmp_path / "clean.npz"
    train(npz, clean, "--features", "hog")
    (entry,) = entries("features")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(entry, elsewhere)
    if where == "entry":
        shutil.rmtree(entry)
        entry.symlink_to(elsewhere, target_is_directory=True)
    elif where == "file":
        shutil.rmtree(entry)
        entry.write_text("not a folder")
    else:
        (entry / where).unlink()
        (entry / where).symlink_to(elsewhere / where)
    again = tmp_path / "again.npz"
    result = train(npz, again, "--features", "hog")
    assert "read from the feature cache" not in result.output
    assert val_accuracy(again) == val_accuracy(clean)
    assert entry.is_dir() and not entry.is_symlink()
    assert (elsewhere / "meta.json").is_file()  # the link's target is left alone


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder behave as on a read-only file system (tests run as root,
    where permission bits do not stop writes)."""

    def apply(folder: Path) -> None:
        real_mkdir, real_open = os.mkdir, os.open
        inside = str(folder.resolve())

        def refused(path) -> bool:
            return os.path.abspath(os.fspath(path)).startswith(inside)

        def mkdir(path, *args, **kwargs):
            if refused(path):
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
            return real_mkdir(path, *args, **kwargs)

        def open_(path, flags, *args, **kwargs):
            writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writing and refused(path):
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
        monkeypatch.setattr(os, "open", open_)

    return apply


@pytest.mark.parametrize("exists", [False, True], ids=["no-cache-yet", "cache-folder"])
def test_read_only_data_folder_goes_on_without_the_cache(
    npz, tmp_path, read_only, exists, monkeypatch
):
    # The cache in a folder of its own, which is made read-only (the model's is not).
    monkeypatch.setenv("SVMTOOL_CACHE_DIR", str(tmp_path / "read-only" / "cache"))
    clean = tmp_path / "clean.npz"
    train(npz, clean, "--features", "hog", "--no-cache")
    data_dir = cache_root().parent
    data_dir.mkdir(parents=True, exist_ok=True)
    if exists:
        cache_root().mkdir()
    read_only(data_dir)
    again = tmp_path / "again.npz"
    result = train(npz, again, "--features", "hog")
    assert "feature cache" in result.output and "cannot be written" in result.output
    assert "--no-cache" in result.output
    assert val_accuracy(again) == val_accuracy(clean)


def test_scratch_of_a_killed_run_is_cleared(npz, tmp_path):
    train(npz, tmp_path / "a.npz", "--features", "hog")
    (entry,) = entries("features")
    # What a train SIGKILLed while storing leaves: a half-written scratch folder.
    stale = cache_root() / f".{entry.name}.k1ll3d"
    stale.mkdir()
    np.save(stale / "raw.npy", np.zeros((1000, 100), np.float32))
    run("train", "--data", str(npz), "--model", str(tmp_path / "b.npz"), "--iters", "60",
        "--features", "hog", "--reg", "0.5")  # fmt: skip
    assert not stale.exists()
    assert entry.is_dir()  # entries are not scratch


def test_scratch_of_a_running_store_is_left_alone(npz, tmp_path):
    train(npz, tmp_path / "a.npz", "--features", "hog")
    (entry,) = entries("features")
    live = cache_root() / f".{entry.name}.l1v3"
    live.mkdir()
    with featurecache.FeatureCache(cache_root()).storing():  # another run, storing now
        train(npz, tmp_path / "b.npz", "--features", "hog")
        assert live.is_dir()
    train(npz, tmp_path / "c.npz", "--features", "hog")
    assert not live.exists()


def test_a_killed_store_leaves_scratch_that_the_next_run_clears(npz, tmp_path):
    """A real SIGKILL in the middle of np.save of the features."""
    code = (
        "import os, signal, sys, numpy as np\n"
        "real = np.save\n"
        "def save(path, array, **kw):\n"
        "    real(path, array[: len(array) // 2], **kw)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "np.save = save\n"
        "from svmtool.cli import main\n"
        "sys.argv = ['svmtool'] + sys.argv[1:]\n"
        "main()\n"
    )
    args = ["train", "--data", str(npz), "--model", str(tmp_path / "k.npz"), "--iters", "60",
            "--features", "hog"]  # fmt: skip
    done = run_limited("-c", code, *args)
    assert done.returncode == -9, done.stderr
    leftovers = [p for p in cache_root().iterdir() if p.name.startswith(".") and p.is_dir()]
    assert leftovers, "the killed run left no scratch (the test would prove nothing)"
    train(npz, tmp_path / "next.npz", "--features", "hog")
    assert not [p for p in leftovers if p.exists()]
