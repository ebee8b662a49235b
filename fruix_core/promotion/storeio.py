"""Low-level store writing: error translation, durability, removal.

Every ``OSError`` met while writing the store becomes a
:class:`~fruix_core.errors.StoreError` whose message names the operation and
the reason (``No space left on device``, ``Permission denied``, ...).

Durability (see ``docs/formats.rst``): before an object is renamed to its
final name, its contents are made durable with one ``syncfs(2)`` of the store
file system where the platform has it (Linux), else by ``fsync(2)`` of every
new file and directory; after the rename the store directory is fsynced.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from fruix_core.errors import StoreError

__all__ = [
    "ENOSPC_SEAM",
    "fsync_dir",
    "fsync_tree",
    "have_syncfs",
    "remove_tree",
    "store_errors",
    "syncfs",
    "write_all",
]

#: Test seam: when this environment variable holds a number N, the N-th call
#: of :func:`write_all` in the process fails with ENOSPC. Used by the test
#: suite where no small file system can be mounted; never set in production.
ENOSPC_SEAM = "FRUIX_TEST_ENOSPC_AFTER_WRITES"
_writes = 0


class store_errors:  # noqa: N801 - used like a function: ``with store_errors(...)``
    """Turn any ``OSError`` raised inside into a :class:`StoreError` about ``what``.

    A plain class rather than a generator context manager: it wraps every
    file written, so it must be cheap.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _tb: object) -> None:
        if error is None or isinstance(error, StoreError) or not isinstance(error, OSError):
            return
        reason = error.strerror or str(error)
        code = errno.errorcode.get(error.errno or 0, "")
        hint = ""
        if error.errno == errno.ENOSPC:
            hint = "; free space on the store's file system and promote again"
        elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = "; the store directory is not writable by this user"
        raise StoreError(f"{self.what}: {reason}{f' ({code})' if code else ''}{hint}") from None


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``."""
    global _writes
    seam = os.environ.get(ENOSPC_SEAM)
    if seam:
        _writes += 1
        if _writes >= int(seam):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


_libc = None


def _syncfs_func() -> Any:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name, use_errno=True) if name else False
    return getattr(_libc, "syncfs", None) if _libc else None


def have_syncfs() -> bool:
    """Whether ``syncfs(2)`` is available (Linux)."""
    return _syncfs_func() is not None


def syncfs(path: Path) -> None:
    """Flush the whole file system holding ``path`` to stable storage."""
    func = _syncfs_func()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if func is None:
            os.fsync(fd)
            return
        if func(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
    finally:
        os.close(fd)


def fsync_dir(path: Path | bytes | str) -> None:
    """fsync a directory (so a rename or a new entry in it is durable)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every regular file and directory under ``path`` (no ``syncfs``)."""
    for top, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(top, name)
            if stat.S_ISREG(os.lstat(full).st_mode):
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(top)


def remove_tree(path: Path) -> None:
    """Remove a (possibly read-only) temporary tree; missing is fine."""
    def make_writable(func: Any, failed: str, _info: Any) -> None:
        parent = os.path.dirname(failed)
        try:
            os.chmod(parent, 0o755)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o755)
            func(failed)
        except FileNotFoundError:
            pass

    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or os.path.islink(path):
        os.unlink(path)
        return
    os.chmod(path, 0o755)
    shutil.rmtree(path, onerror=make_writable)
