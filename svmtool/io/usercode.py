"""A user's own loss function: find it, import it, call it, and explain its errors.

Loading a user's file runs it, on purpose (as pytest does). What it raises is
the user's to see: their traceback, their frames only, and one line naming
their file and line. Everything it returns is checked before use.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svmtool.errors import SvmtoolError

CS231N_NAMES = ("svm_loss_naive", "svm_loss_vectorized")
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # svmtool/, every layer
_LIBRARY_DIRS = tuple(
    str(Path(p).resolve())
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)
_PY2_NAMES = {"xrange", "unicode", "raw_input", "basestring", "long", "unichr", "execfile"}
_PY2_ATTRS = {"iteritems", "itervalues", "iterkeys", "has_key"}
_module_counter = itertools.count()
MAX_SOURCE_BYTES = 16 * 2**20  # read for hints only; Python's import reads the file itself


class UserCodeError(SvmtoolError):
    """The user's code could not be imported, or raised. Exit code 3.

    ``summary`` is one line naming the file and line; ``details`` is the
    user's traceback (their frames only) or other context, possibly empty.
    """

    def __init__(self, summary: str, details: str = "", hint: str | None = None):
        super().__init__(summary)
        self.summary = summary
        self.details = details
        self.hint = hint
        self.out_of_memory = False  # it raised MemoryError (the --memory limit, in a child)
        self.brief = summary  # the summary without the message, when a traceback shows it


class BadReturn(SvmtoolError):
    """The user's function returned something that is not ``(number, dW)``."""


class SpecError(SvmtoolError):
    """``--loss`` itself cannot be understood: a usage error (exit 2)."""


class UserInterrupted(SvmtoolError):
    """Ctrl-C while the user's code ran; the message says where it was."""


@contextmanager
def guarded() -> Iterator[None]:
    """While the user's code runs, os._exit raises SystemExit instead of ending
    the process silently (a report must always come out)."""

    def no_exit(code: int = 0) -> None:
        raise SystemExit(code)

    real = os._exit
    os._exit = no_exit
    try:
        yield
    finally:
        os._exit = real


def _interrupted(exc: KeyboardInterrupt, name: str) -> UserInterrupted:
    _, where = user_traceback(exc)
    return UserInterrupted(f"interrupted in {name}" + (f" ({where})" if where else ""))


def _is_ours(filename: str) -> bool:
    return str(Path(filename).resolve()).startswith(_PACKAGE_DIR + os.sep)


def _is_library(filename: str) -> bool:
    path = str(Path(filename).resolve())
    return filename.startswith("<") or any(path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


def python2_hint(exc: BaseException, source: str | None = None) -> str | None:
    """Say so when an error is Python 2 code meeting Python 3."""
    if isinstance(exc, SyntaxError):
        msg = str(exc.msg or "")
        if "Missing parentheses in call to 'print'" in msg or "Missing parentheses" in msg:
            return "this is Python 2 code (a print statement): write print(...) instead"
        text = exc.text or ""
        if re.search(r"\bexcept\s+\w+\s*,\s*\w+\s*:", text):
            return "this is Python 2 code (except E, e:): write except E as e:"
        if source and re.search(r"^\s*print\s+[^(=\s]", source, re.MULTILINE):
            return "this looks like Python 2 code (print statements): svmtool runs Python 3"
    if isinstance(exc, NameError) and getattr(exc, "name", None) in _PY2_NAMES:
        return f"{exc.name} is Python 2 (this is Python 3): " + (
            "use range" if exc.name == "xrange" else "see the Python 3 porting guide"
        )
    if isinstance(exc, AttributeError) and getattr(exc, "name", None) in _PY2_ATTRS:
        return f".{exc.name}() is Python 2: use .{exc.name.removeprefix('iter')}() or `in`"
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in (
        "past",
        "future",
    ):
        return (
            "CS231n's files import past.builtins (the 'future' package): pip install future,"
            " or delete that import line (Python 3 does not need it)"
        )
    return None


def user_traceback(exc: BaseException) -> tuple[str, str | None]:
    """The traceback without svmtool's frames, and 'file, line N' of the deepest
    frame in the user's own code (not svmtool, not the standard library, not an
    installed package)."""
    everything = traceback.extract_tb(exc.__traceback__)
    # Their frames only: not svmtool's, nor numpy's or the standard library's
    # (the exception's own line still says what went wrong in there).
    frames = [f for f in everything if not (_is_ours(f.filename) or _is_library(f.filename))]
    if not frames:
        frames = [f for f in everything if not _is_ours(f.filename)][-1:]
    where = None
    for frame in reversed(frames):
        if not _is_library(frame.filename):
            where = f"{frame.filename}, line {frame.lineno}"
            break
    lines = []
    if frames:
        lines.append("Traceback (most recent call last):\n")
        lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines).rstrip("\n"), where


def error_from(
    exc: BaseException, doing: str, source: str | None = None, path: Path | None = None
) -> UserCodeError:
    """A UserCodeError for an exception the user's code raised while ``doing``
    (any BaseException: pytest.skip() at module level raises one)."""
    if isinstance(exc, SyntaxError) and exc.lineno is None and path is not None:
        # Python gives no location for a NUL byte in the source: find it.
        where = nul_location(path)
        if where is not None:
            details = f"{where}\nSyntaxError: {exc.msg}"
            return UserCodeError(
                f"{doing}: SyntaxError: {exc.msg} ({where})",
                details,
                "a NUL byte is not text: the file was probably saved by a tool that writes"
                " UTF-16 or binary; save it again as UTF-8 text",
            )
    if isinstance(exc, SyntaxError) and not _is_ours(exc.filename or ""):
        where = f"{exc.filename}, line {exc.lineno}"
        details, _ = user_traceback(exc)
        summary = f"{doing}: SyntaxError: {exc.msg} ({where})"
        return UserCodeError(summary, details, python2_hint(exc, source))
    details, where = user_traceback(exc)
    try:
        text = str(exc)
    except Exception:  # their exception's __str__ raised in turn
        text = ""
    message = text.splitlines()[0] if text else ""
    summary = f"{doing}: {type(exc).__name__}" + (f": {message}" if message else "")
    brief = f"{doing}: {type(exc).__name__}"
    if where:
        summary += f" ({where})"
        brief += f" ({where})"
    error = UserCodeError(summary, details, python2_hint(exc, source))
    error.out_of_memory = isinstance(exc, MemoryError)
    if details.rstrip().endswith(message):
        error.brief = brief  # the traceback's last line already says the message
    return error


def nul_location(path: Path) -> str | None:
    """'file, line N, column M' of the first NUL byte in ``path`` (None if none)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SOURCE_BYTES)
    except OSError:
        return None
    at = data.find(b"\0")
    if at < 0:
        return None
    line = data.count(b"\n", 0, at) + 1
    column = at - (data.rfind(b"\n", 0, at) + 1) + 1
    return f"{path}, line {line}, column {column}"


@dataclass
class LossSpec:
    """What ``--loss`` named: a file or module, and a function name or None (both CS231n names)."""

    target: str
    func: str | None
    is_path: bool


def parse_spec(text: str) -> LossSpec:
    """'PATH.py:FUNC', 'PATH.py' or 'package.module:FUNC'."""
    target, func = text, None
    head, sep, tail = text.rpartition(":")
    if sep and tail.isidentifier():
        target, func = head, tail
    elif sep and tail:
        raise SpecError(f"--loss: {tail!r} is not a Python function name (in {text!r})")
    elif sep:
        raise SpecError(f"--loss {text}: the function's name is missing after ':'")
    if not target:
        raise SpecError(f"--loss needs a file or module before ':', got {text!r}")
    is_path = target.endswith(".py") or os.sep in target or "/" in target
    if not is_path and func is None:
        raise SpecError(
            f"--loss {text}: give a .py file, or a module and a function as package.module:FUNC"
        )
    if not is_path and not all(part.isidentifier() for part in target.split(".")):
        raise SpecError(f"--loss: {target!r} is neither a .py file nor a module name")
    return LossSpec(target, func, is_path)


def import_target(spec: LossSpec):
    """Import the user's file or module (this runs it). Raises UserCodeError."""
    if spec.is_path:
        path = Path(spec.target).expanduser()
        if not path.exists():
            raise UserCodeError(f"--loss: {spec.target} does not exist")
        if not path.is_file():
            raise UserCodeError(f"--loss: {spec.target} is not a file")
        path = path.resolve()
        source = None
        try:
            with open(path, "rb") as f:
                source = f.read(MAX_SOURCE_BYTES).decode("utf-8", errors="replace")
        except OSError as exc:
            raise UserCodeError(f"--loss: cannot read {spec.target}: {exc.strerror}") from None
        # Like running the file as a script: its own folder is importable.
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))
        name = f"svmtool_user_{next(_module_counter)}_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise SvmtoolError(f"--loss: {spec.target} cannot be imported as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            with guarded():
                module_spec.loader.exec_module(module)
        except KeyboardInterrupt as exc:
            sys.modules.pop(name, None)
            raise _interrupted(exc, f"importing {spec.target}") from None
        except ImportError as exc:
            sys.modules.pop(name, None)
            dotted = _package_name(path)
            if "relative import" in str(exc) and dotted:
                # A module of a package (from .helpers import ...): import it as one.
                return _import_module(dotted, f"importing {spec.target} failed")
            raise error_from(exc, f"importing {spec.target} failed", source) from None
        except SystemExit as exc:
            sys.modules.pop(name, None)
            raise UserCodeError(
                f"importing {spec.target} called sys.exit({exc.code!r}): put the script part"
                " under if __name__ == '__main__':"
            ) from None
        except BaseException as exc:  # pytest.skip() at module level is a BaseException
            sys.modules.pop(name, None)
            raise error_from(exc, f"importing {spec.target} failed", source, path) from None
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return _import_module(spec.target, f"importing {spec.target} failed")


def _package_name(path: Path) -> str | None:
    """'pkg.sub.mod' for a file inside package folders (with __init__.py), its top
    package's parent put on sys.path; None for a file outside any package."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    if len(parts) == 1 or not all(p.isidentifier() for p in parts):
        return None
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return ".".join(parts)


def _import_module(dotted: str, doing: str):
    try:
        with guarded():
            return importlib.import_module(dotted)
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, f"importing {dotted}") from None
    except ModuleNotFoundError as exc:
        if exc.name and dotted.startswith(exc.name):
            raise UserCodeError(
                f"no module named {dotted!r} here (run from the folder that holds it,"
                " or give the .py file's path)"
            ) from None
        raise error_from(exc, doing) from None
    except SystemExit as exc:
        raise UserCodeError(f"{doing}: it called sys.exit({exc.code!r})") from None
    except BaseException as exc:
        hint = None
        if "." in dotted:
            hint = "if the package's __init__.py is what fails, give the .py file's path instead"
        error = error_from(exc, doing)
        error.hint = error.hint or hint
        raise error from None


LossCallable = Callable[..., object]

_GUARDED_MODULES = ("numpy", "numpy.linalg", "numpy.random", "math")


class NamespaceGuard:
    """What numpy (and math) offer, as it was before the user's code ran.

    Code that sets ``np.maximum = np.minimum`` changes numpy for everyone
    after it: svmtool's reference loss and the next function checked.
    ``restore()`` puts back every name that was replaced or deleted (new
    names are left: nothing of ours uses them) and returns the names, so the
    report can say so.
    """

    def __init__(self) -> None:
        self.saved = {
            name: (sys.modules[name], dict(vars(sys.modules[name])))
            for name in _GUARDED_MODULES
            if name in sys.modules
        }

    def restore(self) -> list[str]:
        changed = []
        for name, (module, before) in self.saved.items():
            now = vars(module)
            for key, value in before.items():
                if now.get(key, _MISSING) is not value:
                    changed.append(f"{name}.{key}")
                    setattr(module, key, value)
        return changed


_MISSING = object()


@dataclass
class UserFunction:
    """A user's ``f(W, X, y, reg[, delta])``, called on copies, its return checked.

    Call it as ``fn(W, X, y, reg, delta)``: W (D, C), X (N, D), y (N,). Returns
    ``(loss, dW)`` as a float and a float64 array of W's shape, or raises
    BadReturn (a malformed result) or UserCodeError (it raised).
    """

    fn: LossCallable
    name: str
    origin: str  # the file (or module) it came from, as the user named it
    takes_delta: bool = False
    mutated: set[str] = field(default_factory=set)  # "W", "X", "y" seen changed in place
    calls: int = 0
    float32: bool = False  # it returned float32 results: it computes in single precision
    last_rows: int = 0  # N of the latest call (the kink recheck calls it on fewer rows)
    on_call: Callable[[UserFunction], None] | None = None  # progress: told before each call
    patched: list[str] = field(default_factory=list)  # numpy names it replaced (put back)
    guard: NamespaceGuard | None = None  # numpy as it was before the user's file ran

    @classmethod
    def wrap(cls, fn: LossCallable, name: str | None = None, origin: str = "") -> UserFunction:
        if not callable(fn):
            raise SvmtoolError(f"{name or fn!r} is not a function")
        takes_delta = False
        try:
            params = inspect.signature(fn).parameters
            takes_delta = "delta" in params and params["delta"].kind in (
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                inspect.Parameter.KEYWORD_ONLY,
            )
        except (TypeError, ValueError):
            pass  # a builtin or a C function: call it with four arguments
        return cls(fn, name or getattr(fn, "__name__", "loss"), origin, takes_delta)

    def raw_call(self, W, X, y, reg, delta):
        """Call the function as is (its return unchecked); os._exit is guarded, and
        numpy is put back as it was if the function replaced parts of it."""
        guard = self.guard or NamespaceGuard()
        try:
            with guarded():
                if self.takes_delta:
                    return self.fn(W, X, y, reg, delta=delta)
                return self.fn(W, X, y, reg)
        finally:
            for name in guard.restore():
                if name not in self.patched:
                    self.patched.append(name)

    def __call__(self, W, X, y, reg, delta) -> tuple[float, np.ndarray]:
        args = (W.copy(), X.copy(), y.copy())
        self.calls += 1
        self.last_rows = X.shape[0]
        if self.on_call is not None:
            self.on_call(self)
        try:
            result = self.raw_call(*args, reg, delta)
        except KeyboardInterrupt as exc:
            raise _interrupted(exc, self.name) from None
        except SystemExit as exc:
            raise UserCodeError(f"{self.name} called sys.exit({exc.code!r})") from None
        except BaseException as exc:  # any of theirs, pytest's Skipped included
            raise error_from(exc, f"{self.name} raised") from None
        for label, given, original in zip("WXy", args, (W, X, y), strict=True):
            if given.shape != original.shape or not np.array_equal(given, original):
                self.mutated.add(label)
        try:
            loss, dW, single = check_return(result, W.shape, self.name)
        except BadReturn:
            raise
        except KeyboardInterrupt as exc:
            raise _interrupted(exc, self.name) from None
        except BaseException as exc:
            # Their objects run their own code when converted (__float__, __array__...).
            raise error_from(exc, f"converting what {self.name} returned raised") from None
        self.float32 |= single
        return loss, dW


def _describe(value) -> str:
    kind = type(value).__name__
    shape = getattr(value, "shape", None)
    return f"{kind} of shape {shape}" if shape is not None else kind


def check_return(
    result, shape: tuple[int, int], name: str = "the function"
) -> tuple[float, np.ndarray, bool]:
    """``(loss, dW, single)``: a finite number, a finite float64 array shaped
    ``shape``, and whether the function computed them in float32."""
    if inspect.isgenerator(result):
        raise BadReturn(f"{name} uses yield, so it returns a generator: write return loss, dW")
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise BadReturn(f"{name} returned {_describe(result)}; it must return a pair (loss, dW)")
    loss, dW = result
    if (
        isinstance(loss, np.ndarray)
        and loss.shape == tuple(shape)
        and np.ndim(dW) == 0
        and not isinstance(dW, str)
    ):
        raise BadReturn(f"{name} returned (dW, loss): CS231n's order is return loss, dW")
    single = np.asarray(loss).dtype == np.float32 or getattr(dW, "dtype", None) == np.float32
    if isinstance(loss, np.ndarray) and loss.ndim == 0:
        loss = loss[()]
    if isinstance(loss, bool) or not isinstance(loss, int | float | np.integer | np.floating):
        raise BadReturn(
            f"{name} returned a loss that is {_describe(loss)}, not a number"
            + (" (use float(...) or np.sum to get a scalar)" if hasattr(loss, "shape") else "")
        )
    loss = float(loss)
    if not np.isfinite(loss):
        raise BadReturn(f"{name} returned a loss of {loss}")
    if isinstance(dW, np.matrix):
        raise BadReturn(
            f"{name} returned dW as np.matrix; return a plain ndarray (np.asarray(dW)):"
            " np.matrix changes what * and indexing mean"
        )
    if not isinstance(dW, np.ndarray):
        raise BadReturn(f"{name} returned dW as {_describe(dW)}; it must be a numpy array")
    if dW.shape != tuple(shape):
        hint = ""
        if dW.shape == tuple(shape)[::-1]:
            hint = " (transposed: C x D is the 2015 assignment's layout; today W and dW are D x C)"
        raise BadReturn(f"{name} returned dW of shape {dW.shape}; W is {tuple(shape)}{hint}")
    if dW.dtype.kind not in "fiu":
        raise BadReturn(f"{name} returned dW of dtype {dW.dtype}; it must hold numbers")
    dW = dW.astype(np.float64)
    if not np.all(np.isfinite(dW)):
        bad = int((~np.isfinite(dW)).sum())
        raise BadReturn(f"{name} returned dW with {bad} NaN or infinite entries")
    return loss, dW, bool(single)


def load_functions(spec: LossSpec) -> list[UserFunction]:
    """The function(s) ``--loss`` names: FUNC, or each CS231n name the file defines."""
    guard = NamespaceGuard()
    module = import_target(spec)
    patched_at_import = guard.restore()
    names = [spec.func] if spec.func else [n for n in CS231N_NAMES if hasattr(module, n)]
    if not names:
        raise UserCodeError(
            f"{spec.target} defines neither {CS231N_NAMES[0]} nor {CS231N_NAMES[1]};"
            " name the function as PATH.py:FUNC"
        )
    functions = []
    for name in names:
        if not hasattr(module, name):
            defined = sorted(
                n
                for n, v in vars(module).items()
                if inspect.isfunction(v)
                and v.__module__ == module.__name__
                and not n.startswith("_")
            )
            raise UserCodeError(
                f"{spec.target} has no function {name!r}"
                + (f" (it defines: {', '.join(defined[:8])})" if defined else "")
            )
        fn = UserFunction.wrap(getattr(module, name), name, spec.target)
        fn.patched = list(patched_at_import)
        fn.guard = guard
        functions.append(fn)
    return functions
