"""Opening files and directories without following symlinks or blocking on FIFOs.

Everything the promotion engine reads from a result root or a store goes
through here: a node is ``lstat``-ed first (so a device node is never even
opened), then opened with ``O_NOFOLLOW`` (and ``O_NONBLOCK`` for files, so a
FIFO swapped in at the last moment cannot block), and the open descriptor is
``fstat``-ed and compared with what was seen. Directories are opened relative
to their parent's descriptor, one component at a time, so a component
replaced by a symlink is refused instead of followed.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = [
    "DIR_FLAGS",
    "FILE_FLAGS",
    "UnsafeNodeError",
    "kind_of",
    "open_dir_at",
    "open_regular_at",
    "read_regular",
    "same_inode",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Flags for directories walked: never through a symlink.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
#: Flags for regular files read: never through a symlink, never blocking on a FIFO.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC


class UnsafeNodeError(OSError):
    """A node is not the kind expected (a symlink, FIFO, device, or replaced)."""


def kind_of(mode: int) -> str:
    """A human word for the type in ``mode``."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device node"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def same_inode(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stat results describe the same inode of the same type."""
    return (a.st_ino, a.st_dev, stat.S_IFMT(a.st_mode)) == (
        b.st_ino, b.st_dev, stat.S_IFMT(b.st_mode))


def _refuse(name: str | bytes, message: str) -> UnsafeNodeError:
    return UnsafeNodeError(errno.EINVAL, message, os.fsdecode(name))


def open_dir_at(name: str | bytes, dir_fd: int | None = None,
                seen: os.stat_result | None = None) -> tuple[int, os.stat_result]:
    """Open the directory ``name`` (relative to ``dir_fd``) without following symlinks.

    :param seen: the ``lstat`` this directory had when it was listed; the open
        descriptor must be that inode.
    :raises UnsafeNodeError: when it is a symlink or anything but that directory.
    :raises OSError: when it cannot be opened.
    """
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise _refuse(name, "is not a directory (a symlink or another kind); "
                                "not followed") from None
        raise
    st = os.fstat(fd)
    if seen is not None and not same_inode(st, seen):
        os.close(fd)
        raise _refuse(name, "was replaced while being read")
    return fd, st


def open_regular_at(name: str | bytes, dir_fd: int | None = None,
                    seen: os.stat_result | None = None) -> tuple[int, os.stat_result]:
    """Open the regular file ``name`` for reading; refuse any other kind.

    The node is ``lstat``-ed first unless ``seen`` is given, so devices and
    FIFOs are refused without being opened; the descriptor is then ``fstat``-ed
    and must be the same inode.

    :raises UnsafeNodeError: on a symlink, FIFO, device, socket, directory, or
        a node replaced in between.
    """
    before = seen if seen is not None else os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISREG(before.st_mode):
        raise _refuse(name, f"is a {kind_of(before.st_mode)}, not a regular file")
    try:
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _refuse(name, "was replaced by a symlink; not followed") from None
        raise
    st = os.fstat(fd)
    if not same_inode(st, before):
        os.close(fd)
        raise _refuse(name, "was replaced while being opened")
    return fd, st


def read_regular(name: str | bytes | os.PathLike[str], *, dir_fd: int | None = None,
                 limit: int = 1 << 20) -> bytes:
    """The contents of a regular file (at most ``limit + 1`` bytes).

    :raises UnsafeNodeError: when it is not a regular file.
    :raises OSError: when it cannot be read.
    """
    fd, _st = open_regular_at(os.fspath(name), dir_fd)
    try:
        parts = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)
