"""Move a tree out of a guest as one tar stream, and extract it safely on the host.

The guest runs ``tar -C DIR -cf - .`` (``tar --zstd ...`` when compressed;
FreeBSD's tar is bsdtar) on an exec channel: one stream, no per-file round
trips as with SFTP. Its stderr stays on the channel's stderr, never inside
the stream. The host parses the stream as it arrives and writes each member
itself — never with :meth:`tarfile.TarFile.extract`, whose extraction
filters would also clear the setuid/setgid bits a FreeBSD world needs —
under these rules:

* names are relative and normalised: absolute names, ``..`` components and
  NUL bytes are refused;
* only regular files, directories, symlinks and hard links are accepted;
  device nodes, FIFOs and anything else are refused;
* symlink targets are stored as they are and never followed: no member may
  be written through a symlink (or a file) that an earlier member created,
  files are created with ``O_EXCL | O_NOFOLLOW``;
* a hard link may only point at a regular file extracted earlier in the
  same stream;
* a member may not appear twice (except a directory).

Everything lands in a temporary directory next to the destination
(``.<name>.partial-*``), which is renamed into place only after the stream
ended properly (end-of-archive marker seen, complete zstd frame, remote
``tar`` exited 0) and the tree passed verification
(:func:`verify_result_root`: the key-file digests in ``promotion.scm`` and
``metadata``). An interrupted or refused transfer removes the temporary
directory, so it never leaves a tree that looks complete. Progress is shown
in bytes on a terminal.

Speed (docs/benchmarks.md): a receive thread (:class:`_ChannelPump`) takes
the stream from paramiko in 4 MiB blocks and decompresses it, so receiving
overlaps parsing and writing; tar headers are decoded in one ``struct`` call
(:class:`_HeaderInfo`); a file costs ``open``, ``write``, ``futimens`` and
``close`` (plus ``fchmod`` only when the umask would spoil its mode).
Optional writer threads (:class:`_FileWriters`) can create small files in
parallel with parsing.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shlex
import shutil
import struct
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

import structlog

from fruix_core.errors import (
    ConnectionLostError,
    PromotionInputError,
    TransportError,
)

if TYPE_CHECKING:
    import paramiko

    from fruix_core.transport.ssh import SSHSession

__all__ = [
    "TransferStats",
    "UnsafeArchiveError",
    "extract_stream",
    "fetch_tree",
    "install_tree",
    "tar_command",
    "verify_result_root",
]

log = structlog.get_logger(__name__)

CHUNK = 1 << 20
#: Largest block taken from the channel at once: small enough to be served from
#: reused heap memory, large enough to keep paramiko's buffer nearly empty.
DRAIN = 4 << 20
#: Threads creating small files while the stream is parsed (see :class:`_FileWriters`).
#: Off by default: on the 2-core benchmark machine they added kernel time (GIL
#: hand-offs around every system call) and no speed.
WRITERS = 0
#: Files up to this size are read whole and handed to a writer thread.
SMALL_FILE = 1 << 20
#: Received blocks queued ahead of the parser at most (the read-ahead: 8 × DRAIN).
PUMP_QUEUE = 8
#: Values of the ``compression`` setting.
COMPRESSIONS = ("none", "zstd")
#: Files queued for the writers at most (bounds memory to WRITER_QUEUE × SMALL_FILE).
WRITER_QUEUE = 64


def _read_umask() -> int | None:
    """The process umask without changing it (Linux ``/proc``); ``None`` when unknown."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None

_ZERO_BLOCK = bytes(tarfile.BLOCKSIZE)


class UnsafeArchiveError(PromotionInputError):
    """A tar stream tried to write outside its destination or held a refused member."""


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What one transfer moved."""

    bytes: int
    members: int
    seconds: float
    #: Bytes that crossed the channel (less than ``bytes`` when compressed).
    received: int = 0

    @property
    def rate(self) -> float:
        """Bytes per second."""
        return self.bytes / self.seconds if self.seconds > 0 else float(self.bytes)


class _Progress:
    """``imported 12.3 MiB (45.6 MiB/s)`` on stderr, when it is a terminal."""

    def __init__(self, label: str, enabled: bool | None) -> None:
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.started = time.monotonic()
        self.shown = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.shown < 0.25:
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-6)
        sys.stderr.write(f"\r{self.label}: {done / 1048576:.1f} MiB "
                         f"({rate / 1048576:.1f} MiB/s)" + ("\n" if final else ""))
        sys.stderr.flush()


class _ForwardReader:
    """A forward-only, seekable-looking file object over a byte source.

    ``tarfile``'s stream mode copies its whole read-ahead buffer on every
    small read; its normal mode only ever seeks forward (plus one byte back),
    so this reader offers ``seek``/``tell`` over a buffer that keeps
    :data:`HISTORY` bytes behind the current position. It also counts the
    bytes received, for progress.
    """

    HISTORY = 1 << 16

    def __init__(self, read: Callable[[int], bytes],
                 on_progress: Callable[[int], None] | None = None) -> None:
        self._source = read
        self._on_progress = on_progress
        self._buf = bytearray()
        self._base = 0   # absolute offset of _buf[0]
        self._pos = 0    # index of the current position in _buf
        self._eof = False
        self.count = 0

    def _fill(self, want: int) -> None:
        """Make ``want`` bytes available after the position, unless the source ends."""
        while len(self._buf) - self._pos < want and not self._eof:
            data = self._source(max(CHUNK, want))
            if not data:
                self._eof = True
                break
            if self._pos > self.HISTORY + CHUNK:
                drop = self._pos - self.HISTORY
                del self._buf[:drop]
                self._base += drop
                self._pos -= drop
            self._buf += data
            self.count += len(data)
            if self._on_progress is not None:
                self._on_progress(self.count)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            chunks: list[bytes] = []
            while True:
                data = self.read(CHUNK)
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
        self._fill(size)
        with memoryview(self._buf) as view:
            out = bytes(view[self._pos:self._pos + size])
        self._pos += len(out)
        return out

    def tell(self) -> int:
        return self._base + self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self.tell()
        elif whence != 0:
            raise OSError("forward reader: only absolute and relative seeks")
        if offset < self._base:
            raise OSError("forward reader: cannot seek that far back")
        ahead = offset - self._base - len(self._buf)
        while ahead > 0 and not self._eof:
            self._pos = len(self._buf)
            self._fill(min(ahead, CHUNK))
            ahead = offset - self._base - len(self._buf)
        self._pos = min(offset - self._base, len(self._buf))
        return self.tell()

    def drain(self) -> None:
        """Read the source to its end (the rest of the last tar record)."""
        while not self._eof:
            self._pos = len(self._buf)
            self._fill(CHUNK)


_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s12x")


def _octal(field: bytes) -> int:
    """An octal number field as tarfile reads it (up to the first NUL, blanks ignored)."""
    if field[0] & 0x80:
        raise ValueError("base-256 number")  # rare: tarfile's decoder handles it
    cut = field.find(b"\0")
    digits = (field if cut < 0 else field[:cut]).strip()
    return int(digits, 8) if digits else 0


class _HeaderInfo(tarfile.TarInfo):
    """A :class:`tarfile.TarInfo` whose header block is decoded in one ``struct`` call.

    tarfile decodes each of the 15 fields with its own function calls, which
    made header decoding the largest Python cost of an import (25,000+ members).
    Same checks (checksum, V7 directories, ustar prefix); anything unusual
    (base-256 numbers, old GNU sparse headers, undecodable fields) is left to
    tarfile's own decoder, and pax / GNU long-name records are processed by
    tarfile as always.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) != tarfile.BLOCKSIZE or buf[156:157] == tarfile.GNUTYPE_SPARSE:
            return super().frombuf(buf, encoding, errors)
        try:
            (name, mode, uid, gid, size, mtime, chksum, kind, linkname, uname, gname,
             devmajor, devminor, prefix) = _HEADER.unpack(buf)
            checksum = _octal(chksum)
            numbers = [_octal(f) for f in (mode, uid, gid, size, mtime, devmajor, devminor)]
        except ValueError:
            return super().frombuf(buf, encoding, errors)
        if not buf.strip(b"\0"):
            raise tarfile.EOFHeaderError("end of file header")  # type: ignore[attr-defined]
        unsigned = sum(buf) - sum(chksum) + 256
        if checksum != unsigned and \
                checksum not in tarfile.calc_chksums(buf):  # type: ignore[attr-defined]
            raise tarfile.InvalidHeaderError("bad checksum")  # type: ignore[attr-defined]
        obj = cls()
        obj.name = name.split(b"\0", 1)[0].decode(encoding, errors)
        obj.mode, obj.uid, obj.gid, obj.size, obj.mtime, obj.devmajor, obj.devminor = numbers
        obj.chksum = checksum
        obj.type = kind
        obj.linkname = linkname.split(b"\0", 1)[0].decode(encoding, errors)
        obj.uname = uname.split(b"\0", 1)[0].decode(encoding, errors)
        obj.gname = gname.split(b"\0", 1)[0].decode(encoding, errors)
        if kind == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE  # old V7 tar: a directory is a file named "x/"
        if obj.type == tarfile.DIRTYPE:
            obj.name = obj.name.rstrip("/")
        text = prefix.split(b"\0", 1)[0]
        if text and kind not in tarfile.GNU_TYPES:
            obj.name = text.decode(encoding, errors) + "/" + obj.name
        return obj


def _member_path(name: str) -> str:
    """The normalised relative path of a member, or ``""`` for the root itself."""
    if "\0" in name:
        raise UnsafeArchiveError(f"archive member name holds a NUL byte: {name[:60]!r}")
    if name.startswith("/"):
        raise UnsafeArchiveError(f"archive member has an absolute name: {name[:200]!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member escapes the tree: {name[:200]!r}")
    return "/".join(parts)


class _FileWriters:
    """Threads that create small regular files while the stream is parsed.

    Creating a file is kernel work (``open`` with ``O_CREAT`` costs far more than
    parsing its header) and releases the GIL; handing it to threads lets header
    parsing, receiving and file creation overlap, as ``ssh | tar -x`` overlaps
    its two processes. Jobs only ever create *new* files (``O_EXCL |
    O_NOFOLLOW``) in directories the extractor already made, and every safety
    decision was taken before a job is queued. The first error is kept and
    raised by :meth:`check` / :meth:`close`; later jobs are dropped.
    """

    def __init__(self, count: int, flags: int) -> None:
        self.flags = flags
        self.error: BaseException | None = None
        self.jobs: queue.Queue[tuple[str, bytes, int, int | None, float] | None] = \
            queue.Queue(maxsize=WRITER_QUEUE)
        self.threads = [threading.Thread(target=self._work, name=f"fruix-extract-{i}",
                                         daemon=True) for i in range(count)]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        jobs = self.jobs
        while True:
            job = jobs.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    _create_file(*job, flags=self.flags)
            except BaseException as exc:  # noqa: BLE001 - handed to the parsing thread
                if self.error is None:
                    self.error = exc
            finally:
                jobs.task_done()

    def put(self, target: str, data: bytes, mode: int, fix_mode: int | None,
            mtime: float) -> None:
        self.check()
        self.jobs.put((target, data, mode, fix_mode, mtime))

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def flush(self) -> None:
        """Wait until every queued file exists (before a hard link to one of them)."""
        self.jobs.join()
        self.check()

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join()
        self.check()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _create_file(target: str, data: bytes, mode: int, fix_mode: int | None, mtime: float,
                 *, flags: int) -> None:
    """Create ``target`` holding ``data``: open, write, set times, close."""
    fd = os.open(target, flags, mode)
    try:
        if data:
            _write_all(fd, data)
        if fix_mode is not None:
            os.fchmod(fd, fix_mode)
        os.utime(fd, (mtime, mtime))
    finally:
        os.close(fd)


class _Extractor:
    """Checks members and writes them under ``root``, tracking what each path is.

    Every safety decision is made from what earlier members were (kept in
    memory: the destination is a fresh directory only we write), never by
    looking at the file system, which a member could have changed.
    """

    FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_CLOEXEC", 0)

    def __init__(self, root: Path, reader: _ForwardReader, *, writers: int = 0) -> None:
        self.root = root
        self.prefix = os.fspath(root) + "/"
        self.reader = reader
        self.umask = _read_umask()
        self.kinds: dict[str, str] = {"": "dir"}   # path → dir | file | symlink
        self.dir_modes: dict[str, tuple[int, float]] = {}
        self.members = 0
        self.writers = _FileWriters(writers, self.FLAGS) if writers > 0 else None
        self.queued = False  # files handed to the writers since the last flush

    def _parent_ready(self, rel: str) -> None:
        """Create missing parents; refuse to go through anything but our directories."""
        cut = rel.rfind("/")
        if cut < 0 or self.kinds.get(rel[:cut]) == "dir":
            return
        parts = rel.split("/")[:-1]
        for i in range(len(parts)):
            prefix = "/".join(parts[: i + 1])
            kind = self.kinds.get(prefix)
            if kind is None:
                os.mkdir(self.prefix + prefix, 0o700)
                self.kinds[prefix] = "dir"
            elif kind != "dir":
                raise UnsafeArchiveError(
                    f"archive member {rel!r} would be written through a {kind} ({prefix!r})")

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = _member_path(member.name)
        self.members += 1
        if member.isdir():
            if rel and self.kinds.get(rel) not in (None, "dir"):
                raise UnsafeArchiveError(f"archive member {rel!r} appears twice")
            if rel and rel not in self.kinds:
                self._parent_ready(rel)
                os.mkdir(self.prefix + rel, 0o700)
                self.kinds[rel] = "dir"
            self.dir_modes[rel] = (member.mode & 0o7777, float(member.mtime))
            return
        if not rel:
            raise UnsafeArchiveError("archive member replaces the tree's root")
        if rel in self.kinds:
            raise UnsafeArchiveError(f"archive member {rel!r} appears twice")
        self._parent_ready(rel)
        target = self.prefix + rel
        if member.isreg():
            self._write_file(tar, member, target)
            self.kinds[rel] = "file"
        elif member.issym():
            if "\0" in member.linkname:
                raise UnsafeArchiveError(f"symlink {rel!r} target holds a NUL byte")
            os.symlink(member.linkname, target)  # opaque bytes, never followed
            self.kinds[rel] = "symlink"
        elif member.islnk():
            source = _member_path(member.linkname)
            if self.kinds.get(source) != "file":
                raise UnsafeArchiveError(
                    f"hard link {rel!r} points at {member.linkname[:200]!r}, "
                    "which is not a regular file of this archive")
            if self.writers is not None and self.queued:
                self.writers.flush()  # the link's source may still be in the queue
                self.queued = False
            os.link(self.prefix + source, target, follow_symlinks=False)
            self.kinds[rel] = "file"
        else:
            what = {tarfile.CHRTYPE: "character device", tarfile.BLKTYPE: "block device",
                    tarfile.FIFOTYPE: "FIFO"}.get(member.type, f"type {member.type!r}")
            raise UnsafeArchiveError(f"archive member {rel!r} is a {what}; refused")

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        mode = member.mode & 0o7777
        # Create with the final mode when the umask leaves it intact (one syscall less
        # per file); the creating descriptor may write even to a read-only mode.
        exact = mode <= 0o777 and self.umask is not None and not mode & self.umask
        create_mode, fix_mode = (mode, None) if exact else (0o600, mode)
        if member.issparse():
            source: Any = tar.extractfile(member)  # tarfile maps the holes
            read = source.read
        else:
            # Plain members: read straight from the stream (no per-member file object).
            self.reader.seek(member.offset_data)
            read = self.reader.read
            if self.writers is not None and member.size <= SMALL_FILE:
                data = read(member.size)
                if len(data) != member.size:
                    raise TransportError(
                        f"tar stream is truncated inside {member.name[:200]!r}")
                self.writers.put(target, data, create_mode, fix_mode, float(member.mtime))
                self.queued = True
                return
        fd = os.open(target, self.FLAGS, create_mode)
        try:
            remaining = member.size
            while remaining > 0:
                data = read(min(CHUNK, remaining))
                if not data:
                    raise TransportError(
                        f"tar stream is truncated inside {member.name[:200]!r}")
                _write_all(fd, data)
                remaining -= len(data)
            if fix_mode is not None:
                os.fchmod(fd, fix_mode)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)

    def close_writers(self) -> None:
        """Wait for every queued file (raising the first error a writer met)."""
        if self.writers is not None:
            writers, self.writers = self.writers, None
            writers.close()

    def finish(self) -> None:
        """Apply directory modes and times, deepest first (read-only dirs last)."""
        self.close_writers()
        for rel in sorted(self.dir_modes, key=lambda r: r.count("/") + bool(r), reverse=True):
            mode, mtime = self.dir_modes[rel]
            path = self.prefix + rel if rel else os.fspath(self.root)
            os.chmod(path, (mode | 0o700) if rel == "" else mode)
            os.utime(path, (mtime, mtime))


def extract_stream(stream: IO[bytes] | _ForwardReader, root: Path, *,
                   writers: int | None = None) -> int:
    """Extract a tar stream into the existing, empty directory ``root``.

    :param writers: threads creating small files (default :data:`WRITERS`; 0 =
        everything in the calling thread).
    :returns: the number of members.
    :raises UnsafeArchiveError: a member broke the rules (module docstring).
    :raises TransportError: the stream is truncated or not a tar archive.
    """
    reader = stream if isinstance(stream, _ForwardReader) else _ForwardReader(stream.read)
    extractor = _Extractor(root, reader, writers=WRITERS if writers is None else writers)
    try:
        try:
            with tarfile.open(fileobj=reader, mode="r:",  # type: ignore[call-overload]
                              tarinfo=_HeaderInfo) as tar:
                member = tar.next()
                while member is not None:
                    extractor.add(tar, member)
                    tar.members.clear()  # sequential: keep memory flat on huge trees
                    member = tar.next()
                end = tar.offset
        except tarfile.ReadError as exc:
            raise TransportError(f"tar stream is truncated or corrupt ({exc})") from None
        except tarfile.HeaderError as exc:
            raise TransportError(f"tar stream is corrupt ({exc})") from None
        # tarfile stops quietly at end of input on a member boundary: insist on the marker.
        try:
            reader.seek(end)
            marker = reader.read(tarfile.BLOCKSIZE)
        except OSError:
            marker = b""
        if marker != _ZERO_BLOCK:
            raise TransportError("tar stream is truncated (no end-of-archive marker)")
        extractor.finish()
    finally:
        try:
            extractor.close_writers()  # never leave threads writing into a tree being removed
        except BaseException:  # noqa: BLE001 - the error that stopped parsing matters more
            pass
    return extractor.members


# -- verification ------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_digest(root: Path, rel: str, expected: str, what: str) -> None:
    path = root / rel
    if path.is_symlink() or not path.is_file():
        raise PromotionInputError(f"imported result root: {rel} is missing ({what})")
    actual = _sha256(path)
    if actual != expected:
        raise PromotionInputError(
            f"imported result root: {rel} has sha256 {actual}, {what} says {expected}")


def verify_result_root(root: Path) -> None:
    """Check an imported result root against its own descriptions.

    Every artifact of ``promotion.scm`` must exist and each key file must have
    the recorded sha256; the ``sha256_<kind>_<file>`` lines of ``metadata``
    must agree too.

    :raises PromotionInputError: (or :class:`~fruix_core.errors.MetadataError`)
        naming the file that does not match.
    """
    promotion_file = root / "promotion.scm"
    if not promotion_file.is_file():
        raise PromotionInputError(f"imported result root {root}: promotion.scm is missing")
    from fruix_core.promotion.schema import read_promotion

    promotion = read_promotion(promotion_file)
    for entry in promotion.artifacts:
        rel_dir = _member_path(entry.path)
        if not (root / rel_dir).is_dir() or (root / rel_dir).is_symlink():
            raise PromotionInputError(
                f"imported result root: artifact {entry.kind} ({entry.path}) is missing")
        for rel, digest in entry.files:
            _check_digest(root, f"{rel_dir}/{_member_path(rel)}", digest, "promotion.scm")
    metadata = root / "metadata"
    if metadata.is_file():
        known = {f"sha256_{e.kind}_{_member_path(rel).replace('/', '_')}":
                 (f"{_member_path(e.path)}/{_member_path(rel)}", digest)
                 for e in promotion.artifacts for rel, digest in e.files}
        for line in metadata.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key in known and value != known[key][1]:
                raise PromotionInputError(
                    f"imported result root: metadata {key}={value} disagrees with "
                    f"promotion.scm ({known[key][1]})")


# -- transfer ------------------------------------------------------------------------------


def _remove_tree(path: Path) -> None:
    """Remove a tree we wrote, read-only directories included (never follows symlinks)."""
    if not path.exists() or path.is_symlink():
        return
    for dirpath, dirnames, _files in os.walk(path):
        for name in dirnames:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                os.chmod(full, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def install_tree(partial: Path, dest: Path) -> None:
    """Rename the finished ``partial`` tree to ``dest``, replacing what was there."""
    old: Path | None = None
    if dest.exists() or dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
    os.rename(partial, dest)
    if old is not None:
        _remove_tree(old)


class _ZstdDecoder:
    """Decompresses a zstd stream chunk by chunk (frames may follow one another)."""

    def __init__(self) -> None:
        import zstandard

        self.error: type[Exception] = zstandard.ZstdError
        self.context = zstandard.ZstdDecompressor()
        self.frame = self.context.decompressobj()
        self.inside = False  # a frame has begun and not ended

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        try:
            while data:
                if not self.inside:
                    # libarchive (FreeBSD's tar) pads compressed output written to a
                    # pipe with zeros up to its 10240-byte block; no frame starts with 0.
                    data = data.lstrip(b"\0")
                    if not data:
                        break
                out.append(self.frame.decompress(data))
                self.inside = not self.frame.eof
                if self.inside:
                    break
                data = self.frame.unused_data
                self.frame = self.context.decompressobj()
        except self.error as exc:
            raise TransportError(f"zstd stream is corrupt ({exc})") from None
        return b"".join(out)

    def finish(self) -> None:
        if self.inside:
            raise TransportError("tar stream is truncated (the zstd frame is incomplete)")


class _ChannelPump:
    """Receives the stream on its own thread, ahead of extraction.

    paramiko's transport thread decrypts into the channel's window; this
    thread takes what arrived in large blocks, decompresses it when asked,
    and queues it for the parsing thread, so receiving, decompressing and
    writing overlap (socket reads, decryption, zstd and file I/O release the
    GIL). Channel stderr is kept apart (bounded) for the error message.
    """

    def __init__(self, session: SSHSession, channel: paramiko.Channel,
                 decoder: _ZstdDecoder | None) -> None:
        self.session = session
        self.channel = channel
        self.decoder = decoder
        self.stderr = b""
        self.received = 0
        self.eof = False
        self.stopped = threading.Event()
        self.chunks: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=PUMP_QUEUE)
        self.thread = threading.Thread(target=self._run, name="fruix-import-pump", daemon=True)
        self.thread.start()

    def _receive(self, last_traffic: float) -> tuple[bytes, float]:
        channel = self.channel
        while not self.stopped.is_set():
            if channel.recv_stderr_ready():
                self.stderr = (self.stderr + channel.recv_stderr(65536))[-4096:]
            try:
                # Large reads: paramiko's buffer drops what was read by copying the
                # rest, so small reads of a full window would cost quadratic time.
                data = channel.recv(DRAIN)
            except TimeoutError:
                if not self.session.active:
                    raise ConnectionLostError(
                        f"{self.session.where}: connection lost during transfer") from None
                last_traffic = self.session.check_alive(last_traffic)
                continue
            return data, time.monotonic()
        return b"", last_traffic

    def _run(self) -> None:
        last_traffic = time.monotonic()
        try:
            while not self.stopped.is_set():
                data, last_traffic = self._receive(last_traffic)
                if not data:
                    if self.decoder is not None:
                        self.decoder.finish()
                    self._put(b"")
                    return
                self.received += len(data)
                if self.decoder is not None:
                    data = self.decoder.feed(data)
                    if not data:
                        continue
                self._put(data)
        except BaseException as exc:  # noqa: BLE001 - raised again in the parsing thread
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self.stopped.is_set():
            try:
                self.chunks.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def read(self, size: int) -> bytes:
        """The next block of the (decompressed) stream; ``b""`` at its end."""
        if self.eof:
            return b""
        item = self.chunks.get()
        if isinstance(item, BaseException):
            self.eof = True
            raise item
        if not item:
            self.eof = True
        return item

    def final_stderr(self) -> bytes:
        """The stderr kept so far plus what is left once the command has exited."""
        self.thread.join(timeout=5.0)
        while self.channel.recv_stderr_ready():
            self.stderr = (self.stderr + self.channel.recv_stderr(65536))[-4096:]
        return self.stderr

    def stop(self) -> None:
        """End the thread (the channel is closed by the caller)."""
        self.stopped.set()
        while True:
            try:
                self.chunks.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=5.0)


def tar_command(remote_dir: str, compression: str = "none") -> str:
    """The guest's command writing ``remote_dir`` as a tar stream on stdout.

    POSIX sh and FreeBSD's base ``tar`` (bsdtar, which has ``--zstd``); stderr
    stays on the channel's stderr, apart from the stream.
    """
    flag = "--zstd " if compression == "zstd" else ""
    return f"tar {flag}-C {shlex.quote(remote_dir)} -cf - ."


def _compression(session: SSHSession, compression: str | None) -> str:
    value = compression
    if value is None:
        details = getattr(session.guest, "details", None) or {}
        value = str(details.get("compression", "none"))
    if value not in COMPRESSIONS:
        raise TransportError(f"unknown compression {value!r} (use one of: "
                             f"{', '.join(COMPRESSIONS)})")
    return value


def fetch_tree(session: SSHSession, remote_dir: str, dest: Path, *,
               verify: Callable[[Path], None] | None = None, progress: bool | None = None,
               command: str | None = None, compression: str | None = None,
               writers: int | None = None) -> TransferStats:
    """Copy the guest's ``remote_dir`` to the host's ``dest`` through one tar stream.

    :param verify: called on the complete temporary tree before it is renamed
        to ``dest`` (e.g. :func:`verify_result_root`); raising refuses it.
    :param progress: show progress on stderr (default: when it is a terminal).
    :param command: the remote command producing the stream (default
        :func:`tar_command`); tests feed crafted streams with it.
    :param compression: ``"none"`` or ``"zstd"`` (the guest runs ``tar --zstd``,
        the host decompresses while extracting); default: the guest's
        ``compression`` setting (``Guest.details``), else ``"none"``.
    :param writers: threads creating small files (default :data:`WRITERS`).
    :raises UnsafeArchiveError: the stream held a refused member.
    :raises TransportError: the remote tar failed or the stream is truncated.
    :raises ConnectionLostError: the connection dropped.
    """
    from fruix_core.transport.ssh import remote_command

    mode = _compression(session, compression)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.parent / f".{dest.name}.partial-{uuid.uuid4().hex[:12]}"
    os.mkdir(partial, 0o700)
    script = command or tar_command(remote_dir, mode)
    started = time.monotonic()
    meter = _Progress(f"importing {dest.name}", progress)
    channel: Any = None
    pump: _ChannelPump | None = None
    try:
        channel = session.open_channel(
            remote_command(script, report_pgid=False, merge_stderr=False), bulk=True,
            combine_stderr=False)
        channel.shutdown_write()
        channel.settimeout(1.0)
        pump = _ChannelPump(session, channel, _ZstdDecoder() if mode == "zstd" else None)
        reader = _ForwardReader(pump.read, meter.update)
        def remote_failure(status: int) -> TransportError:
            assert pump is not None
            text = pump.final_stderr().decode("utf-8", "replace").strip()[-500:]
            return TransportError(f"{session.where}: remote tar of {remote_dir} failed "
                                  f"(exit status {status}){': ' + text if text else ''}")

        try:
            members = extract_stream(reader, partial, writers=writers)
        except TransportError:
            if not session.active:
                raise ConnectionLostError(
                    f"{session.where}: connection lost during transfer") from None
            # A stream cut short by a failing tar: its own message says more.
            status = session.exit_status(channel, wait=2.0) if pump.eof else None
            if status:
                raise remote_failure(status) from None
            raise
        reader.drain()  # the rest of the last tar record
        status = session.exit_status(channel, wait=30.0)
        if status is None:
            raise ConnectionLostError(f"{session.where}: connection lost during transfer")
        if status != 0:
            raise remote_failure(status)
        if verify is not None:
            verify(partial)
        install_tree(partial, dest)
    except BaseException as exc:
        if channel is not None:
            channel.close()
        if pump is not None:
            pump.stop()
        _remove_tree(partial)
        if isinstance(exc, OSError):
            raise TransportError(f"cannot write {dest}: {exc.strerror or exc}") from None
        raise
    channel.close()
    pump.stop()
    meter.update(reader.count, final=True)
    stats = TransferStats(bytes=reader.count, members=members,
                          seconds=time.monotonic() - started, received=pump.received)
    log.info("tree imported", remote=remote_dir, dest=str(dest), bytes=stats.bytes,
             received=stats.received, compression=mode, members=stats.members,
             seconds=round(stats.seconds, 3))
    return stats
