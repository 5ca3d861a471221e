"""Reading .npz files safely: never unpickle, and every problem is one line."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from svmtool.errors import SvmtoolError

ZIP_MAGIC = b"PK\x03\x04"


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """All arrays of the .npz at ``path``; ``what`` names it in errors ("model", "dataset")."""
    path = Path(path)
    if not path.exists():
        raise SvmtoolError(f"{what} file not found: {path}")
    if path.is_dir():
        raise SvmtoolError(f"{what} path {path} is a folder, not a file")
    try:
        with open(path, "rb") as f:
            if f.read(4) != ZIP_MAGIC:
                raise SvmtoolError(f"{path} is not an .npz file")
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except SvmtoolError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise SvmtoolError(f"{path} holds Python objects; refusing to unpickle it") from None
        raise SvmtoolError(f"cannot read {what} {path}: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise SvmtoolError(f"cannot read {what} {path}: {exc}") from None


NPY_MAGIC = b"\x93NUMPY"


def read_npy(path: Path, what: str) -> np.ndarray:
    """The array of a .npy file (np.save), its header checked against the file's
    size before anything is allocated; never unpickled."""
    import stat

    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SvmtoolError(f"{what} file not found: {path}") from None
    except OSError as exc:
        raise SvmtoolError(f"cannot read {what} {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise SvmtoolError(f"{what} path {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            if f.read(6) != NPY_MAGIC:
                raise SvmtoolError(f"{path} is not a .npy file (np.save writes one)")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            readers = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            if version not in readers:
                raise SvmtoolError(f"{path}: unsupported .npy version {version}")
            shape, _, dtype = readers[version](f)
            if dtype.hasobject:
                raise SvmtoolError(f"{path} holds Python objects; refusing to unpickle it")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if expected != info.st_size - f.tell():
                raise SvmtoolError(
                    f"{path}: the header says {shape} {dtype} ({expected} bytes) but the file"
                    f" holds {info.st_size - f.tell()}"
                )
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except SvmtoolError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise SvmtoolError(f"cannot read {what} {path}: {exc}") from None
