"""Reading .npz files safely: never unpickle, bound every size, every problem is one line.

An .npz is a zip of .npy members. Each member's header (dtype and shape) is
checked against the member's real size before anything is allocated, so a
small file cannot ask for gigabytes.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from svmtool.errors import SvmtoolError
from svmtool.io.files import open_regular

ZIP_MAGIC = b"PK\x03\x04"
# What numpy writes (stored, deflate) and what Python's zipfile also reads.
KNOWN_COMPRESSION = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


def physical_memory() -> int | None:
    """This machine's memory in bytes, where the system says (None elsewhere)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def usable_memory() -> int | None:
    """What this process may allocate: the machine's memory, or less under an
    address-space limit (ulimit -v); None where neither is known."""
    limits = [physical_memory()]
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ImportError, ValueError, OSError):
        pass
    known = [m for m in limits if m]
    return min(known) if known else None


def npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from the .npy header at ``f``'s position.

    numpy parses the header with Python's tokenizer and literal_eval: damaged
    headers raise all sorts of errors, which all become one ValueError here.
    """
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(f)
        raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError):
        raise
    except Exception as exc:  # TokenError, SyntaxError, TypeError, RecursionError...
        raise ValueError(f"damaged .npy header ({type(exc).__name__}: {exc})") from None


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, fix: str = "") -> int:
    """Refuse a member whose header does not describe exactly the bytes it holds;
    return how many bytes its array needs. ``fix``: what to save instead of an
    array of Python objects."""
    with zf.open(info) as f:
        shape, _, dtype = npy_header(f)
        header_size = f.tell()
    if dtype.hasobject:
        raise SvmtoolError(
            f"{where} holds Python objects; refusing to unpickle it" + (f": {fix}" if fix else "")
        )
    needed = math.prod(shape) * dtype.itemsize
    held = info.file_size - header_size
    if needed != held:
        raise SvmtoolError(
            f"{where} is damaged: its header says {dtype} {tuple(shape)} ({needed} bytes)"
            f" but it holds {held} bytes"
        )
    return needed


def read_npz(path: Path, what: str, fixes: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """All arrays of the .npz at ``path``; ``what`` names it in errors ("model", "dataset").
    ``fixes``: per member name, what to save instead of Python objects."""
    path = Path(path)
    with open_regular(path, f"{what} file") as f:
        if f.read(4) != ZIP_MAGIC:
            raise SvmtoolError(f"{path} is not an .npz file")
        f.seek(0)
        name = "?"
        try:
            with zipfile.ZipFile(f) as zf:
                infos = zf.infolist()
                total = 0
                for info in infos:
                    name = info.filename
                    where = f"{what} {path}: member {name}"
                    if info.is_dir():
                        continue
                    if not name.endswith(".npy"):
                        raise SvmtoolError(f"{where} is not an .npy array")
                    if info.flag_bits & 0x1:
                        raise SvmtoolError(f"{where} is encrypted")
                    if info.compress_type not in KNOWN_COMPRESSION:
                        raise SvmtoolError(
                            f"{where} uses compression method {info.compress_type}, which"
                            " svmtool cannot read (numpy writes stored or deflate)"
                        )
                    fix = (fixes or {}).get(name[: -len(".npy")], "")
                    total += _member_header(zf, info, where, fix)
                memory = physical_memory()
                if memory is not None and total > memory:
                    # A deflated member can expand 1000-fold: a small file must not
                    # start filling more memory than the machine has.
                    raise SvmtoolError(
                        f"{what} {path} holds {total / 1e9:.1f} GB of arrays once"
                        f" decompressed, more than this machine's {memory / 1e9:.1f} GB of memory"
                    )
                arrays = {}
                for info in infos:
                    if info.is_dir():
                        continue
                    name = info.filename
                    with zf.open(info) as member:
                        arrays[name[: -len(".npy")]] = np.lib.format.read_array(
                            member, allow_pickle=False
                        )
                return arrays
        except SvmtoolError:
            raise
        except MemoryError:
            raise SvmtoolError(f"not enough memory to load {what} {path} (member {name})") from None
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                raise SvmtoolError(
                    f"{path} holds Python objects; refusing to unpickle it"
                ) from None
            raise SvmtoolError(f"cannot read {what} {path}: {exc}") from None
        except (OSError, zipfile.BadZipFile, EOFError, KeyError, NotImplementedError) as exc:
            raise SvmtoolError(f"cannot read {what} {path}: {exc}") from None


def map_npy(path: Path, what: str) -> np.ndarray:
    """Memory-map a .npy file svmtool wrote (a cache), read-only, after checking
    that its header describes exactly the bytes it holds. A link, a FIFO or a
    device at ``path`` is refused (SvmtoolError); a damaged file is a ValueError."""
    with open_regular(path, what, follow=False) as f:
        shape, fortran, dtype = npy_header(f)
        offset = f.tell()
        held = os.fstat(f.fileno()).st_size - offset
        needed = math.prod(shape) * dtype.itemsize
        if dtype.hasobject or fortran:
            raise ValueError(f"{path.name} is not a plain array")
        if held != needed:
            raise ValueError(
                f"{path.name} says {dtype} {tuple(shape)} ({needed} bytes) but holds {held}"
            )
        if needed == 0:
            return np.zeros(shape, dtype)
        return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


NPY_MAGIC = b"\x93NUMPY"


def read_npy(path: Path, what: str) -> np.ndarray:
    """The array of a .npy file (np.save), its header checked against the file's
    size before anything is allocated; never unpickled."""
    path = Path(path)
    # One open, then everything from that descriptor: the file cannot be swapped
    # for a FIFO or a bigger file between the check and the read.
    with open_regular(path, f"{what} file") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            if f.read(6) != NPY_MAGIC:
                raise SvmtoolError(f"{path} is not a .npy file (np.save writes one)")
            f.seek(0)
            shape, _, dtype = npy_header(f)
            if dtype.hasobject:
                raise SvmtoolError(f"{path} holds Python objects; refusing to unpickle it")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if expected != size - f.tell():
                raise SvmtoolError(
                    f"{path}: the header says {shape} {dtype} ({expected} bytes) but the file"
                    f" holds {size - f.tell()}"
                )
            f.seek(0)
            return np.load(f, allow_pickle=False)
        except SvmtoolError:
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise SvmtoolError(f"cannot read {what} {path}: {exc}") from None


def write_npy_folder(
    folder: Path, arrays: dict[str, np.ndarray], meta: dict, extra: dict | None = None
) -> Path:
    """A cache folder: one NAME.npy per array plus meta.json (and ``extra``: file
    name -> a value written as JSON), built in a scratch
    folder beside ``folder`` and moved into place last, so a killed process never
    leaves a folder that looks complete. Whatever was at ``folder`` (an old entry,
    a file, a link) is replaced, never written through."""
    import json
    import shutil
    import stat
    import tempfile

    from svmtool.io.files import disk_error, new_folder_mode

    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    old = None
    try:
        # mkdtemp makes the folder private (0700); a cache is ordinary data.
        tmp.chmod(new_folder_mode())
        for name, array in arrays.items():
            target = tmp / f"{name}.npy"
            try:
                np.save(target, np.ascontiguousarray(array))
            except OSError as exc:
                raise disk_error(exc, target) or exc from None
        for name, value in {**(extra or {}), "meta.json": meta}.items():
            target = tmp / name
            try:
                target.write_text(json.dumps(value), encoding="utf-8")
            except OSError as exc:
                raise disk_error(exc, target) or exc from None
        if os.path.lexists(folder):
            if stat.S_ISDIR(os.lstat(folder).st_mode):
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=parent))
                os.replace(folder, old)
            else:
                folder.unlink()  # a file or a link where the folder goes
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return folder
