"""Nix archive (NAR) serialisation, streamed into SHA-256: the tree signature.

The NAR of a file system object is a sequence of *strings*; each string is its
length as an unsigned 64-bit little-endian integer, its bytes, then zero bytes
up to a multiple of 8. The archive is ``"nix-archive-1"`` followed by the
node of the root::

    node      = "(" "type" TYPE ... ")"
    regular   = "(" "type" "regular" ["executable" ""] "contents" CONTENTS ")"
    symlink   = "(" "type" "symlink" "target" TARGET ")"
    directory = "(" "type" "directory" ENTRY* ")"
    ENTRY     = "entry" "(" "name" NAME "node" node ")"

Entries are sorted by the bytes of their names; a regular file is executable
when its owner-execute bit is set; symlink targets are raw bytes, never
followed. Nothing else (times, owners, other mode bits) is recorded. The
hex SHA-256 of that byte stream is what ``nix-hash --type sha256 PATH``
prints, so any artifact can be checked with an independent tool.

The walk never loads a whole file or directory listing tree into memory:
files are read in fixed-size chunks and only one directory's names are held
per nesting level.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from collections.abc import Callable, Collection
from pathlib import Path

from fruix_core.errors import PromotionInputError

__all__ = [
    "CHUNK_SIZE",
    "MAX_DEPTH",
    "NarHasher",
    "SpecialFileError",
    "TreeChangedError",
    "check_stable",
    "nar_string",
    "open_stable",
    "read_regular",
    "tree_signature",
    "walk",
]

#: Bytes read per ``read`` call when streaming file contents.
CHUNK_SIZE = 1 << 20
#: Deepest directory nesting walked (FreeBSD's base stays far below it).
MAX_DEPTH = 256


class SpecialFileError(PromotionInputError):
    """A device node, FIFO or socket sits in a tree to be archived."""


class TreeChangedError(PromotionInputError):
    """A file changed (size, time or identity) while it was being read."""


def nar_string(data: bytes) -> bytes:
    """One NAR string: 8-byte little-endian length, the bytes, zero padding to 8."""
    pad = -len(data) % 8
    return struct.pack("<Q", len(data)) + data + b"\0" * pad


_S = nar_string
_MAGIC = _S(b"nix-archive-1")
_OPEN, _CLOSE = _S(b"("), _S(b")")
_REGULAR = _OPEN + _S(b"type") + _S(b"regular")
_EXECUTABLE = _S(b"executable") + _S(b"")
_CONTENTS = _S(b"contents")
_SYMLINK = _OPEN + _S(b"type") + _S(b"symlink") + _S(b"target")
_DIRECTORY = _OPEN + _S(b"type") + _S(b"directory")
_ENTRY = _S(b"entry") + _OPEN + _S(b"name")
_NODE = _S(b"node")


class NarHasher:
    """Streams NAR tokens into a SHA-256 and counts the archive size."""

    __slots__ = ("_hash", "size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256(_MAGIC)
        self.size = len(_MAGIC)

    def _put(self, data: bytes) -> None:
        self._hash.update(data)
        self.size += len(data)

    def begin_regular(self, executable: bool, size: int) -> None:
        """Start a regular file of ``size`` bytes; then :meth:`update`, :meth:`end_regular`."""
        self._put(_REGULAR + (_EXECUTABLE if executable else b"") + _CONTENTS
                  + struct.pack("<Q", size))

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Feed file contents (exactly the announced size in total)."""
        self._hash.update(chunk)
        self.size += len(chunk)

    def end_regular(self, size: int) -> None:
        self._put(b"\0" * (-size % 8) + _CLOSE)

    def symlink(self, target: bytes) -> None:
        self._put(_SYMLINK + _S(target) + _CLOSE)

    def begin_directory(self) -> None:
        self._put(_DIRECTORY)

    def begin_entry(self, name: bytes) -> None:
        self._put(_ENTRY + _S(name) + _NODE)

    def end_entry(self) -> None:
        self._put(_CLOSE)

    def end_directory(self) -> None:
        self._put(_CLOSE)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        """Finish; a hasher that hashes elsewhere would wait for it here."""


#: ``on_entry(rel, st, target)``: called once per node before its contents;
#: ``rel`` is the path below the root (``b""`` for the root), ``target`` the
#: symlink target for symlinks, else ``None``.
EntryCallback = Callable[[bytes, os.stat_result, "bytes | None"], None]
#: ``on_regular(path, rel, st, nar)``: must feed exactly ``st.st_size`` bytes
#: of contents to ``nar.update``; :func:`read_regular` is the default.
RegularCallback = Callable[[bytes, bytes, os.stat_result, NarHasher], None]


def open_stable(path: bytes, st: os.stat_result) -> int:
    """Open ``path`` read-only, never following a symlink nor blocking on a FIFO.

    Whether it is still the walked inode is checked by :func:`check_stable`.

    :raises TreeChangedError: when it cannot be opened.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags)
    except OSError as err:
        raise TreeChangedError(f"{os.fsdecode(path)}: cannot open: {err.strerror}") from None


def check_stable(fd: int, path: bytes, st: os.stat_result, total: int) -> None:
    """Fail unless ``fd`` is the walked inode, ``st.st_size`` bytes were read, and
    size and modification time are unchanged.

    :raises TreeChangedError: when the file was replaced, grew, shrank or was modified.
    """
    after = os.fstat(fd)
    if (after.st_ino, after.st_dev) != (st.st_ino, st.st_dev):
        raise TreeChangedError(f"{os.fsdecode(path)}: replaced while being read")
    if (total != st.st_size or after.st_size != st.st_size
            or after.st_mtime_ns != st.st_mtime_ns):
        raise TreeChangedError(f"{os.fsdecode(path)}: changed while being read")


def read_regular(path: bytes, rel: bytes, st: os.stat_result, nar: NarHasher,
                 extra: Callable[[bytes], None] | None = None) -> None:
    """Stream one regular file into ``nar`` (and ``extra``), checking it is stable.

    The file is opened without following symlinks, must be the inode that was
    walked, and must have the same size and modification time after it was
    read; otherwise :class:`TreeChangedError`.
    """
    fd = open_stable(path, st)
    try:
        total = 0
        while total < st.st_size:
            chunk = os.read(fd, min(CHUNK_SIZE, st.st_size - total))
            if not chunk:
                break
            nar.update(chunk)
            if extra is not None:
                extra(chunk)
            total += len(chunk)
        check_stable(fd, path, st, total)
    finally:
        os.close(fd)


def walk(root: bytes, *, on_entry: EntryCallback | None = None,
         on_regular: RegularCallback | None = None, nar: NarHasher | None = None,
         exclude_top: Collection[bytes] = ()) -> NarHasher:
    """Walk ``root`` in NAR order, hashing its NAR serialisation.

    :param root: the tree (bytes path); never followed if it is a symlink.
    :param on_entry: observer called for every node (validation, manifest).
    :param on_regular: reads a regular file's contents into the hasher.
    :param exclude_top: names directly under ``root`` left out of the archive
        (a store object's own metadata files).
    :raises SpecialFileError: on a device node, FIFO or socket.
    :returns: the hasher; ``hexdigest()`` is the tree signature.
    """
    nar = nar or NarHasher()
    reader = on_regular or read_regular
    try:
        _node(root, b"", nar, on_entry, reader, exclude_top, 0)
    finally:
        nar.close()
    return nar


def _node(path: bytes, rel: bytes, nar: NarHasher, on_entry: EntryCallback | None,
          reader: RegularCallback, exclude_top: Collection[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PromotionInputError(f"{os.fsdecode(path)}: nested deeper than {MAX_DEPTH} levels")
    st = os.lstat(path)
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if on_entry is not None:
            on_entry(rel, st, None)
        nar.begin_regular(bool(mode & stat.S_IXUSR), st.st_size)
        reader(path, rel, st, nar)
        nar.end_regular(st.st_size)
    elif stat.S_ISLNK(mode):
        target = os.readlink(path)
        if on_entry is not None:
            on_entry(rel, st, target)
        nar.symlink(target)
    elif stat.S_ISDIR(mode):
        if on_entry is not None:
            on_entry(rel, st, None)
        nar.begin_directory()
        names = sorted(os.listdir(path))
        if not rel and exclude_top:
            names = [name for name in names if name not in exclude_top]
        for name in names:
            nar.begin_entry(name)
            child_rel = rel + b"/" + name if rel else name
            _node(path + b"/" + name, child_rel, nar, on_entry, reader, exclude_top, depth + 1)
            nar.end_entry()
        nar.end_directory()
    else:
        kind = ("device node" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode)
                else "special file")
        raise SpecialFileError(f"{os.fsdecode(path)}: is a {kind}; refusing to archive it")


def tree_signature(path: str | Path | bytes) -> str:
    """Hex SHA-256 of the NAR serialisation of ``path``.

    Equals ``nix-hash --type sha256 PATH``.

    :raises SpecialFileError: on a device node, FIFO or socket.
    :raises TreeChangedError: when a file changes while it is read.
    """
    return walk(os.fsencode(path)).hexdigest()
