"""Generic, resumable, verified HTTP download and safe tar extraction (the IO edge).

Nothing here knows about CIFAR-10: the dataset's facts live in ``cifar.py``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import re
import stat
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from svmtool.errors import SvmtoolError
from svmtool.io.files import disk_error, link_refusal, open_own, open_regular

CHUNK_SIZE = 1 << 16
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0
RETRIES = 4
# Seconds before retry k is BACKOFF * 2**k; tests set it to 0.
BACKOFF = float(os.environ.get("SVMTOOL_DOWNLOAD_BACKOFF", "1.0"))

ProgressFn = Callable[[int, int | None], None]
"""Called as ``progress(bytes_so_far, total_bytes_or_None)``."""


def is_md5_text(text: str) -> bool:
    """Whether a user's ``--md5`` is written as an md5: 32 hexadecimal digits."""
    return len(text) == 32 and all(ch in "0123456789abcdefABCDEF" for ch in text)


def md5_of(path: Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Hex md5 of a file, read in chunks."""
    digest = hashlib.md5()
    with open_regular(path, "archive") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


class DownloadFailed(SvmtoolError):
    """A download that did not complete. The message says what happened; the
    command that started it adds advice that works from that command."""


RetryFn = Callable[[str, float, int, int], None]
"""Called as ``on_retry(reason, delay_seconds, next_try, tries)`` before each retry."""


def _dropped() -> tuple[type[BaseException], ...]:
    """What a cut connection looks like while streaming the body."""
    import requests
    import urllib3

    return (requests.RequestException, urllib3.exceptions.HTTPError, OSError)


class _Retryable(Exception):
    """A failure worth another try (connection failed or dropped, 5xx, timeout)."""


def _part_size(part: Path) -> int:
    """Bytes already in ``part`` (0 if absent); a link or non-file there is refused."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(st.st_mode):
        raise link_refusal(part)
    if not stat.S_ISREG(st.st_mode):
        raise SvmtoolError(f"{part} is not a regular file; remove it and run again")
    return st.st_size


def _range_start(content_range: str | None) -> int | None:
    """The first byte of 'bytes START-END/TOTAL', or None if unreadable."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", content_range or "")
    return int(match.group(1)) if match else None


def _range_total(content_range: str | None) -> int | None:
    """The TOTAL of 'bytes */TOTAL' (a 416's answer), or None."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", content_range or "")
    return int(match.group(1)) if match else None


def _fetch_once(
    url: str, part: Path, progress: ProgressFn | None, max_size: int | None, restarted=False
) -> None:
    """One attempt: continue ``part`` from its current size, or start it over."""
    # Imported here, not at the top: requests and urllib3 take ~0.1 s to import,
    # and every command reads this module but only a download needs them.
    import requests

    have = _part_size(part)
    if max_size is not None and have > max_size:
        # Longer than the archive can be: not a beginning worth continuing.
        part.unlink()
        have = 0
    # identity: the archive is hashed as sent, never as a transport-decoded body.
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = requests.get(
            url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT)
        )
    except requests.exceptions.MissingSchema:
        raise SvmtoolError(f"invalid URL {url!r}: it needs http:// or https://") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
        raise SvmtoolError(f"invalid URL {url!r}: {exc}") from None
    except requests.TooManyRedirects:
        raise DownloadFailed(f"download failed: too many redirects from {url}") from None
    except requests.exceptions.SSLError as exc:
        # Not a dropped connection: trying again gives the same answer.
        unverified = "certificate verify failed" in str(exc).lower()
        why = (
            "its TLS certificate could not be verified"
            if unverified
            else "the TLS handshake failed"
        )
        raise DownloadFailed(
            f"download failed: {url}: {why} (behind a proxy that inspects TLS, set"
            " REQUESTS_CA_BUNDLE to its certificate)"
        ) from None
    except requests.Timeout:
        raise _Retryable("connection timed out") from None
    except requests.ConnectionError:
        raise _Retryable("connection failed") from None
    except requests.RequestException as exc:
        raise DownloadFailed(f"download failed for {url}: {exc}") from None

    def restart(why: str) -> None:
        # The bytes on disk cannot be continued: drop them and fetch from byte 0.
        response.close()
        part.unlink(missing_ok=True)
        if restarted:
            raise DownloadFailed(f"download failed: {why} for {url}")
        _fetch_once(url, part, progress, max_size, restarted=True)

    with response:
        status = response.status_code
        if status == 416 and have:
            if _range_total(response.headers.get("Content-Range")) == have:
                return  # the part already holds the whole file; the checksum decides
            return restart(f"the server refused to resume at byte {have}")
        if 300 <= status < 400:
            # requests follows every redirect that names where to go.
            location = response.headers.get("Location")
            where = (
                f"a Location svmtool cannot follow ({location!r})" if location else "no Location"
            )
            raise DownloadFailed(
                f"download failed: {url} answered {status} {response.reason}, a redirect with"
                f" {where}"
            )
        if status >= 500:
            raise _Retryable(f"server error {status} {response.reason}")
        if status >= 400:
            raise DownloadFailed(f"download failed: {status} {response.reason} for {url}")
        if status == 206:
            start = _range_start(response.headers.get("Content-Range"))
            if start != have:
                # Appending bytes from elsewhere in the file would corrupt it silently.
                return restart(f"the server resumed at byte {start}, not at {have}")
            append, done = have > 0, have
        elif status == 200:
            # 200 to a ranged request: the server ignores Range, so start over.
            append, done = False, 0
        else:
            raise DownloadFailed(f"download failed: {url} answered {status} {response.reason}")
        length = response.headers.get("Content-Length")
        total = done + int(length) if length and length.isdigit() else None
        if max_size is not None and total is not None and total > max_size:
            part.unlink(missing_ok=True)  # what it holds cannot be the start of the archive
            raise DownloadFailed(
                f"download failed: {url} sends {total} bytes, more than the {max_size} bytes"
                " of the archive the checksum names; refusing it"
            )
        if progress:
            progress(done, total)
        # Raw bytes, as sent: a Content-Encoding (gzip) is not undone.
        body = response.raw.stream(CHUNK_SIZE, decode_content=False)
        dropped = _dropped()
        with open_own(part, append=append, truncate=not append) as f:
            while True:
                try:
                    block = next(body, None)
                except dropped:
                    raise _Retryable(f"connection lost after {done} bytes") from None
                if block is None:
                    break
                if max_size is not None and done + len(block) > max_size:
                    f.close()
                    part.unlink(missing_ok=True)
                    raise DownloadFailed(
                        f"download failed: {url} sent more than the {max_size} bytes of the"
                        " archive the checksum names; refusing the rest"
                    )
                try:
                    f.write(block)
                except OSError as exc:
                    raise disk_error(exc, part) or exc from None
                done += len(block)
                if progress:
                    progress(done, total)
        if total is not None and done < total:
            raise _Retryable(f"connection closed after {done} of {total} bytes")


def fetch(
    url: str,
    dest: Path,
    md5: str | Iterable[str],
    progress: ProgressFn | None = None,
    retries: int = RETRIES,
    on_retry: RetryFn | None = None,
    max_size: int | None = None,
) -> str:
    """Download ``url`` to ``dest``, resuming from ``dest.part``, and verify its md5.

    ``md5`` is the checksum, or several accepted ones; the one that matched is
    returned. The file appears at ``dest`` only once its checksum matches; a
    mismatch deletes the download and raises ``SvmtoolError`` naming the
    checksums. ``max_size`` bounds the body: a server sending more is refused.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _fetch_once(url, part, progress, max_size)
            break
        except _Retryable as exc:
            if attempt == retries:
                raise DownloadFailed(
                    f"download failed after {retries + 1} tries from {url}: {exc}"
                ) from None
            delay = BACKOFF * 2**attempt
            if on_retry:
                on_retry(str(exc), delay, attempt + 2, retries + 1)
            time.sleep(delay)
    matched = verify_md5(part, md5, label=url)
    os.replace(part, dest)
    return matched


def verify_md5(
    path: Path, expected: str | Iterable[str], delete: bool = True, label: str | None = None
) -> str:
    """The md5 of ``path`` if it is one of ``expected``; otherwise raise
    ``SvmtoolError`` (and delete ``path`` if asked). ``label`` names the file in
    the message (default: its path)."""
    accepted = [expected.lower()] if isinstance(expected, str) else [e.lower() for e in expected]
    got = md5_of(path)
    if got not in accepted:
        if delete:
            path.unlink(missing_ok=True)
        raise SvmtoolError(
            f"checksum mismatch for {label or path}: expected md5 {' or '.join(accepted)},"
            f" got {got}" + (" (the file was deleted)" if delete else "")
        )
    return got


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


GZIP_MAGIC = b"\x1f\x8b"


def _check_gzip_header(f: BinaryIO) -> BinaryIO:
    """What Python's gzip lets pass in a gzip header: reserved flag bits (RFC 1952:
    a decompressor must refuse them) and the optional header CRC-16, which it reads
    and discards. (The time stamp, XFL and OS bytes are covered by no checksum and
    change no byte of the contents: only an md5 sees a change there.)"""
    start = f.read(10)
    if len(start) < 10 or start[:2] != GZIP_MAGIC:
        f.seek(0)
        return f  # not gzip: tarfile decides what it is
    flags = start[3]
    if flags & 0xE0:
        raise gzip.BadGzipFile(f"damaged gzip header (reserved flags 0x{flags:02x})")
    header = bytearray(start)
    if flags & 0x04:  # FEXTRA: a 2-byte length, then that many bytes
        size = f.read(2)
        header += size + f.read(int.from_bytes(size.ljust(2, b"\0"), "little"))
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT: zero-terminated, bounded by the file
        if flags & bit:
            while (byte := f.read(1)) not in (b"", b"\0"):
                header += byte
                if len(header) > 65536:
                    raise gzip.BadGzipFile("damaged gzip header (a name longer than 64 KiB)")
            header += byte
    if flags & 0x02:  # FHCRC: the low 16 bits of the header's CRC-32
        stored = f.read(2)
        if int.from_bytes(stored.ljust(2, b"\0"), "little") != zlib.crc32(header) & 0xFFFF:
            raise gzip.BadGzipFile("damaged gzip header (header CRC mismatch)")
    f.seek(0)
    return f


def _read_to_end(tar: tarfile.TarFile) -> None:
    """Decompress what follows the last member (the tar's end blocks and padding)
    to the end of the stream, so gzip's CRC-32 and length (bz2's and xz's checks)
    are verified: tarfile stops at the end-of-archive blocks and never reads the
    trailer, and a damaged byte can decompress to wrong pixels without an error."""
    stream = tar.fileobj
    if isinstance(stream, gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile):
        while stream.read(CHUNK_SIZE):
            pass


def safe_extract(
    archive: Path, dest: Path, max_bytes: int | None = None, max_members: int | None = None
) -> None:
    """Extract a (gzipped) tar into ``dest``, rejecting the whole archive if any
    member is absolute, climbs out with ``..``, is a link or a special file, or
    if the members add up to more than ``max_bytes`` or ``max_members``. All of
    it is checked from the headers before a byte is written."""
    try:
        with (
            open_regular(archive, "archive") as f,
            tarfile.open(fileobj=_check_gzip_header(f), mode="r:*") as tar,
        ):
            members, total = [], 0
            # Header by header (not getmembers()): a bomb is refused at the first
            # header past the bound, before the rest is decompressed.
            while (member := tar.next()) is not None:
                reason = _unsafe_reason(member)
                if reason:
                    raise SvmtoolError(
                        f"refusing to extract {archive.name}: member {member.name!r} has {reason}"
                    )
                members.append(member)
                total += member.size if member.isfile() else 0
                if max_members is not None and len(members) > max_members:
                    raise SvmtoolError(
                        f"refusing to extract {archive.name}: more than {max_members} members"
                    )
                if max_bytes is not None and total > max_bytes:
                    raise SvmtoolError(
                        f"refusing to extract {archive.name}: its members add up to more than"
                        f" {max_bytes:,} bytes (at least {total:,})"
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
                # Exclusive and never through a link: a second member of the same
                # name is refused rather than written over the first.
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                with source, os.fdopen(os.open(target, flags, 0o666), "wb") as out:
                    while block := source.read(CHUNK_SIZE):
                        try:
                            out.write(block)
                        except OSError as exc:
                            raise disk_error(exc, target) or exc from None
            _read_to_end(tar)
    except SvmtoolError:
        raise
    except FileExistsError as exc:
        raise SvmtoolError(
            f"refusing to extract {archive.name}: it holds {exc.filename} twice"
        ) from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise SvmtoolError(f"cannot read archive {archive}: {exc}") from None
