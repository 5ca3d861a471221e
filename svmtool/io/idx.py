"""IDX files (MNIST's and Fashion-MNIST's format) of unsigned bytes, gzip or plain:
every dimension checked against the file's size before anything is allocated."""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from svmtool.errors import SvmtoolError
from svmtool.io.download import _check_gzip_header
from svmtool.io.files import open_regular
from svmtool.io.npzfile import physical_memory

# IDX bounds: MNIST's files hold 60,000 images of 28 x 28.
MAX_IDX_ITEMS = 10_000_000
MAX_IDX_SIDE = 1024
IDX_UBYTE = 0x08


def _gzip_isize(f) -> int | None:
    """The gzip trailer's ISIZE (uncompressed length mod 2**32), or None if not gzip."""
    f.seek(0)
    if f.read(2) != b"\x1f\x8b":
        f.seek(0)
        return None
    f.seek(-4, os.SEEK_END)
    isize = int.from_bytes(f.read(4), "little")
    f.seek(0)
    return isize


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip or plain) with ``ndim`` dimensions, as uint8.

    The magic, the dimensions and the size they imply are checked before anything
    is allocated (against the file's size, or the gzip trailer's length); the stream
    is read to its end, so gzip's CRC-32 and length are verified, and a byte more
    than the dimensions account for is refused.
    """
    try:
        with open_regular(path, "IDX file") as raw:
            file_size = os.fstat(raw.fileno()).st_size
            if file_size < 4:
                raise SvmtoolError(f"{path} is not an IDX file (too short)")
            isize = _gzip_isize(raw)
            stream = gzip.GzipFile(fileobj=_check_gzip_header(raw)) if isize is not None else raw
            with stream as f:
                header = f.read(4)
                if len(header) < 4 or header[:2] != b"\0\0":
                    raise SvmtoolError(f"{path} is not an IDX file (no IDX magic number)")
                if header[2] != IDX_UBYTE:
                    raise SvmtoolError(
                        f"{path}: IDX type 0x{header[2]:02x}, not unsigned bytes (0x08)"
                    )
                if header[3] != ndim:
                    raise SvmtoolError(f"{path}: {header[3]} dimensions, expected {ndim}")
                dims_raw = f.read(4 * ndim)
                if len(dims_raw) < 4 * ndim:
                    raise SvmtoolError(f"{path}: truncated IDX header")
                dims = struct.unpack(f">{ndim}I", dims_raw)
                if not 1 <= dims[0] <= MAX_IDX_ITEMS or not all(
                    1 <= d <= MAX_IDX_SIDE for d in dims[1:]
                ):
                    raise SvmtoolError(f"{path}: implausible IDX dimensions {dims}")
                need = math.prod(dims)
                total = 4 + 4 * ndim + need
                if isize is None and total != file_size:
                    raise SvmtoolError(
                        f"{path}: the header says {dims} ({total} bytes), the file holds"
                        f" {file_size}"
                    )
                if isize is not None and isize != total % (1 << 32):
                    raise SvmtoolError(
                        f"{path}: the header says {dims} ({total} bytes), the gzip trailer"
                        f" {isize} bytes"
                    )
                memory = physical_memory()
                if memory is not None and need > memory // 2:
                    raise SvmtoolError(f"{path}: {need:,} bytes of pixels, too many for memory")
                out = np.empty(need, dtype=np.uint8)
                view = memoryview(out)
                got = 0
                while got < need:
                    n = f.readinto(view[got : got + (1 << 20)])
                    if not n:
                        raise SvmtoolError(f"{path}: truncated: {got} of {need} data bytes")
                    got += n
                if f.read(1):
                    raise SvmtoolError(f"{path}: more bytes than its dimensions {dims} hold")
    except SvmtoolError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        raise SvmtoolError(f"cannot read {path}: {exc}") from None
    return out.reshape(dims)
