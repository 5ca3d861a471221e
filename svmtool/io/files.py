"""Opening and writing files safely (the IO edge's one place for it).

- Files from outside are opened only if they are regular files: a FIFO or a
  device given where a file is expected is refused at once, never waited on.
- Files svmtool creates are created exclusively and never through a link
  planted at their name.
- A file is written under a temporary name and moved into place last; a
  replaced file keeps its permissions, a new one follows the umask.
- A full disk is said as such, with the file and how much space is left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from svmtool.errors import SvmtoolError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)

# numpy's tofile() reports a short write without errno: this is a full disk.
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def link_refusal(path: Path) -> SvmtoolError:
    return SvmtoolError(
        f"{path} is a symbolic link; svmtool does not write through a link it did not"
        " create (remove it and run again)"
    )


def open_regular(path: Path, what: str = "file", follow: bool = True) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; ``what`` names it in errors.

    Opened non-blocking, so a FIFO is refused instead of waited on. With
    ``follow=False`` a symbolic link is refused too (for files svmtool made).
    """
    flags = os.O_RDONLY | _NONBLOCK | _CLOEXEC | _BINARY | (0 if follow else _NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise SvmtoolError(f"{what} not found: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise SvmtoolError(f"{what} {path} is a symbolic link; refusing to follow it") from None
        raise SvmtoolError(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SvmtoolError(f"{what} {path} is {_kind(mode)}, not a regular file")
    return os.fdopen(fd, "rb")


def is_regular_file(path: Path) -> bool:
    """True if ``path`` itself (not a link's target) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def open_own(path: Path, append: bool = False, truncate: bool = False) -> BinaryIO:
    """Open (creating it) a file svmtool owns for writing, never through a link
    planted at its name, and only if it is a regular file."""
    flags = os.O_WRONLY | os.O_CREAT | _NOFOLLOW | _NONBLOCK | _CLOEXEC | _BINARY
    flags |= os.O_APPEND if append else 0
    flags |= os.O_TRUNC if truncate else 0
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_refusal(path) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise SvmtoolError(f"{path} is {_kind(mode)}, not a regular file; remove it and run again")
    return os.fdopen(fd, "ab" if append else "wb")


def umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def new_file_mode(path: Path) -> int:
    """The mode a file written at ``path`` should get: the mode of the regular
    file it replaces, else what the umask gives a new file."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~umask()


def new_folder_mode() -> int:
    return 0o777 & ~umask()


def disk_error(exc: OSError, path: Path) -> SvmtoolError | None:
    """A one-line error for a full disk (or quota) while writing ``path``; None
    for any other OSError."""
    full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)) or (
        exc.errno is None and bool(_SHORT_WRITE.search(str(exc)))
    )
    if not full:
        return None
    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free there"
    except OSError:
        free = "free space unknown"
    cause = "disk quota exceeded" if exc.errno == getattr(errno, "EDQUOT", -1) else ""
    return SvmtoolError(
        f"no space left on device while writing {path} ({cause + ', ' if cause else ''}"
        f"{free}); free some space in {folder} or choose another folder"
    )


class PendingFile:
    """A temporary file beside ``path``, created at once (so a folder that cannot
    take the file fails before any work is done), written, and moved into place
    by ``commit()`` only. Leaving the ``with`` block uncommitted removes it.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        folder = self.path.parent if str(self.path.parent) else Path(".")
        if not folder.is_dir():
            raise SvmtoolError(f"cannot write {self.path}: folder {folder} does not exist")
        if self.path.is_dir():
            raise SvmtoolError(f"cannot write {self.path}: it is a folder")
        try:
            # mkstemp creates exclusively (O_EXCL): never through a planted link.
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        except OSError as exc:
            raise SvmtoolError(
                f"cannot write {self.path}: {exc.strerror or exc} in {folder}"
            ) from None
        # Kept open: the temporary is written through this descriptor, never reopened by name.
        self.fd = fd
        self.tmp = Path(tmp)
        self.committed = False
        # Removed when this object goes away uncommitted (or at exit), so a
        # caller needs no try/finally around the work between reserve and commit.
        self._cleanup = weakref.finalize(self, _remove_temporary, fd, self.tmp)

    def write(self, write: Callable[[BinaryIO], None]) -> None:
        """Call ``write(file_object)`` on the temporary file."""
        try:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            with os.fdopen(os.dup(self.fd), "wb") as f:
                write(f)
            if hasattr(os, "fchmod"):
                os.fchmod(self.fd, new_file_mode(self.path))
        except OSError as exc:
            full = disk_error(exc, self.path)
            if full is not None:
                raise full from None
            raise

    def commit(self) -> Path:
        """Move the file into place (replacing a link at ``path``, never writing through it)."""
        try:
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise SvmtoolError(
                f"cannot move {self.tmp} into place as {self.path}: {exc.strerror or exc}"
            ) from None
        self.committed = True
        self._cleanup.detach()
        os.close(self.fd)
        return self.path

    def discard(self) -> None:
        """Remove the temporary file unless it was committed."""
        self._cleanup()

    def __enter__(self) -> PendingFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()


def _remove_temporary(fd: int, tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        tmp.unlink()


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that finishes even when Ctrl-C arrives meanwhile: the
    removal is resumed and the KeyboardInterrupt raised once it is done, so an
    interrupted cleanup never leaves half a scratch folder behind."""
    interrupted: KeyboardInterrupt | None = None
    while True:
        try:
            shutil.rmtree(path, ignore_errors=True)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(file_object)`` on a temporary file moved into
    place at the end: a crash never leaves a half-written ``path``."""
    with PendingFile(path) as pending:
        pending.write(write)
        return pending.commit()
