"""One pass over an artifact tree: tree signature, manifest, and new content.

Each regular file is read once; the bytes read feed the NAR hasher (tree
signature), the file's own SHA-256 (manifest and content-pool key) and, when
the store does not hold that content yet, the copy written into the object
being built. Nothing is ever hard-linked from the staging tree.

Small files (up to :data:`BUFFER_LIMIT`) are held in memory while hashed, so
content the store already holds is never written: from the first new content
of the artifact on (its object is then sure to be built rather than reused),
the content-pool entry of that digest is linked into the object at once when
it passes the store's pool check (see :mod:`~fruix_core.promotion.publish`;
with ``content``, compared byte for byte with those bytes), else the bytes
are written; entries met before are linked, and checked, when the object is
completed. From
:data:`~fruix_core.promotion.nar.PARALLEL_MIN` on, files are read into
reusable buffers (``readv``) and the file's SHA-256 runs on a second core
(:func:`~fruix_core.promotion.nar.hash_worker`) while the NAR, which must
stay in order, is hashed here from the same buffer. A large file is either
streamed into the store while hashed (when the previous lookups found new
content) or hashed first and copied only when new, re-hashing the copy and
failing if the two reads differ. Promoting a tree the store already holds
writes nothing; a rebuilt tree writes only what changed.

The walk is the one of :func:`~fruix_core.promotion.nar.walk`: every
directory opened relative to its parent's descriptor, every file opened
``O_NOFOLLOW | O_NONBLOCK`` and ``fstat``-ed, starting from the artifact
directory opened during validation. Every check of validation is made again
on what is actually read (special files, depth, reserved names, hard links to
outside, key files and their digests), so a tree rearranged between or
during the two passes is refused or ingested as validated, never followed
out of the result root.

Every new file is written with its final mode (``0444``/``0555``) and time;
runs of zero bytes in large files become holes, so sparse files stay sparse.
New content is *not* entered into the content pool ``STORE/.links`` here:
the promotion does that only after its objects are published, so a refused
promotion leaves no pool entries behind.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fruix_core.errors import PromotionInputError
from fruix_core.promotion.display import shown
from fruix_core.promotion.layout import MANIFEST_FILE, StoreLayout
from fruix_core.promotion.manifest import ManifestEntry, ManifestWriter
from fruix_core.promotion.nar import (
    CHUNK_SIZE,
    PARALLEL_MIN,
    NarHasher,
    TreeChangedError,
    check_stable,
    hash_worker,
    read_buffer,
    read_chunk,
    read_regular,
    walk,
)
from fruix_core.promotion.safeio import open_dir_at, open_regular_at
from fruix_core.promotion.statcache import TreeFingerprint
from fruix_core.promotion.storeio import store_errors, write_all
from fruix_core.promotion.validate import (
    DigestMismatchError,
    StagedArtifact,
    TreeCheck,
    required_key_files,
)

if TYPE_CHECKING:
    from fruix_core.promotion.metalog import ArtifactMetalog

__all__ = ["BUFFER_LIMIT", "FIXED_MTIME", "IngestedArtifact", "Ingester", "Progress",
           "canonical_mode", "restage"]

#: Files up to this size are buffered in memory while hashed.
BUFFER_LIMIT = 4 << 20
#: Modification time (seconds since the epoch) of everything in the store.
FIXED_MTIME = 1


def canonical_mode(mode: int, is_dir: bool = False) -> int:
    """The store's mode for a node: directories and executables 0555, other files 0444."""
    if is_dir or mode & stat.S_IXUSR:
        return 0o555
    return 0o444


@dataclass(slots=True)
class Progress:
    """Counters reported to the progress callback while promoting."""

    kind: str = ""
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_written: int = 0


@dataclass(frozen=True, slots=True)
class IngestedArtifact:
    """The result of one pass over an artifact tree."""

    kind: str
    tree_signature: str
    nar_size: int
    manifest_sha256: str
    temp_dir: Path | None
    files: int
    bytes_written: int
    #: (sha256, executable) -> path (below ``temp_dir``) of each content written new.
    new_content: dict[tuple[str, bool], bytes] = field(default_factory=dict)
    #: Stat fingerprint of the tree as read; ``None`` when racily clean (not to be cached).
    fingerprint: str | None = None
    #: Manifest entries not written during ingestion (directories, symlinks, other
    #: names of hard-link groups, content known already), in walk order.
    pending: list[ManifestEntry] = field(default_factory=list)


class _NullNar(NarHasher):
    """A hasher that ignores contents (for a second, copying read)."""

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        return None


_ZEROS = bytes(CHUNK_SIZE)


def _sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class Ingester:
    """Reads artifact trees into a store's temporary objects.

    :param layout: the store; ``None`` with ``dry_run`` when the store does not exist.
    :param token: this process's owner token (names the temporary directories).
    :param dry_run: hash only; write nothing anywhere.
    :param fsync_each: fsync every new file (when ``syncfs`` is unavailable).
    :param store_id: ``(st_dev, st_ino)`` of the store, refused inside a tree.
    """

    def __init__(self, layout: StoreLayout | None, token: str, *, dry_run: bool,
                 fsync_each: bool = False,
                 progress: Callable[[Progress], None] | None = None,
                 totals: Progress | None = None,
                 store_id: tuple[int, int] | None = None) -> None:
        self.layout = layout
        self.token = token
        self.dry_run = dry_run
        self.fsync_each = fsync_each
        self.progress = progress
        self.state = totals or Progress()
        self.store_id = store_id
        self._expect_new = True
        self._pool_prefix = os.fsencode(layout.links) + b"/" if layout is not None else b""
        self._made: set[bytes] = set()  # directories created in temporary objects
        self._created = False  # whether the file just ingested is in place (written or linked)
        self._tail_hole = False  # whether the file being written ends in a hole
        self._buffer: memoryview | None = None  # for files up to BUFFER_LIMIT
        #: Whether the artifact being ingested holds content the store lacks: its
        #: object is then new (not reused), and its pool hits are compared now.
        self._has_new = False
        #: Content written by this promotion so far: (sha256, executable) -> file.
        self.session: dict[tuple[str, bool], bytes] = {}
        #: ``pool_link(sha256, executable, data, dest)``: link the pool entry for that
        #: content at ``dest`` if it passes the store's pool check (``data``: the bytes
        #: just hashed); ``False`` when it is missing or wrong (``data`` is then written).
        self.pool_link: Callable[[str, bool, bytes | memoryview, bytes], bool] | None = None
        #: ``pool_wrong((sha256, executable), problem)``: report a wrong pool entry.
        self.pool_wrong: Callable[[tuple[str, bool], str], None] | None = None

    def close(self) -> None:
        """Forget per-promotion caches."""
        self._made.clear()
        self._buffer = None

    # -- content pool ----------------------------------------------------

    def _known(self, digest: str, executable: bool) -> bool:
        """Whether this promotion wrote, or the pool holds, that content already.

        Only an ``lstat``: an entry counted on this way is hashed before it is
        linked (:meth:`~fruix_core.promotion.publish.ContentLinker.link`).
        """
        if self.layout is None:
            return False
        if (digest, executable) in self.session:
            return True
        suffix = b"-x" if executable else b"-r"
        try:
            st = os.lstat(self._pool_prefix + digest.encode() + suffix)
        except FileNotFoundError:
            return False
        if stat.S_ISREG(st.st_mode):
            return True
        # Anything but a regular file there is not content: ours is written, and
        # replaces it after publishing.
        if self.pool_wrong is not None:
            self.pool_wrong((digest, executable), "not a regular file")
        return False

    # -- writing ---------------------------------------------------------

    def _dest(self, temp: Path, rel: bytes) -> bytes:
        """Where ``rel`` goes in the temporary object (its directory made)."""
        dest = os.fsencode(temp) + b"/" + rel
        parent = os.path.dirname(dest)
        if parent not in self._made:
            with store_errors(f"cannot create {shown(parent)}"):
                os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        return dest

    def _create(self, temp: Path, rel: bytes, dest: bytes | None = None) -> tuple[int, bytes]:
        if dest is None:
            dest = self._dest(temp, rel)
        with store_errors(f"cannot create {shown(dest)}"):
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
        return fd, dest

    def _finish(self, fd: int, dest: bytes, mode: int, digest: str, executable: bool,
                size: int) -> None:
        with store_errors(f"cannot write {shown(dest)}"):
            try:
                if self._tail_hole:
                    os.ftruncate(fd, size)  # a trailing hole
                    self._tail_hole = False
                os.fchmod(fd, canonical_mode(mode))
                os.utime(fd, (FIXED_MTIME, FIXED_MTIME))
                if self.fsync_each:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self.session.setdefault((digest, executable), dest)
        self._created = True
        self._has_new = True

    def _discard(self, fd: int, dest: bytes) -> None:
        os.close(fd)
        try:
            os.unlink(dest)
        except OSError:
            pass

    # -- reading ---------------------------------------------------------

    def _small(self, fd: int, rel: bytes, st: os.stat_result,
               nar: NarHasher) -> tuple[str, bytes | memoryview]:
        data: bytes | memoryview
        if st.st_size < PARALLEL_MIN:
            parts = []
            total = 0
            while total < st.st_size:
                chunk = os.read(fd, st.st_size - total)
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
            data = parts[0] if len(parts) == 1 else b"".join(parts)
        else:
            # Large: into this thread's reusable buffer (valid until the next file).
            buffer = self._large_buffer(st.st_size)
            total = 0
            while total < st.st_size:
                n = os.readv(fd, [buffer[total:st.st_size]])
                if not n:
                    break
                total += n
            data = buffer[:total]
        check_stable(fd, rel, st, total)
        if total < PARALLEL_MIN:
            nar.update(data)
            return hashlib.sha256(data).hexdigest(), data
        # Both digests of the same buffer at once: hashlib releases the GIL.
        pending = hash_worker().submit(_sha256_hex, data)
        nar.update(data)
        return pending.result(), data

    def _large_buffer(self, size: int) -> memoryview:
        # One buffer for the whole promotion, never regrown: RSS stays flat.
        assert size <= BUFFER_LIMIT
        if self._buffer is None:
            self._buffer = memoryview(bytearray(BUFFER_LIMIT))
        return self._buffer

    def _stream(self, fd: int, rel: bytes, st: os.stat_result, nar: NarHasher,
                out: int | None, *, count: bool = True) -> str:
        digest = hashlib.sha256()
        worker = hash_worker()
        pending: Future[None] | None = None
        total = 0
        turn = 0
        while total < st.st_size:
            # Two buffers in turn: the worker may still be hashing the previous chunk.
            chunk = read_chunk(fd, read_buffer(turn), min(CHUNK_SIZE, st.st_size - total))
            turn ^= 1
            if not chunk:
                break
            n = len(chunk)
            if pending is not None:
                pending.result()
            # The file's digest on the worker, the NAR (in order) here, in parallel.
            pending = worker.submit(digest.update, chunk)
            nar.update(chunk)
            if out is not None:
                with store_errors("cannot write to the store"):
                    if n == CHUNK_SIZE and chunk == _ZEROS:
                        os.lseek(out, n, os.SEEK_CUR)  # leave a hole: sparse stays sparse
                        self._tail_hole = True
                    else:
                        write_all(out, chunk)
                        self._tail_hole = False
            total += n
            if count:
                self._tick(0, n)
        if pending is not None:
            pending.result()
        check_stable(fd, rel, st, total)
        return digest.hexdigest()

    def skipped(self, staged: StagedArtifact) -> None:
        """Count an artifact answered without reading it (the stat cache) as done."""
        self.state.kind = staged.kind
        self._tick(staged.files, staged.bytes)

    def _tick(self, files: int, size: int) -> None:
        self.state.files_done += files
        self.state.bytes_done += size
        if self.progress is not None:
            self.progress(self.state)

    # -- one artifact ----------------------------------------------------

    def ingest(self, staged: StagedArtifact,
               metalog: ArtifactMetalog | None = None) -> IngestedArtifact:
        """Walk ``staged`` once; returns its signature and the temporary object.

        ``metalog`` (the build's METALOG lines for this artifact) puts owners,
        groups, intended modes and file flags into the manifest.

        :raises PromotionInputError: when the tree changes, holds special files,
            or fails a check of validation.
        :raises StoreError: when the store cannot be written.
        """
        self.state.kind = staged.kind
        temp: Path | None = None
        stream = None
        self._has_new = False
        if not self.dry_run:
            assert self.layout is not None
            temp = self.layout.temp(self.token, staged.kind)
            with store_errors(f"cannot create {shown(temp)}"):
                os.mkdir(temp, 0o755)
                fd = os.open(temp / MANIFEST_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                             | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
                stream = os.fdopen(fd, "wb")
        manifest = ManifestWriter(stream, overlay=metalog.apply if metalog else None)
        groups: dict[tuple[int, int], tuple[bytes, str, int, int]] = {}
        check = TreeCheck(staged.kind, staged.path, self.store_id)
        fingerprint = TreeFingerprint(staged.kind)
        keys = required_key_files(staged.entry)
        found: dict[str, str] = {}
        new_content: dict[tuple[str, bool], bytes] = {}
        # Nodes the object still needs once named (directories, symlinks, files not
        # written): materialised from memory, without replaying the manifest.
        pending: list[ManifestEntry] = []
        written = 0

        def on_entry(rel: bytes, st: os.stat_result, target: bytes | None) -> None:
            check.entry(rel, st)
            fingerprint.add(rel, st, target)
            if stat.S_ISDIR(st.st_mode):
                line = ManifestEntry(rel, "dir", mode=stat.S_IMODE(st.st_mode))
                manifest.add(line)
                if rel:
                    pending.append(line)
            elif target is not None:
                line = ManifestEntry(rel, "link", link=target)
                manifest.add(line)
                pending.append(line)
                self._tick(1, 0)

        def on_regular(fd: int, rel: bytes, st: os.stat_result, nar: NarHasher) -> None:
            nonlocal written
            mode = stat.S_IMODE(st.st_mode)
            executable = bool(mode & stat.S_IXUSR)
            key = (st.st_dev, st.st_ino)
            first = groups.get(key) if st.st_nlink > 1 else None
            if first is not None:
                # Another name of an inode already read: NAR needs its bytes again,
                # but its digest is known; it must not have changed in between.
                if (st.st_size, st.st_mtime_ns) != first[2:]:
                    raise TreeChangedError(f"{self._show(staged, rel)}: changed while being read")
                read_regular(fd, rel, st, nar)
                digest = first[1]
                line = ManifestEntry(rel, "file", mode=mode, size=st.st_size, sha256=digest,
                                     nlink=st.st_nlink, hardlink=first[0])
                manifest.add(line)
                pending.append(line)
                self._tick(1, st.st_size)
            else:
                self._created = False
                digest, size = self._file(fd, rel, st, nar, temp, executable, mode)
                if size:
                    new_content.setdefault((digest, executable), rel)
                written += size
                if st.st_nlink > 1:
                    groups[key] = (rel, digest, st.st_size, st.st_mtime_ns)
                line = ManifestEntry(rel, "file", mode=mode, size=st.st_size, sha256=digest,
                                     nlink=st.st_nlink)
                manifest.add(line)
                if not self._created:
                    pending.append(line)
            text = os.fsdecode(rel)
            if text in keys:
                found[text] = digest

        try:
            try:
                nar = walk(root_fd=staged.fd, display=os.fsencode(staged.path),
                           on_entry=on_entry, on_regular=on_regular)
            except OSError as err:
                raise PromotionInputError(
                    f"{staged.kind} artifact: cannot read {shown(err.filename or staged.path)}: "
                    f"{err.strerror}") from None
            check.finish()
            self._check_keys(staged, keys, found)
            if metalog is not None:
                metalog.check_complete()
            if stream is not None and temp is not None:
                with store_errors(f"cannot write {shown(temp)}/{MANIFEST_FILE}"):
                    stream.flush()
                    if self.fsync_each:
                        os.fsync(stream.fileno())
        finally:
            if stream is not None:
                stream.close()
        self.state.bytes_written += written
        return IngestedArtifact(kind=staged.kind, tree_signature=nar.hexdigest(),
                                nar_size=nar.size, manifest_sha256=manifest.hexdigest(),
                                temp_dir=temp, files=manifest.entries, bytes_written=written,
                                new_content=new_content, pending=pending,
                                fingerprint=None if fingerprint.racy else fingerprint.hexdigest())

    @staticmethod
    def _show(staged: StagedArtifact, rel: bytes) -> str:
        return shown(os.fsencode(staged.path) + b"/" + rel)

    @staticmethod
    def _check_keys(staged: StagedArtifact, keys: dict[str, str | None],
                    found: dict[str, str]) -> None:
        """Key files, as read: regular files with the recorded digests."""
        for rel, expected in sorted(keys.items()):
            actual = found.get(rel)
            if actual is None:
                raise PromotionInputError(
                    f"{staged.kind} key file {shown(rel)!r} is not a regular file in the tree "
                    "read; the result root changed while it was promoted")
            if expected is not None and actual != expected:
                raise DigestMismatchError(
                    f"{staged.kind} key file {shown(rel)!r}: sha256 is {actual}, promotion.scm "
                    f"records {expected}; the result root changed while it was promoted")

    def _file(self, fd: int, rel: bytes, st: os.stat_result, nar: NarHasher,
              temp: Path | None, executable: bool, mode: int) -> tuple[str, int]:
        """Hash one file into ``nar``, writing it if new; returns (sha256, bytes written)."""
        if st.st_size <= BUFFER_LIMIT:
            digest, data = self._small(fd, rel, st, nar)
            self._tick(1, st.st_size)
            if temp is None:
                self._expect_new = False
                return digest, 0
            dest: bytes | None = None
            if (self._has_new and self.pool_link is not None
                    and (digest, executable) not in self.session):
                dest = self._dest(temp, rel)
                if self.pool_link(digest, executable, data, dest):
                    self._expect_new = False
                    self._created = True  # in place already: nothing left for later
                    return digest, 0
            elif self._known(digest, executable):
                self._expect_new = False
                return digest, 0
            self._expect_new = True
            out, dest = self._create(temp, rel, dest)
            try:
                with store_errors(f"cannot write {shown(dest)}"):
                    write_all(out, data)
            except BaseException:
                self._discard(out, dest)
                raise
            self._finish(out, dest, mode, digest, executable, st.st_size)
            return digest, st.st_size
        if temp is None:
            digest = self._stream(fd, rel, st, nar, None)
            self._tick(1, 0)
            return digest, 0
        if self._expect_new:
            out, dest = self._create(temp, rel)
            try:
                digest = self._stream(fd, rel, st, nar, out)
            except BaseException:
                self._discard(out, dest)
                raise
            self._tick(1, 0)
            if self._known(digest, executable):
                self._expect_new = False
                self._discard(out, dest)
                return digest, 0
            self._finish(out, dest, mode, digest, executable, st.st_size)
            return digest, st.st_size
        digest = self._stream(fd, rel, st, nar, None)
        self._tick(1, 0)
        if self._known(digest, executable):
            return digest, 0
        self._expect_new = True
        out, dest = self._create(temp, rel)
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            again = self._stream(fd, rel, st, _NullNar(), out, count=False)
        except BaseException:
            self._discard(out, dest)
            raise
        if again != digest:
            self._discard(out, dest)
            raise TreeChangedError(f"{shown(rel)}: changed while being read")
        self._finish(out, dest, mode, digest, executable, st.st_size)
        return digest, st.st_size


def restage(staged: StagedArtifact, rel: bytes, dest: bytes, digest: str,
            executable: bool) -> None:
    """Write the staged file ``rel`` to ``dest`` again, from the validated tree.

    Used when the content pool turned out to hold a wrong entry for content
    ingestion did not write. The file is reached from the artifact directory
    opened at validation, one component at a time without following symlinks,
    and must still have ``digest``.

    :raises TreeChangedError: when it cannot be reached or its content changed.
    """
    parts = rel.split(b"/")
    fd = os.dup(staged.fd)
    try:
        for part in parts[:-1]:
            child, _ = open_dir_at(part, fd)
            os.close(fd)
            fd = child
        src, _st = open_regular_at(parts[-1], fd)
    except OSError as err:
        raise TreeChangedError(f"{shown(os.fsencode(staged.path) + b'/' + rel)}: "
                               f"{err.strerror}; the tree changed while it was promoted") from None
    finally:
        os.close(fd)
    try:
        with store_errors(f"cannot write {shown(dest)}"):
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                          | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            hasher = hashlib.sha256()
            size = 0
            while chunk := os.read(src, CHUNK_SIZE):
                hasher.update(chunk)
                size += len(chunk)
                with store_errors(f"cannot write {shown(dest)}"):
                    write_all(out, chunk)
            if hasher.hexdigest() != digest:
                raise TreeChangedError(f"{shown(os.fsencode(staged.path) + b'/' + rel)}: "
                                       "changed while being promoted")
            os.fchmod(out, 0o555 if executable else 0o444)
            os.utime(out, (FIXED_MTIME, FIXED_MTIME))
        finally:
            os.close(out)
    finally:
        os.close(src)
