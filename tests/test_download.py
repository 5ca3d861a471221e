"""Download, verify, extract, cache, load: against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
import requests
from conftest import cifar_archive, extracted, md5, tar_gz
from typer.testing import CliRunner
from werkzeug import Request, Response

from svmtool.cli import app
from svmtool.errors import SvmtoolError
from svmtool.io import cifar, download
from svmtool.io.data import load_dataset
from svmtool.io.download import fetch, safe_extract

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def serve(httpserver, body: bytes, path: str = "/cifar.tar.gz") -> str:
    httpserver.expect_request(path).respond_with_data(body, content_type="application/gzip")
    return httpserver.url_for(path)


def ranged(body: bytes):
    """A handler that honours Range like a real file server."""

    def handler(request: Request) -> Response:
        spec = request.headers.get("Range")
        if not spec:
            return Response(body, 200, {"Accept-Ranges": "bytes"})
        start = int(spec.removeprefix("bytes=").split("-")[0])
        if start >= len(body):
            return Response(b"", 416)
        part = body[start:]
        headers = {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        return Response(part, 206, headers)

    return handler


def cut_after(body: bytes, sent: int):
    """A handler that promises the whole body and drops the connection after ``sent`` bytes."""

    def handler(request: Request) -> Response:
        def stream():
            yield body[:sent]
            raise ConnectionAbortedError("connection cut by the test")

        return Response(stream(), 200, {"Content-Length": str(len(body))})

    return handler


def test_full_download_verify_extract_cache_load(httpserver, archive, tiny, tmp_path):
    fmt, body = archive
    url = serve(httpserver, body)
    data_dir = tmp_path / "data"
    result = run(
        "download", "--data-dir", str(data_dir), "--format", fmt, "--url", url, "--md5", md5(body)
    )
    assert result.exit_code == 0, result.output
    assert (data_dir / "cifar-10-cache" / "meta.json").exists()
    assert not (data_dir / cifar.ARCHIVES[fmt].filename).exists()  # removed by default
    assert not list(data_dir.glob(".extract.*"))  # scratch folder cleaned
    dataset = cifar.load(data_dir)
    np.testing.assert_array_equal(dataset.train_images, tiny.train_images)
    np.testing.assert_array_equal(dataset.train_labels, tiny.train_labels)
    np.testing.assert_array_equal(dataset.test_images, tiny.test_images)
    assert dataset.class_names[1] == "automobile"
    assert dataset.train_images.dtype == np.uint8 and dataset.train_labels.dtype == np.int64


def test_second_run_is_idempotent(httpserver, archive, tmp_path):
    fmt, body = archive
    url = serve(httpserver, body)
    args = ["download", "--data-dir", str(tmp_path), "--format", fmt, "--url", url]
    assert run(*args, "--md5", md5(body)).exit_code == 0
    requests_before = len(httpserver.log)
    again = run(*args, "--md5", md5(body))
    assert again.exit_code == 0
    assert "already" in again.output
    assert len(httpserver.log) == requests_before  # nothing fetched
    forced = run(*args, "--md5", md5(body), "--force")
    assert forced.exit_code == 0 and len(httpserver.log) == requests_before + 1


def test_keep_archive(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    url = serve(httpserver, body)
    result = run(
        "download", "--data-dir", str(tmp_path), "--url", url, "--md5", md5(body), "--keep-archive"
    )
    assert result.exit_code == 0
    assert (tmp_path / "cifar-10-binary.tar.gz").read_bytes() == body


def test_checksum_mismatch_deletes_and_extracts_nothing(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    url = serve(httpserver, body)
    wrong = "0" * 32
    result = run("download", "--data-dir", str(tmp_path), "--url", url, "--md5", wrong)
    assert result.exit_code == 1
    assert f"expected md5 {wrong}, got {md5(body)}" in result.output
    assert "Traceback" not in result.output
    assert not list(tmp_path.glob("*.tar.gz*"))
    assert not (tmp_path / "cifar-10-cache").exists()


def test_default_checksum_is_the_official_one(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    url = serve(httpserver, body)
    result = run("download", "--data-dir", str(tmp_path), "--url", url)
    assert result.exit_code == 1
    assert cifar.ARCHIVES["binary"].md5 in result.output


def test_cut_connection_resumes_with_range(httpserver, tiny, tmp_path, monkeypatch):
    # Small chunks, so the bytes before the cut reach the .part file.
    monkeypatch.setattr(download, "CHUNK_SIZE", 1024)
    body = cifar_archive(tiny, "binary")
    httpserver.expect_ordered_request("/a.tgz").respond_with_handler(cut_after(body, 3000))
    httpserver.expect_ordered_request("/a.tgz").respond_with_handler(ranged(body))
    dest = tmp_path / "a.tgz"
    fetch(httpserver.url_for("/a.tgz"), dest, md5(body))
    assert dest.read_bytes() == body
    second = httpserver.log[1][0]
    assert second.headers["Range"].startswith("bytes=")
    assert int(second.headers["Range"][6:-1]) > 0  # continued, not restarted


def test_leftover_part_file_is_continued(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    httpserver.expect_request("/a.tgz").respond_with_handler(ranged(body))
    dest = tmp_path / "a.tgz"
    (tmp_path / "a.tgz.part").write_bytes(body[:1000])
    fetch(httpserver.url_for("/a.tgz"), dest, md5(body))
    assert dest.read_bytes() == body
    assert httpserver.log[0][0].headers["Range"] == "bytes=1000-"
    assert httpserver.log[0][1].status_code == 206


def test_server_ignoring_range_restarts_cleanly(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    httpserver.expect_request("/a.tgz").respond_with_data(body)  # always 200, whole body
    dest = tmp_path / "a.tgz"
    (tmp_path / "a.tgz.part").write_bytes(b"stale bytes from another file")
    fetch(httpserver.url_for("/a.tgz"), dest, md5(body))
    assert dest.read_bytes() == body
    assert "Range" in httpserver.log[0][0].headers


def test_server_errors_are_retried(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    httpserver.expect_ordered_request("/a.tgz").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/a.tgz").respond_with_data(body)
    fetch(httpserver.url_for("/a.tgz"), tmp_path / "a.tgz", md5(body))
    assert (tmp_path / "a.tgz").read_bytes() == body


def test_404_is_one_clear_line(httpserver, tmp_path):
    httpserver.expect_request("/missing.tgz").respond_with_data("no", status=404)
    url = httpserver.url_for("/missing.tgz")
    result = run("download", "--data-dir", str(tmp_path), "--url", url)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "404" in lines[0] and url in lines[0] and "--from-file" in lines[0]
    assert len(httpserver.log) == 1  # a 404 is not retried


def test_refused_connection_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar.tar.gz"
    result = run("download", "--data-dir", str(tmp_path), "--url", url)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    # Each retry is shown, then one error line.
    assert lines[:-1] == [f"connection failed, retrying in 0 s ({k}/5)" for k in range(2, 6)], (
        result.output
    )
    assert url in lines[-1] and "--url" in lines[-1] and "after 5 tries" in lines[-1]


def test_from_file_imports_offline(archive, tiny, tmp_path):
    fmt, body = archive
    path = tmp_path / "mine.tar.gz"
    path.write_bytes(body)
    data_dir = tmp_path / "data"
    result = run(
        "download", "--data-dir", str(data_dir), "--format", fmt,
        "--from-file", str(path), "--md5", md5(body),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert path.exists()  # the user's own file is left alone
    np.testing.assert_array_equal(cifar.load(data_dir).test_labels, tiny.test_labels)


def test_from_file_with_wrong_checksum_keeps_the_file(tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    path = tmp_path / "mine.tar.gz"
    path.write_bytes(body)
    result = run("download", "--data-dir", str(tmp_path / "d"), "--from-file", str(path))
    assert result.exit_code == 1 and "checksum mismatch" in result.output
    assert path.exists()


@pytest.mark.parametrize(
    ("name", "kind", "reason"),
    [
        ("../evil.txt", tarfile.REGTYPE, "'..'"),
        ("/tmp/evil.txt", tarfile.REGTYPE, "absolute"),
        ("cifar-10-batches-bin/link", tarfile.SYMTYPE, "link"),
        ("cifar-10-batches-bin/dev", tarfile.CHRTYPE, "device"),
    ],
)
def test_unsafe_archive_is_rejected_whole(httpserver, tiny, tmp_path, name, kind, reason):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = 4 if kind == tarfile.REGTYPE else 0
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    body = tar_gz({"cifar-10-batches-bin/test_batch.bin": b"\0" * 3073}, extra=[info])
    url = serve(httpserver, body)
    data_dir = tmp_path / "data"
    result = run("download", "--data-dir", str(data_dir), "--url", url, "--md5", md5(body))
    assert result.exit_code == 1
    assert "refusing to extract" in result.output and reason in result.output
    assert not (tmp_path / "evil.txt").exists()
    assert not (data_dir / "cifar-10-cache").exists()
    assert not list(data_dir.rglob("*.bin"))  # nothing was extracted


def test_safe_extract_writes_only_inside(tmp_path, tiny):
    archive = tmp_path / "a.tgz"
    archive.write_bytes(cifar_archive(tiny, "python"))
    safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "cifar-10-batches-py").iterdir())[0] == (
        "batches.meta"
    )


def test_half_written_cache_is_rebuilt(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    url = serve(httpserver, body)
    args = ["download", "--data-dir", str(tmp_path), "--url", url, "--md5", md5(body)]
    assert run(*args).exit_code == 0
    npy = tmp_path / "cifar-10-cache" / "train_images.npy"
    npy.write_bytes(npy.read_bytes()[: npy.stat().st_size // 2])  # a killed writer
    assert cifar.cache_state(tmp_path) != "ok"
    with pytest.raises(SvmtoolError, match="cannot be used"):
        cifar.load(tmp_path)
    again = run(*args)
    assert again.exit_code == 0 and "already" not in again.output
    assert cifar.cache_state(tmp_path) == "ok"
    np.testing.assert_array_equal(cifar.load(tmp_path).train_images, tiny.train_images)


def test_missing_data_names_the_download_command(tmp_path):
    with pytest.raises(SvmtoolError, match=r"svmtool download --data-dir"):
        load_dataset("cifar10", tmp_path / "empty")


# --- loading extracted folders ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_load_extracted_folder_in_either_format(tmp_path, tiny, fmt):
    folder = extracted(tmp_path, tiny, fmt)
    for where in (tmp_path, folder):  # the parent or the batches folder itself
        dataset = cifar.load(where)
        np.testing.assert_array_equal(dataset.train_images, tiny.train_images)
        np.testing.assert_array_equal(dataset.test_labels, tiny.test_labels)


def test_partial_set_of_batches_loads_with_real_counts(tmp_path, tiny):
    folder = extracted(tmp_path, tiny, "binary")
    (folder / "data_batch_4.bin").unlink()
    (folder / "data_batch_5.bin").unlink()
    dataset = cifar.load(folder)
    assert dataset.train_images.shape == (36, 32, 32, 3)


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_truncated_batch_names_the_file(tmp_path, tiny, fmt):
    folder = extracted(tmp_path, tiny, fmt)
    name = "data_batch_2.bin" if fmt == "binary" else "data_batch_2"
    path = folder / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SvmtoolError, match=r"truncated or malformed batch .*data_batch_2"):
        cifar.load(folder)


class Boom:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > pwned.txt",))


def test_pickle_with_forbidden_global_is_refused(tmp_path, tiny):
    folder = extracted(tmp_path, tiny, "python")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Boom()}, protocol=2))
    with pytest.raises(SvmtoolError, match=r"forbidden global (posix|os|nt)\.system"):
        cifar.load(folder)
    assert not (tmp_path / "pwned.txt").exists()


def test_cli_reports_forbidden_pickle_in_one_line(tmp_path, tiny):
    folder = extracted(tmp_path, tiny, "python")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Boom()}, protocol=2))
    result = run("train", "--data-dir", str(tmp_path), "--iters", "2")
    assert result.exit_code == 1
    assert "forbidden global" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_leftovers_of_a_killed_run_are_cleared(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    url = serve(httpserver, body)
    for name in (".extract.k1ll3d", ".cifar-10-cache.k1ll3d"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "half.npy").write_bytes(b"\0" * 100)
    assert (
        run("download", "--data-dir", str(tmp_path), "--url", url, "--md5", md5(body)).exit_code
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        ".svmtool-download.lock"
    ]


def test_one_download_at_a_time(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    with open(tmp_path / ".svmtool-download.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run("download", "--data-dir", str(tmp_path), "--url", "http://127.0.0.1:9/x")
    assert result.exit_code == 1
    assert "another svmtool download is running" in result.output


# --- HTTP replies that cannot be taken at face value -----------------------------------


def test_206_that_does_not_continue_the_part_restarts(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")

    def from_the_start(request: Request) -> Response:
        # Answers a Range request with the whole file as a 206: appending it would corrupt.
        if request.headers.get("Range"):
            headers = {"Content-Range": f"bytes 0-{len(body) - 1}/{len(body)}"}
            return Response(body, 206, headers)
        return Response(body, 200)

    httpserver.expect_request("/a.tgz").respond_with_handler(from_the_start)
    (tmp_path / "a.tgz.part").write_bytes(body[:1000])
    fetch(httpserver.url_for("/a.tgz"), tmp_path / "a.tgz", md5(body))
    assert (tmp_path / "a.tgz").read_bytes() == body
    assert "Range" not in httpserver.log[-1][0].headers  # started over


def test_416_for_a_part_larger_than_the_file_restarts(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    httpserver.expect_request("/a.tgz").respond_with_handler(ranged(body))
    (tmp_path / "a.tgz.part").write_bytes(body + b"stale bytes from a longer file")
    fetch(httpserver.url_for("/a.tgz"), tmp_path / "a.tgz", md5(body))
    assert (tmp_path / "a.tgz").read_bytes() == body
    assert [entry[1].status_code for entry in httpserver.log] == [416, 200]


def test_a_complete_part_answered_416_is_verified_not_refetched(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")

    def complete(request: Request) -> Response:
        return Response(b"", 416, {"Content-Range": f"bytes */{len(body)}"})

    httpserver.expect_request("/a.tgz").respond_with_handler(complete)
    (tmp_path / "a.tgz.part").write_bytes(body)
    fetch(httpserver.url_for("/a.tgz"), tmp_path / "a.tgz", md5(body))
    assert (tmp_path / "a.tgz").read_bytes() == body and len(httpserver.log) == 1


def test_content_encoding_gzip_is_hashed_as_sent(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")  # a .tar.gz served with Content-Encoding: gzip
    httpserver.expect_request("/a.tgz").respond_with_data(
        body, headers={"Content-Encoding": "gzip"}, content_type="application/x-tar"
    )
    fetch(httpserver.url_for("/a.tgz"), tmp_path / "a.tgz", md5(body))
    assert (tmp_path / "a.tgz").read_bytes() == body
    assert httpserver.log[0][0].headers["Accept-Encoding"] == "identity"


def test_redirect_without_location_is_one_clear_line(httpserver, tmp_path):
    httpserver.expect_request("/a.tgz").respond_with_data("", status=302)
    result = run("download", "--data-dir", str(tmp_path), "--url", httpserver.url_for("/a.tgz"))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "302" in lines[0] and "no Location" in lines[0], result.output


def test_each_retry_is_shown(httpserver, tiny, tmp_path):
    body = cifar_archive(tiny, "binary")
    for _ in range(2):
        httpserver.expect_ordered_request("/a.tgz").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/a.tgz").respond_with_data(body)
    url = httpserver.url_for("/a.tgz")
    result = run("download", "--data-dir", str(tmp_path), "--url", url, "--md5", md5(body))
    assert result.exit_code == 0, result.output
    assert "server error 503 SERVICE UNAVAILABLE, retrying in 0 s (2/5)" in result.output
    assert "retrying in 0 s (3/5)" in result.output


def small_official(monkeypatch, **archives: bytes) -> None:
    """Make the official archives these bytes (checksum and size), at these URLs."""
    for fmt, body in archives.items():
        spec = cifar.ARCHIVES[fmt]
        monkeypatch.setitem(
            cifar.ARCHIVES,
            fmt,
            cifar.Archive(fmt, spec.url, md5(body), len(body), spec.filename, spec.folder),
        )


def test_a_body_beyond_the_official_size_is_refused(httpserver, tiny, tmp_path, monkeypatch):
    body = cifar_archive(tiny, "binary")
    python = cifar_archive(tiny, "python")
    small_official(monkeypatch, binary=body, python=python)
    limit = max(len(body), len(python))

    def endless(request: Request) -> Response:
        def stream():  # no Content-Length: only the bytes themselves can be counted
            # "Endless" but bounded: if the size check ever regressed, this test must
            # fail on its assertion, not fill the disk (an unbounded version once did).
            for _ in range(4 * limit // 65536 + 16):
                yield b"\0" * 65536

        return Response(stream(), 200)

    httpserver.expect_request("/endless").respond_with_handler(endless)
    data_dir = tmp_path / "d"
    result = run("download", "--data-dir", str(data_dir), "--url", httpserver.url_for("/endless"))
    assert result.exit_code == 1
    assert f"sent more than the {limit} bytes" in result.output
    assert not data_dir.exists()
    httpserver.expect_request("/big").respond_with_data(b"\0" * (limit + 1))
    result = run("download", "--data-dir", str(data_dir), "--url", httpserver.url_for("/big"))
    assert result.exit_code == 1 and f"sends {limit + 1} bytes" in result.output
    # A .part already longer than the archive can be is not continued.
    data_dir.mkdir()
    (data_dir / "cifar-10-binary.tar.gz.part").write_bytes(b"\0" * (limit + 5))
    httpserver.expect_request("/ok").respond_with_handler(ranged(body))
    result = run("download", "--data-dir", str(data_dir), "--url", httpserver.url_for("/ok"))
    assert result.exit_code == 0, result.output
    assert "Range" not in httpserver.log[-1][0].headers


def test_from_file_recognises_either_official_archive(tiny, tmp_path, monkeypatch):
    body = cifar_archive(tiny, "python")
    small_official(monkeypatch, binary=cifar_archive(tiny, "binary"), python=body)
    path = tmp_path / "cifar-10-python.tar.gz"
    path.write_bytes(body)
    result = run("download", "--data-dir", str(tmp_path / "d"), "--from-file", str(path))
    assert result.exit_code == 0, result.output  # no --format python needed
    assert "is the official python-format archive; using it" in result.output
    np.testing.assert_array_equal(cifar.load(tmp_path / "d").test_labels, tiny.test_labels)


def test_train_download_advice_names_only_what_works(httpserver, tmp_path, monkeypatch):
    httpserver.expect_request("/official.tgz").respond_with_data("gone", status=404)
    spec = cifar.ARCHIVES["binary"]
    monkeypatch.setitem(
        cifar.ARCHIVES,
        "binary",
        cifar.Archive("binary", httpserver.url_for("/official.tgz"), spec.md5, spec.size,
                      spec.filename, spec.folder),
    )  # fmt: skip
    data_dir = tmp_path / "d"
    result = run("train", "--download", "--data-dir", str(data_dir), "--iters", "1")
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert "404" in line and "use --url" not in line  # train has no --url
    assert f"svmtool download --data-dir {data_dir} --url MIRROR" in line
    assert f"svmtool download --data-dir {data_dir} --from-file ARCHIVE" in line


def test_a_certificate_failure_is_one_line_not_five_retries(tmp_path, monkeypatch):
    calls = []

    def untrusted(*args, **kwargs):
        calls.append(args)
        raise requests.exceptions.SSLError(
            "HTTPSConnectionPool(host='x', port=443): Max retries exceeded (Caused by"
            " SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED]"
            " certificate verify failed: self-signed certificate in certificate chain')))"
        )

    monkeypatch.setattr(requests, "get", untrusted)
    result = run("download", "--data-dir", str(tmp_path), "--url", "https://x/a.tgz")
    assert result.exit_code == 1 and len(calls) == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "certificate could not be verified" in lines[0], result.output
    assert "REQUESTS_CA_BUNDLE" in lines[0]
