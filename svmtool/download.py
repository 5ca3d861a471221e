"""Generic, resumable, verified HTTP download and safe tar extraction (the IO edge).

Nothing here knows about CIFAR-10: the dataset's facts live in ``cifar.py``.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import requests

from svmtool.errors import SvmtoolError

CHUNK_SIZE = 1 << 16
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
RETRIES = 4
# Seconds before retry k is BACKOFF * 2**k; tests set it to 0.
BACKOFF = float(os.environ.get("SVMTOOL_DOWNLOAD_BACKOFF", "1.0"))

ProgressFn = Callable[[int, int | None], None]
"""Called as ``progress(bytes_so_far, total_bytes_or_None)``."""


def md5_of(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


# What a cut connection looks like while streaming the body.
_DROPPED = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class _Retryable(Exception):
    """A failure worth another try (connection dropped, 5xx, timeout)."""


def _hint(url: str) -> str:
    return f"{url}; use --url MIRROR or --from-file ARCHIVE"


def _fetch_once(url: str, part: Path, progress: ProgressFn | None) -> None:
    """One attempt: continue ``part`` from its current size, or start it over."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = requests.get(
            url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
        )
    except requests.exceptions.InvalidURL as exc:
        raise SvmtoolError(f"invalid URL {url!r}: {exc}") from None
    except requests.exceptions.MissingSchema:
        raise SvmtoolError(f"invalid URL {url!r}: it needs http:// or https://") from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retryable(f"cannot connect to {_hint(url)} ({type(exc).__name__})") from None
    with response:
        if response.status_code == 416 and have:
            # The part may already hold the whole file; the checksum decides.
            return
        if response.status_code >= 500:
            raise _Retryable(f"server error {response.status_code} from {_hint(url)}")
        if response.status_code >= 400:
            raise SvmtoolError(
                f"download failed: {response.status_code} {response.reason} for {_hint(url)}"
            )
        if response.status_code == 206 and have:
            mode, done = "ab", have
        else:
            # 200 to a ranged request: the server ignores Range, so start over.
            mode, done = "wb", 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        if progress:
            progress(done, total)
        try:
            with open(part, mode) as f:
                for block in response.iter_content(CHUNK_SIZE):
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        except _DROPPED as exc:
            raise _Retryable(f"connection lost after {done} bytes from {url} ({exc})") from None
        if total is not None and done < total:
            raise _Retryable(f"connection closed after {done} of {total} bytes from {url}")


def fetch(
    url: str,
    dest: Path,
    md5: str,
    progress: ProgressFn | None = None,
    retries: int = RETRIES,
) -> Path:
    """Download ``url`` to ``dest``, resuming from ``dest.part``, and verify its md5.

    The file appears at ``dest`` only once its checksum matches; a mismatch
    deletes the download and raises ``SvmtoolError`` naming both checksums.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress)
            break
        except _Retryable as exc:
            if attempt == retries:
                raise SvmtoolError(f"download failed after {retries + 1} tries: {exc}") from None
            time.sleep(BACKOFF * 2**attempt)
    verify_md5(part, md5, label=url)
    os.replace(part, dest)
    return dest


def verify_md5(path: Path, expected: str, delete: bool = True, label: str | None = None) -> None:
    """Raise ``SvmtoolError`` (and delete ``path`` if asked) when the md5 differs;
    ``label`` names the file in the message (default: its path)."""
    got = md5_of(path)
    if got != expected.lower():
        if delete:
            path.unlink(missing_ok=True)
        raise SvmtoolError(
            f"checksum mismatch for {label or path}: expected md5 {expected.lower()}, got {got}"
            + (" (the file was deleted)" if delete else "")
        )


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "an absolute path"
    if ".." in Path(name).parts or ".." in name.replace("\\", "/").split("/"):
        return "a '..' component"
    if member.issym() or member.islnk():
        return "a link"
    if not (member.isfile() or member.isdir()):
        return "a device or special file"
    return None


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a (gzipped) tar into ``dest``, rejecting the whole archive if any
    member is absolute, climbs out with ``..``, is a link or a special file."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_reason(member)
                if reason:
                    raise SvmtoolError(
                        f"refusing to extract {archive.name}: member {member.name!r} has {reason}"
                    )
            dest.mkdir(parents=True, exist_ok=True)
            for member in members:
                target = dest / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # regular files always have data
                with source, open(target, "wb") as out:
                    while block := source.read(CHUNK_SIZE):
                        out.write(block)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError) and not archive.exists():
            raise SvmtoolError(f"archive not found: {archive}") from None
        raise SvmtoolError(f"cannot read archive {archive}: {exc}") from None
