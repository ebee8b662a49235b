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
per nesting level. It goes over directory descriptors (``openat`` relative
to the parent, ``O_NOFOLLOW``, ``fstat`` compared with the listing), so a
tree rearranged while it is walked is refused, never followed elsewhere.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import sys
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from fruix_core.errors import PromotionInputError
from fruix_core.promotion import seams
from fruix_core.promotion.display import shown
from fruix_core.promotion.safeio import kind_of, open_dir_at, open_regular_at, same_inode

__all__ = [
    "CHUNK_SIZE",
    "MAX_DEPTH",
    "NarHasher",
    "SpecialFileError",
    "TreeChangedError",
    "check_stable",
    "nar_string",
    "PARALLEL_MIN",
    "hash_worker",
    "read_buffer",
    "read_digest",
    "read_chunk",
    "read_regular",
    "tree_signature",
    "walk",
]

#: Bytes read per ``read`` call when streaming file contents.
CHUNK_SIZE = 1 << 20
#: Deepest directory nesting walked (FreeBSD's base stays far below it).
MAX_DEPTH = 256

_FS_ENCODING = sys.getfilesystemencoding()
# The superuser reads every file of a local file system: no access(2) probe needed.
_ROOT = os.geteuid() == 0


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


class _NoHash(NarHasher):
    """Serialises nothing: a metadata-only walk (validation) needs no archive."""

    __slots__ = ()

    def begin_regular(self, executable: bool, size: int) -> None:
        return None

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        return None

    def end_regular(self, size: int) -> None:
        return None

    def symlink(self, target: bytes) -> None:
        return None

    def begin_directory(self) -> None:
        return None

    def begin_entry(self, name: bytes) -> None:
        return None

    def end_entry(self) -> None:
        return None

    def end_directory(self) -> None:
        return None


#: ``on_entry(rel, st, target)``: called once per node before its contents;
#: ``rel`` is the path below the root (``b""`` for the root), ``target`` the
#: symlink target for symlinks, else ``None``.
EntryCallback = Callable[[bytes, os.stat_result, "bytes | None"], None]
#: ``on_regular(fd, rel, st, nar)``: ``fd`` is the file, already open and
#: checked to be the walked inode; the callback must feed exactly
#: ``st.st_size`` bytes of contents to ``nar.update`` (:func:`read_regular`
#: does) and leave ``fd`` open.
RegularCallback = Callable[[int, bytes, os.stat_result, NarHasher], None]


def check_stable(fd: int, path: bytes, st: os.stat_result, total: int) -> None:
    """Fail unless ``fd`` is the walked inode, ``st.st_size`` bytes were read, and
    size and modification time are unchanged.

    :raises TreeChangedError: when the file was replaced, grew, shrank or was modified.
    """
    after = os.fstat(fd)
    if (after.st_ino, after.st_dev) != (st.st_ino, st.st_dev):
        raise TreeChangedError(f"{shown(path)}: replaced while being read")
    if (total != st.st_size or after.st_size != st.st_size
            or after.st_mtime_ns != st.st_mtime_ns):
        raise TreeChangedError(f"{shown(path)}: changed while being read")


#: Buffers at least this large get their two digests computed on two cores.
PARALLEL_MIN = 256 << 10

_worker: ThreadPoolExecutor | None = None
_buffers = threading.local()


def hash_worker() -> ThreadPoolExecutor:
    """The one thread that hashes next to the walk (created on first use).

    ``hashlib`` releases the GIL while it hashes a buffer of more than 2 KiB, so
    a file's own SHA-256 on this thread and the NAR (in order) on the walking
    thread run on two cores.
    """
    global _worker
    if _worker is None:
        _worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fruix-hash")
    return _worker


def read_buffer(index: int = 0) -> memoryview:
    """A reusable :data:`CHUNK_SIZE` buffer of this thread (``index`` 0 or 1).

    Reading into it (``readv``) instead of allocating a fresh ``bytes`` per
    chunk is 2-3 times faster for large files.
    """
    views = getattr(_buffers, "views", None)
    if views is None:
        views = _buffers.views = (memoryview(bytearray(CHUNK_SIZE)),
                                  memoryview(bytearray(CHUNK_SIZE)))
    return views[index]


def read_chunk(fd: int, buffer: memoryview, want: int) -> memoryview:
    """Read up to ``want`` bytes into ``buffer``; the part filled (empty at end of file)."""
    view = buffer[:want]
    n = os.readv(fd, [view])
    return view[:n]


def read_digest(fd: int, rel: bytes, st: os.stat_result, nar: NarHasher) -> str:
    """Stream ``fd`` into ``nar`` like :func:`read_regular`; return the file's SHA-256.

    The file's digest is computed on :func:`hash_worker` while the NAR is fed
    here, chunk by chunk in two alternating buffers.
    """
    if st.st_size < PARALLEL_MIN:
        digest = hashlib.sha256()
        read_regular(fd, rel, st, nar, digest.update)
        return digest.hexdigest()
    digest = hashlib.sha256()
    worker = hash_worker()
    pending: Future[None] | None = None
    total = 0
    turn = 0
    try:
        while total < st.st_size:
            chunk = read_chunk(fd, read_buffer(turn), min(CHUNK_SIZE, st.st_size - total))
            turn ^= 1
            if not chunk:
                break
            if pending is not None:
                pending.result()
            pending = worker.submit(digest.update, chunk)
            nar.update(chunk)
            total += len(chunk)
    finally:
        if pending is not None:
            pending.result()
    check_stable(fd, rel, st, total)
    return digest.hexdigest()


def read_regular(fd: int, rel: bytes, st: os.stat_result, nar: NarHasher,
                 extra: Callable[[memoryview], None] | None = None) -> None:
    """Stream the open regular file ``fd`` into ``nar`` (and ``extra``), checking it is stable.

    After reading, the file must still have the size and modification time it
    had when walked; otherwise :class:`TreeChangedError`.
    """
    total = 0
    buffer = read_buffer()
    while total < st.st_size:
        chunk = read_chunk(fd, buffer, min(CHUNK_SIZE, st.st_size - total))
        if not chunk:
            break
        nar.update(chunk)
        if extra is not None:
            extra(chunk)
        total += len(chunk)
    check_stable(fd, rel, st, total)


class _Walk:
    """One walk: the callbacks and where the tree is (for messages)."""

    __slots__ = ("display", "nar", "on_entry", "reader", "exclude_top", "with_contents")

    def __init__(self, display: bytes, nar: NarHasher, on_entry: EntryCallback | None,
                 reader: RegularCallback, exclude_top: Collection[bytes],
                 with_contents: bool) -> None:
        self.display = display
        self.nar = nar
        self.on_entry = on_entry
        self.reader = reader
        self.exclude_top = exclude_top
        self.with_contents = with_contents

    def show(self, rel: bytes) -> str:
        return shown(self.display + b"/" + rel if rel else self.display)

    def changed(self, rel: bytes, err: OSError) -> TreeChangedError:
        reason = err.strerror or str(err)
        return TreeChangedError(f"{self.show(rel)}: {reason}; the tree changed while it was "
                                "read, refusing it")

    def special(self, rel: bytes, mode: int) -> SpecialFileError:
        return SpecialFileError(f"{self.show(rel)}: is a {kind_of(mode)}; refusing to archive it")

    def directory(self, fd: int, rel: bytes, st: os.stat_result, depth: int) -> None:
        if self.on_entry is not None:
            self.on_entry(rel, st, None)
        nar = self.nar
        nar.begin_directory()
        names = sorted([n.encode(_FS_ENCODING, "surrogateescape") for n in os.listdir(fd)])
        if not rel and self.exclude_top:
            names = [name for name in names if name not in self.exclude_top]
        if names and depth >= MAX_DEPTH:
            raise PromotionInputError(f"{self.show(rel)}: nested deeper than {MAX_DEPTH} levels")
        for name in names:
            nar.begin_entry(name)
            self.child(fd, name, rel + b"/" + name if rel else name, depth + 1)
            nar.end_entry()
        nar.end_directory()

    def child(self, dir_fd: int, name: bytes, rel: bytes, depth: int) -> None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError as err:
            raise self.changed(rel, err) from None
        mode = st.st_mode
        seams.reach("walk.before-open", rel)
        if stat.S_ISDIR(mode):
            try:
                fd, _ = open_dir_at(name, dir_fd, st)
            except OSError as err:
                raise self.changed(rel, err) from None
            try:
                self.directory(fd, rel, st, depth)
            finally:
                os.close(fd)
        elif stat.S_ISREG(mode):
            self.regular(dir_fd, name, rel, st)
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(name, dir_fd=dir_fd)
                again = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError as err:
                raise self.changed(rel, err) from None
            if not same_inode(st, again):
                raise self.changed(rel, OSError(0, "replaced while being read"))
            if self.on_entry is not None:
                self.on_entry(rel, st, target)
            self.nar.symlink(target)
        else:
            raise self.special(rel, mode)

    def regular(self, dir_fd: int, name: bytes, rel: bytes, st: os.stat_result) -> None:
        if self.on_entry is not None:
            self.on_entry(rel, st, None)
        self.nar.begin_regular(bool(st.st_mode & stat.S_IXUSR), st.st_size)
        if not self.with_contents:
            # Metadata-only walks (validation) still refuse a file this process cannot
            # read, so ingestion does not find it only after the store was touched.
            if not _ROOT and not os.access(name, os.R_OK, dir_fd=dir_fd,
                                           follow_symlinks=False):
                raise PromotionInputError(f"{self.show(rel)}: cannot read: Permission denied")
        else:
            try:
                fd, _ = open_regular_at(name, dir_fd, st)
            except OSError as err:
                raise self.changed(rel, err) from None
            try:
                seams.reach("walk.reading", rel)
                self.reader(fd, rel, st, self.nar)
            finally:
                os.close(fd)
        self.nar.end_regular(st.st_size)


def walk(root: bytes | str | os.PathLike[str] | None = None, *, root_fd: int | None = None,
         display: bytes | None = None, on_entry: EntryCallback | None = None,
         on_regular: RegularCallback | None = None, nar: NarHasher | None = None,
         exclude_top: Collection[bytes] = (), with_contents: bool = True) -> NarHasher:
    """Walk a tree in NAR order over directory descriptors, hashing its NAR serialisation.

    Every directory is opened relative to its parent with ``O_NOFOLLOW |
    O_DIRECTORY`` and every file with ``O_NOFOLLOW | O_NONBLOCK``; each open
    descriptor must be the inode that was ``lstat``-ed, so a node swapped for a
    symlink or another tree mid-walk is refused (:class:`TreeChangedError`),
    never followed.

    :param root: the tree (path); never followed if it is a symlink.
    :param root_fd: alternatively, an open directory descriptor (left open).
    :param display: how to name the tree in messages (default: ``root``).
    :param on_entry: observer called for every node (validation, manifest).
    :param on_regular: reads a regular file's contents into the hasher.
    :param exclude_top: names directly under the root left out of the archive
        (a store object's own metadata files).
    :param with_contents: ``False`` to walk metadata only (the hash is then
        meaningless; validation uses it).
    :raises SpecialFileError: on a device node, FIFO or socket.
    :returns: the hasher; ``hexdigest()`` is the tree signature.
    """
    nar = nar or (NarHasher() if with_contents else _NoHash())
    shown_as = display if display is not None else os.fsencode(root if root is not None
                                                               else b"<tree>")
    state = _Walk(shown_as, nar, on_entry, on_regular or read_regular, exclude_top,
                  with_contents)
    try:
        if root_fd is not None:
            state.directory(root_fd, b"", os.fstat(root_fd), 0)
        else:
            assert root is not None
            _root(os.fsencode(root), state)
    finally:
        nar.close()
    return nar


def _root(path: bytes, state: _Walk) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        try:
            fd, _ = open_dir_at(path, None, st)
        except OSError as err:
            raise state.changed(b"", err) from None
        try:
            state.directory(fd, b"", st, 0)
        finally:
            os.close(fd)
    elif stat.S_ISREG(st.st_mode):
        parent, name = os.path.split(path)
        dir_fd = os.open(parent or b".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            state.regular(dir_fd, name, b"", st)
        finally:
            os.close(dir_fd)
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(path)
        if state.on_entry is not None:
            state.on_entry(b"", st, target)
        state.nar.symlink(target)
    else:
        raise state.special(b"", st.st_mode)


def tree_signature(path: str | Path | bytes) -> str:
    """Hex SHA-256 of the NAR serialisation of ``path``.

    Equals ``nix-hash --type sha256 PATH``.

    :raises SpecialFileError: on a device node, FIFO or socket.
    :raises TreeChangedError: when a file changes while it is read.
    """
    return walk(os.fsencode(path)).hexdigest()
