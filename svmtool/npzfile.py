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
