"""One pass over an artifact tree: tree signature, manifest, and new content.

Each regular file is read once; the bytes read feed the NAR hasher (tree
signature), the file's own SHA-256 (manifest and content-pool key) and, when
the store does not hold that content yet, the copy written into the object
being built. Nothing is ever hard-linked from the staging tree.

Small files (up to :data:`BUFFER_LIMIT`) are held in memory while hashed, so
content the store already holds is never written. A large file is either
streamed into the store while hashed (when the previous lookups found new
content) or hashed first and copied only when new, re-hashing the copy and
failing if the two reads differ. Promoting a tree the store already holds
writes nothing; a rebuilt tree writes only what changed.

Every new file is written with its final mode (``0444``/``0555``) and time,
then entered into the content pool ``STORE/.links`` so later objects link to
it instead of storing it again.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fruix_core.errors import PromotionInputError
from fruix_core.promotion.layout import MANIFEST_FILE, RESERVED_NAMES, StoreLayout
from fruix_core.promotion.manifest import ManifestEntry, ManifestWriter
from fruix_core.promotion.nar import (
    CHUNK_SIZE,
    NarHasher,
    TreeChangedError,
    check_stable,
    open_stable,
    read_regular,
    walk,
)
from fruix_core.promotion.storeio import store_errors, write_all
from fruix_core.promotion.validate import StagedArtifact

if TYPE_CHECKING:
    from fruix_core.promotion.metalog import ArtifactMetalog

__all__ = ["BUFFER_LIMIT", "FIXED_MTIME", "IngestedArtifact", "Ingester", "Progress",
           "canonical_mode"]

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


class _NullNar(NarHasher):
    """A hasher that ignores contents (for a second, copying read)."""

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        return None


class Ingester:
    """Reads artifact trees into a store's temporary objects.

    :param layout: the store; ``None`` with ``dry_run`` when the store does not exist.
    :param token: this process's owner token (names the temporary directories).
    :param dry_run: hash only; write nothing anywhere.
    :param fsync_each: fsync every new file (when ``syncfs`` is unavailable).
    """

    def __init__(self, layout: StoreLayout | None, token: str, *, dry_run: bool,
                 fsync_each: bool = False,
                 progress: Callable[[Progress], None] | None = None,
                 totals: Progress | None = None) -> None:
        self.layout = layout
        self.token = token
        self.dry_run = dry_run
        self.fsync_each = fsync_each
        self.progress = progress
        self.state = totals or Progress()
        self._expect_new = True
        self._pool_prefix = os.fsencode(layout.links) + b"/" if layout is not None else b""
        self._made: set[bytes] = set()  # directories created in temporary objects

    def close(self) -> None:
        """Forget per-promotion caches."""
        self._made.clear()

    # -- content pool ----------------------------------------------------

    def _in_pool(self, digest: str, executable: bool) -> bool:
        if self.layout is None:
            return False
        suffix = b"-x" if executable else b"-r"
        try:
            os.lstat(self._pool_prefix + digest.encode() + suffix)
        except FileNotFoundError:
            return False
        return True

    def _enter_pool(self, dest: bytes, digest: str, executable: bool) -> None:
        assert self.layout is not None
        try:
            os.link(dest, self.layout.pool_entry(digest, executable))
        except FileExistsError:
            pass  # another promoter entered the same content first: equally good

    # -- writing ---------------------------------------------------------

    def _create(self, temp: Path, rel: bytes) -> tuple[int, bytes]:
        dest = os.fsencode(temp) + b"/" + rel
        parent = os.path.dirname(dest)
        with store_errors(f"cannot create {os.fsdecode(dest)}"):
            if parent not in self._made:
                os.makedirs(parent, exist_ok=True)
                self._made.add(parent)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o600)
        return fd, dest

    def _finish(self, fd: int, dest: bytes, mode: int, digest: str, executable: bool) -> None:
        with store_errors(f"cannot write {os.fsdecode(dest)}"):
            try:
                os.fchmod(fd, canonical_mode(mode))
                os.utime(fd, (FIXED_MTIME, FIXED_MTIME))
                if self.fsync_each:
                    os.fsync(fd)
            finally:
                os.close(fd)
            self._enter_pool(dest, digest, executable)

    def _discard(self, fd: int, dest: bytes) -> None:
        os.close(fd)
        try:
            os.unlink(dest)
        except OSError:
            pass

    # -- reading ---------------------------------------------------------

    def _small(self, path: bytes, st: os.stat_result, nar: NarHasher) -> tuple[str, bytes]:
        fd = open_stable(path, st)
        try:
            parts = []
            total = 0
            while total < st.st_size:
                chunk = os.read(fd, st.st_size - total)
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
            check_stable(fd, path, st, total)
        finally:
            os.close(fd)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        nar.update(data)
        return hashlib.sha256(data).hexdigest(), data

    def _stream(self, path: bytes, st: os.stat_result, nar: NarHasher,
                out: int | None, *, count: bool = True) -> str:
        digest = hashlib.sha256()
        fd = open_stable(path, st)
        try:
            total = 0
            while total < st.st_size:
                # Fresh bytes per chunk: the NAR hasher may still hold the previous one.
                chunk = os.read(fd, min(CHUNK_SIZE, st.st_size - total))
                if not chunk:
                    break
                n = len(chunk)
                nar.update(chunk)
                digest.update(chunk)
                if out is not None:
                    with store_errors("cannot write to the store"):
                        write_all(out, chunk)
                total += n
                if count:
                    self._tick(0, n)
            check_stable(fd, path, st, total)
        finally:
            os.close(fd)
        return digest.hexdigest()

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

        :raises PromotionInputError: when the tree changes or holds special files.
        :raises StoreError: when the store cannot be written.
        """
        self.state.kind = staged.kind
        temp: Path | None = None
        stream = None
        if not self.dry_run:
            assert self.layout is not None
            temp = self.layout.temp(self.token, staged.kind)
            with store_errors(f"cannot create {temp}"):
                os.mkdir(temp, 0o755)
                stream = open(temp / MANIFEST_FILE, "wb")
        manifest = ManifestWriter(stream, overlay=metalog.apply if metalog else None)
        groups: dict[tuple[int, int], tuple[bytes, str, int, int]] = {}
        written = 0

        def on_entry(rel: bytes, st: os.stat_result, target: bytes | None) -> None:
            if b"/" not in rel and os.fsdecode(rel) in RESERVED_NAMES:
                raise PromotionInputError(
                    f"{staged.kind} artifact: top-level name {os.fsdecode(rel)!r} is reserved")
            if stat.S_ISDIR(st.st_mode):
                manifest.add(ManifestEntry(rel, "dir", mode=stat.S_IMODE(st.st_mode)))
            elif target is not None:
                manifest.add(ManifestEntry(rel, "link", link=target))
                self._tick(1, 0)

        def on_regular(path: bytes, rel: bytes, st: os.stat_result, nar: NarHasher) -> None:
            nonlocal written
            mode = stat.S_IMODE(st.st_mode)
            executable = bool(mode & stat.S_IXUSR)
            key = (st.st_dev, st.st_ino)
            first = groups.get(key) if st.st_nlink > 1 else None
            if first is not None:
                # Another name of an inode already read: NAR needs its bytes again,
                # but its digest is known; it must not have changed in between.
                if (st.st_size, st.st_mtime_ns) != first[2:]:
                    raise TreeChangedError(f"{os.fsdecode(path)}: changed while being read")
                read_regular(path, rel, st, nar)
                manifest.add(ManifestEntry(rel, "file", mode=mode, size=st.st_size,
                                           sha256=first[1], nlink=st.st_nlink,
                                           hardlink=first[0]))
                self._tick(1, st.st_size)
                return
            digest, size = self._file(path, rel, st, nar, temp, executable, mode)
            written += size
            if st.st_nlink > 1:
                groups[key] = (rel, digest, st.st_size, st.st_mtime_ns)
            manifest.add(ManifestEntry(rel, "file", mode=mode, size=st.st_size, sha256=digest,
                                       nlink=st.st_nlink))

        try:
            try:
                nar = walk(os.fsencode(staged.path), on_entry=on_entry, on_regular=on_regular)
            except OSError as err:
                raise PromotionInputError(
                    f"{staged.kind} artifact: cannot read {err.filename or staged.path}: "
                    f"{err.strerror}") from None
            if metalog is not None:
                metalog.check_complete()
            if stream is not None:
                with store_errors(f"cannot write {temp}/{MANIFEST_FILE}"):
                    stream.flush()
                    if self.fsync_each:
                        os.fsync(stream.fileno())
        finally:
            if stream is not None:
                stream.close()
        self.state.bytes_written += written
        return IngestedArtifact(kind=staged.kind, tree_signature=nar.hexdigest(),
                                nar_size=nar.size, manifest_sha256=manifest.hexdigest(),
                                temp_dir=temp, files=manifest.entries, bytes_written=written)

    def _file(self, path: bytes, rel: bytes, st: os.stat_result, nar: NarHasher,
              temp: Path | None, executable: bool, mode: int) -> tuple[str, int]:
        """Hash one file into ``nar``, writing it if new; returns (sha256, bytes written)."""
        if st.st_size <= BUFFER_LIMIT:
            digest, data = self._small(path, st, nar)
            self._tick(1, st.st_size)
            if temp is None or self._in_pool(digest, executable):
                self._expect_new = False
                return digest, 0
            self._expect_new = True
            fd, dest = self._create(temp, rel)
            try:
                with store_errors(f"cannot write {os.fsdecode(dest)}"):
                    write_all(fd, data)
            except BaseException:
                self._discard(fd, dest)
                raise
            self._finish(fd, dest, mode, digest, executable)
            return digest, st.st_size
        if temp is None:
            digest = self._stream(path, st, nar, None)
            self._tick(1, 0)
            return digest, 0
        if self._expect_new:
            fd, dest = self._create(temp, rel)
            try:
                digest = self._stream(path, st, nar, fd)
            except BaseException:
                self._discard(fd, dest)
                raise
            self._tick(1, 0)
            if self._in_pool(digest, executable):
                self._expect_new = False
                self._discard(fd, dest)
                return digest, 0
            self._finish(fd, dest, mode, digest, executable)
            return digest, st.st_size
        digest = self._stream(path, st, nar, None)
        self._tick(1, 0)
        if self._in_pool(digest, executable):
            return digest, 0
        self._expect_new = True
        fd, dest = self._create(temp, rel)
        try:
            again = self._stream(path, st, _NullNar(), fd, count=False)
        except BaseException:
            self._discard(fd, dest)
            raise
        if again != digest:
            self._discard(fd, dest)
            raise TreeChangedError(f"{os.fsdecode(path)}: changed while being read")
        self._finish(fd, dest, mode, digest, executable)
        return digest, st.st_size
