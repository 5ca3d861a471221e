"""Pickles read without running code: the restricted unpickler for CIFAR's batches.

CS231n's python-format batches (CIFAR-10 and CIFAR-100) are pickles. Loading a
pickle can run any code, so this unpickler knows only what the batches hold: a
dict of bytes, lists of integers, and uint8 arrays rebuilt without calling
numpy's constructors; anything else is refused (``ForbiddenGlobal``).
"""

from __future__ import annotations

import math
import mmap
import os
import pickle
import struct
import sys
from pathlib import Path

import numpy as np

from svmtool.errors import SvmtoolError
from svmtool.io.files import open_regular


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked for something other than what CIFAR batches hold."""


class _ArrayClass:
    """Stands for numpy.ndarray inside a pickle: it may be named as the class to
    reconstruct, never called (numpy.ndarray(shape) would allocate at will)."""


def _empty_array(subtype, shape, typecode):
    """numpy's _reconstruct, limited to what a pickled array starts as: an empty
    int8 ndarray, filled by BUILD from bytes the file holds."""
    if subtype is not _ArrayClass or shape != (0,) or typecode not in (b"b", "b"):
        raise ForbiddenGlobal(f"an array reconstructed as {subtype!r} {shape!r:.40}")
    return _numpy_reconstruct()(np.ndarray, (0,), b"b")


# The dtypes a batch's arrays may have (its data is uint8; labels, when an array, integers).
# numpy never sees a dtype description or state from the file: fuzzed ones crash it.
_DTYPES = {name: np.dtype(name) for name in ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "b1")}
_NATIVE = "<" if sys.byteorder == "little" else ">"


def _flag(value, expected: int) -> bool:
    """A dtype flag as numpy of any era pickles it: today's numpy writes False/True,
    Python 2's numpy (the official CIFAR-10 files) the integers 0/1."""
    return type(value) in (bool, int) and value == expected


def _dtype(name, align=False, copy=True):
    """numpy.dtype as pickles call it, dtype(name, False, True) or, from Python 2,
    dtype('u1', 0, 1): the plain integer types only, never aligned, always a copy."""
    if isinstance(name, bytes):
        name = name.decode("latin1")
    if not isinstance(name, str) or name not in _DTYPES:
        raise ForbiddenGlobal(f"a dtype {name!r:.40}, where CIFAR-10 batches hold integers")
    if not (_flag(align, 0) and _flag(copy, 1)):
        raise ForbiddenGlobal(
            f"numpy.dtype({name!r}, {align!r:.20}, {copy!r:.20}), where numpy writes"
            f" numpy.dtype({name!r}, False, True)"
        )
    return _DTYPES[name]


def _from_buffer(buffer, dtype, shape, order):
    """numpy's _frombuffer, as protocol-5 pickles call it: a plain integer array
    whose bytes are exactly what its shape and dtype need."""
    if (
        not isinstance(buffer, bytes | bytearray)
        or not any(dtype is d for d in _DTYPES.values())
        or not isinstance(shape, tuple)
        or not all(type(n) is int and n >= 0 for n in shape)
        or order not in ("C", "F")
        or math.prod(shape) * dtype.itemsize != len(buffer)
    ):
        raise ForbiddenGlobal("an array whose data does not match its shape and dtype")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order)


def _latin1_bytes(text, encoding="utf-8", errors="strict"):
    """Python 3 pickles bytes as _codecs.encode(text, 'latin1') at protocols < 3.
    Only that: other codecs could expand the data without bound ('hex' twice...)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise ForbiddenGlobal(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1", errors)


class _BatchUnpickler(pickle._Unpickler):
    """Unpickles CIFAR batches and nothing else, so a tampered file can neither
    run code nor ask for memory its bytes do not account for.

    Only the globals those files need are resolved. It is Python's own
    pure-Python unpickler: the C one allocates from a length field before
    reading (BINBYTES8 of 2**40, a memo index of 2**30), this one reads first.
    An array's data must be exactly the bytes its shape and dtype need.
    """

    dispatch = pickle._Unpickler.dispatch.copy()

    def find_class(self, module: str, name: str):
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _empty_array
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return _from_buffer
        if module == "numpy" and name == "ndarray":
            return _ArrayClass
        if module == "numpy" and name == "dtype":
            return _dtype
        if module == "_codecs" and name == "encode":
            return _latin1_bytes
        # Only a tampered or foreign file names anything else: what it names would run.
        raise ForbiddenGlobal(
            f"forbidden global {module}.{name}, which would run code: CIFAR-10 batches"
            " name only numpy's array and dtype (the file is not one, or was altered)"
        )

    def _load_build(self) -> None:
        state = self.stack[-1]
        target = self.stack[-2]
        if isinstance(target, np.ndarray):
            # (version, shape, dtype, fortran order, raw bytes), as ndarray.__reduce__ gives.
            if not (isinstance(state, tuple) and len(state) == 5):
                raise ForbiddenGlobal("an array state that is not numpy's")
            version, shape, dtype, fortran, raw = state
            if (
                version != 1
                or type(fortran) is not bool
                or not any(dtype is d for d in _DTYPES.values())
                or not isinstance(shape, tuple)
                or not all(type(n) is int and n >= 0 for n in shape)
                or not isinstance(raw, bytes)
                or math.prod(shape) * dtype.itemsize != len(raw)
            ):
                raise ForbiddenGlobal("an array whose data does not match its shape and dtype")
            pickle._Unpickler.load_build(self)
        elif any(target is d for d in _DTYPES.values()):
            # dtype state (version, byte order, ...): a plain integer type in this machine's
            # order needs nothing from it, and nothing else is accepted.
            # Python 2 pickled the byte order as a str, which arrives as bytes.
            self.stack.pop()
            order = state[1] if isinstance(state, tuple) and len(state) >= 2 else None
            if isinstance(order, bytes):
                order = order.decode("latin1")
            if not (
                order in ("|", "=", _NATIVE)
                and not any(isinstance(v, list | dict | tuple) for v in state)
            ):
                raise ForbiddenGlobal(f"a dtype state {state!r:.60}")
        else:
            raise ForbiddenGlobal(f"a {type(target).__name__} with state")

    def _load_bytearray8(self) -> None:
        # Protocol 5's in-band array data. Python's own loader allocates the
        # length it reads before reading; here the bytes must be there first.
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)
        if len(data) != size:
            raise EOFError("a bytearray longer than the file")
        self.append(bytearray(data))

    def _refuse(self) -> None:
        raise ForbiddenGlobal("an opcode CIFAR batches never use")

    dispatch[pickle.BUILD[0]] = _load_build
    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8
    for _opcode in (pickle.NEXT_BUFFER, pickle.READONLY_BUFFER):
        dispatch[_opcode[0]] = _refuse


def unpickle(path: Path) -> dict:
    try:
        with open_regular(path, "batch") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise EOFError("the file is empty")
            # Read from a memory map: a length field asking for more than the
            # file holds gets the bytes that are there, and the load fails.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                obj = _BatchUnpickler(mapped, encoding="bytes").load()
    except ForbiddenGlobal as exc:
        raise SvmtoolError(
            f"cannot read {path} as a CIFAR-10 batch: its pickle holds {exc}"
        ) from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RecursionError,
        struct.error,
    ) as exc:
        raise SvmtoolError(f"truncated or malformed batch {path}: {exc}") from None
    except MemoryError:
        raise SvmtoolError(f"not enough memory to read the batch {path}") from None
    if not isinstance(obj, dict):
        raise SvmtoolError(f"malformed batch {path}: expected a dict, got {type(obj).__name__}")
    # Python 2 str keys arrive as bytes; accept str keys too.
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def integer_labels(labels, path: Path) -> np.ndarray:
    """A batch's labels as int64, if they are a flat list (or 1-D array) of integers."""
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise SvmtoolError(
                f"malformed batch {path}: labels are {labels.dtype} {labels.shape},"
                " not a list of integers"
            )
        return labels.astype(np.int64)
    if not isinstance(labels, list):
        raise SvmtoolError(
            f"malformed batch {path}: labels are a {type(labels).__name__}, not a list"
        )
    wrong = next((v for v in labels if type(v) is not int), None)
    if wrong is not None:
        raise SvmtoolError(
            f"malformed batch {path}: labels must be integers, found {type(wrong).__name__}"
            f" {wrong!r:.40}"
        )
    try:
        return np.fromiter(labels, dtype=np.int64, count=len(labels))
    except OverflowError:
        raise SvmtoolError(f"malformed batch {path}: labels outside 0..9") from None
