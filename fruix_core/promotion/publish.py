"""Turning a temporary object into a final, immutable store object.

The steps, all inside ``STORE/.tmp-<token>-<what>`` until the last one:

1. *materialise*: create what ingestion did not write (the entries it kept
   for this, in walk order; the manifest is replayed only without them):
   directories, symlinks (with their fixed time), and a hard link for every
   other file, from content this promotion wrote or linked already, else
   from the content pool (members of a hard-link group link to the group's
   first member). No pool entry is linked unchecked; what is checked is the
   store's pool check (:data:`POOL_CHECKS`, ``FRUIX_STORE_POOL_CHECK``):

   * ``stat`` (the default): the inode linked must be a regular file of the
     content's size with the canonical mode and time, checked on the link
     itself (``lstat`` of the new name), so a swapped or planted entry is
     never linked. Its bytes are the store's own, vouched for by ``fruix
     store verify``, which hashes every pool entry: as Nix trusts its
     ``.links`` (it checks their size only);
   * ``content``: the bytes too. Ingestion compares the entry with the file
     it has just read and hashed and links it through the descriptor it
     compared (:meth:`ContentLinker.place`); an entry met before (the
     artifact had shown no new content yet, or the file was too large to
     hold) is hashed again here before it is linked, and an entry checked
     here is linked again only while its inode and change time are those it
     was checked with.

   Ingestion links pool entries itself, from the artifact's first new
   content on (its object is then sure to be built rather than reused). A
   wrong entry is never linked: the file is written new from the bytes read
   (or read again from the staged tree), and the entry replaced after
   publishing;
2. write the object's metadata files (mode ``0444``);
3. *canonicalise*: every directory ``0555``, every node's mtime
   :data:`~fruix_core.promotion.ingest.FIXED_MTIME` (files were written
   canonical already, symlinks made so; the directories are known, so the
   tree is not walked again);
4. make it durable (``syncfs``, else fsync of every file and directory);
5. under the locks of *all* the promotion's objects at once
   (:func:`publish_all`): each final name that exists is reused, every other
   temporary is renamed into place, then the store directory is fsynced. A
   final name therefore always means a complete object, and nothing is
   published before every object of the promotion is ready.
6. the new content is entered into the pool (:func:`enter_pool`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import structlog

from fruix_core.errors import StoreError
from fruix_core.promotion import seams
from fruix_core.promotion.display import shown
from fruix_core.promotion.ingest import FIXED_MTIME, canonical_mode
from fruix_core.promotion.layout import MANIFEST_FILE, StoreLayout
from fruix_core.promotion.locking import object_lock
from fruix_core.promotion.manifest import ManifestEntry, parse_manifest
from fruix_core.promotion.nar import CHUNK_SIZE
from fruix_core.promotion.safeio import DIR_FLAGS, FILE_FLAGS, open_regular_at
from fruix_core.promotion.storeio import (
    fsync_dir,
    fsync_tree,
    have_syncfs,
    remove_tree,
    store_errors,
    syncfs,
    write_all,
)

__all__ = [
    "FSYNC_POLICIES",
    "POOL_CHECKS",
    "ContentLinker",
    "canonicalise",
    "enter_pool",
    "materialise",
    "publish_all",
    "write_metadata_file",
]

log = structlog.get_logger(__name__)

_FIXED_NS = FIXED_MTIME * 1_000_000_000
#: What is checked of a content-pool entry before it is linked: ``stat`` (kind,
#: size, mode and time of the inode linked; the default) or ``content`` (its bytes
#: too). Chosen with ``FRUIX_STORE_POOL_CHECK``.
POOL_CHECKS = ("stat", "content")
#: Pool entries are opened like any file read (never a symlink, never blocking),
#: and never as a controlling terminal.
_ENTRY_FLAGS = FILE_FLAGS | getattr(os, "O_NOCTTY", 0)
#: Whether ``/proc/self/fd`` can link an open file (Linux); found out on first use.
_proc_links = os.path.isdir("/proc/self/fd")

#: ``syncfs`` (one flush of the store's file system), ``each`` (fsync every
#: file and directory) or ``none`` (no flush; benchmarks and throwaway stores).
FSYNC_POLICIES = ("syncfs", "each", "none")


#: ``restage(rel, dest, digest, executable)``: write the staged file ``rel``
#: (read again from the validated tree, checked against its digest) to ``dest``.
Restage = Callable[[bytes, bytes, str, bool], None]


class ContentLinker:
    """Links known content into objects being built, checking pool entries first.

    :param session: content written by this promotion: (sha256, executable) -> file.
    :param check: what is checked of a pool entry, one of :data:`POOL_CHECKS`.
    """

    def __init__(self, layout: StoreLayout, session: dict[tuple[str, bool], bytes],
                 check: str = "stat") -> None:
        assert check in POOL_CHECKS
        self.layout = layout
        self.session = session
        self.check = check
        #: Entries checked good: (sha256, executable) -> (st_dev, st_ino, st_ctime_ns).
        self._good: dict[tuple[str, bool], tuple[int, int, int]] = {}
        #: Pool entries found wrong: replaced after publishing.
        self.bad: set[tuple[str, bool]] = set()
        self._links_fd: int | None = None
        #: Where session content was linked: (sha256, executable) -> files.
        self.placed: dict[tuple[str, bool], list[bytes]] = {}
        #: Pool entries checked and linked: (sha256, executable) -> the first link made.
        self.linked: dict[tuple[str, bool], bytes] = {}

    def close(self) -> None:
        if self._links_fd is not None:
            os.close(self._links_fd)
            self._links_fd = None

    def _links(self) -> int:
        if self._links_fd is None:
            self._links_fd = os.open(self.layout.links, DIR_FLAGS)
        return self._links_fd

    def _open_entry(self, key: tuple[str, bool],
                    size: int) -> tuple[int, os.stat_result] | None:
        """The open pool entry for ``key`` if its kind, size, mode and time are right.

        Opened without following a symlink and without blocking (a FIFO), then
        ``fstat``-ed: anything but a regular file is refused before a byte is read.
        """
        digest, executable = key
        name = f"{digest}-{'x' if executable else 'r'}"
        try:
            fd = os.open(name, _ENTRY_FLAGS, dir_fd=self._links())
        except FileNotFoundError:
            return None
        except OSError:
            self.mark_wrong(key, "not a regular file")
            return None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            self.mark_wrong(key, "not a regular file")
            return None
        if (stat.S_IMODE(st.st_mode) != (0o555 if executable else 0o444)
                or st.st_size != size or st.st_mtime != FIXED_MTIME):
            os.close(fd)
            self.mark_wrong(key, "wrong size, mode or time")
            return None
        return fd, st

    def place(self, digest: str, executable: bool, data: bytes | memoryview,
              dest: bytes) -> bool:
        """Link the pool entry for that content at ``dest`` if it passes the pool check.

        ``data`` is what ingestion just read and hashed into ``digest``. Content
        linked once is linked again from that first link. ``False`` when the
        entry is missing or wrong (a wrong one is replaced after publishing), or
        has all the links its file system allows: the caller then writes
        ``data`` itself.
        """
        key = (digest, executable)
        first = self.linked.get(key)
        if first is not None:
            return _link_at(first, dest)
        if key in self.bad:
            return False
        if self.check == "content":
            return self._link_if_holds(key, data, dest)
        return self._link_checked(key, len(data), dest)

    def _link_checked(self, key: tuple[str, bool], size: int, dest: bytes) -> bool:
        """Link the entry by name, then check the link: a regular file, size, mode, time.

        The check is made on the new name, which only this promotion writes, so
        whatever the entry's name held when linked is what is checked. A FIFO or
        device is linked (never opened) and unlinked again.
        """
        name = f"{key[0]}-{'x' if key[1] else 'r'}"
        with store_errors(f"cannot write {shown(dest)}"):
            try:
                os.link(name, dest, src_dir_fd=self._links(), follow_symlinks=False)
            except OSError as err:
                if err.errno in (errno.ENOENT, errno.EMLINK):
                    return False
                if err.errno in (errno.EPERM, errno.EISDIR):
                    # Linux refuses to hard-link a directory with EPERM.
                    try:
                        st = os.stat(name, dir_fd=self._links(), follow_symlinks=False)
                    except OSError:
                        raise err from None
                    if not stat.S_ISREG(st.st_mode):
                        self.mark_wrong(key, "not a regular file")
                        return False
                raise
            st = os.lstat(dest)
            if (stat.S_ISREG(st.st_mode)
                    and stat.S_IMODE(st.st_mode) == (0o555 if key[1] else 0o444)
                    and st.st_size == size and st.st_mtime == FIXED_MTIME):
                self.linked[key] = dest
                return True
            os.unlink(dest)
        self.mark_wrong(key, "wrong size, mode or time" if stat.S_ISREG(st.st_mode)
                    else "not a regular file")
        return False

    def _link_if_holds(self, key: tuple[str, bool], data: bytes | memoryview,
                       dest: bytes) -> bool:
        """Link the pool entry at ``dest`` if it holds exactly ``data``.

        ``data`` is what was just read and hashed, so equal bytes prove the
        entry holds that content: a byte comparison instead of a second SHA-256.
        The entry is linked through the descriptor the comparison read
        (``/proc/self/fd``; elsewhere by name, and the new link must then be the
        inode compared), so what is linked is what was compared.
        """
        opened = self._open_entry(key, len(data))
        if opened is None:
            return False
        fd, st = opened
        try:
            if not _holds(fd, data):
                self.mark_wrong(key, "content differs from the file it stands for")
                return False
            seams.reach("pool.compared", dest)
            after = os.fstat(fd)
            if (after.st_ctime_ns, after.st_size, after.st_mtime_ns) != (
                    st.st_ctime_ns, st.st_size, st.st_mtime_ns):
                # Written (or chmod-ed) since it was opened: what was compared is gone.
                self.mark_wrong(key, "changed while it was compared")
                return False
            if not self._link_open(fd, st, key, dest):
                return False
        finally:
            os.close(fd)
        self.linked[key] = dest
        return True

    def _link_open(self, fd: int, st: os.stat_result, key: tuple[str, bool],
                   dest: bytes) -> bool:
        """Link the inode open at ``fd`` at ``dest``; ``False`` when it has too many links."""
        global _proc_links
        with store_errors(f"cannot write {shown(dest)}"):
            if _proc_links:
                try:
                    # linkat(AT_SYMLINK_FOLLOW) of the descriptor's /proc name: that very
                    # inode (``dst_dir_fd`` only selects linkat; ``dest`` is absolute).
                    os.link(f"/proc/self/fd/{fd}", dest, dst_dir_fd=self._links(),
                            follow_symlinks=True)
                    return True
                except OSError as err:
                    if err.errno == errno.EMLINK:
                        return False
                    if err.errno not in (errno.ENOENT, errno.EXDEV, errno.EPERM,
                                         errno.ENOTDIR, errno.EACCES):
                        raise
                    _proc_links = False  # no usable /proc here: link by name from now on
            name = f"{key[0]}-{'x' if key[1] else 'r'}"
            try:
                os.link(name, dest, src_dir_fd=self._links(), follow_symlinks=False)
            except OSError as err:
                if err.errno in (errno.EMLINK, errno.ENOENT):
                    return False
                raise
            linked = os.lstat(dest)
            if (linked.st_dev, linked.st_ino) == (st.st_dev, st.st_ino):
                return True
            os.unlink(dest)  # the entry was swapped after it was compared
            self.mark_wrong(key, "replaced while being linked")
            return False

    def _check_entry(self, key: tuple[str, bool], size: int) -> tuple[int, int, int] | None:
        """The identity of a good pool entry for ``key``, or ``None`` (missing or wrong)."""
        if key in self._good:
            return self._good[key]
        if key in self.bad:
            return None
        opened = self._open_entry(key, size)
        if opened is None:
            return None
        fd, st = opened
        try:
            with open(fd, "rb", buffering=0, closefd=False) as raw:
                actual = hashlib.file_digest(raw, "sha256").hexdigest()
        finally:
            os.close(fd)
        if actual != key[0]:
            self.mark_wrong(key, "content does not match its name")
            return None
        self._good[key] = (st.st_dev, st.st_ino, st.st_ctime_ns)
        return self._good[key]

    def _unchanged(self, key: tuple[str, bool], name: str) -> bool:
        """Whether the entry is still the inode checked, not written or chmod-ed since."""
        try:
            st = os.stat(name, dir_fd=self._links(), follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino, st.st_ctime_ns) == self._good[key]

    def mark_wrong(self, key: tuple[str, bool], why: str) -> None:
        """Log a wrong pool entry; it is never linked, and replaced after publishing."""
        self.bad.add(key)
        log.warning("store.pool.wrong_entry", entry=str(self.layout.pool_entry(*key)),
                    problem=why)

    def link(self, digest: str, executable: bool, size: int, dest: bytes, rel: bytes,
             restage: Restage) -> None:
        """Make ``dest`` a link to that content (or a fresh copy of the staged file)."""
        key = (digest, executable)
        source = self.session.get(key)
        if source is not None:
            _link_or_copy(source, dest, executable)
            self.placed.setdefault(key, []).append(dest)
            return
        source = self.linked.get(key)
        if source is not None:
            _link_or_copy(source, dest, executable)
            return
        if self.check != "content":
            if key in self.bad or not self._link_checked(key, size, dest):
                restage(rel, dest, digest, executable)
                self.session[key] = dest
                self.placed.setdefault(key, []).append(dest)
            return
        name = f"{digest}-{'x' if executable else 'r'}"  # as layout.pool_entry names it
        if key in self._good and not self._unchanged(key, name):
            del self._good[key]  # changed since it was checked: check it again, in full
        inode = self._check_entry(key, size)
        if inode is not None:
            try:
                os.link(name, dest, src_dir_fd=self._links(), follow_symlinks=False)
            except FileNotFoundError:
                raise StoreError(f"content pool entry {name} vanished while publishing") from None
            except OSError as err:
                if err.errno != errno.EMLINK:
                    raise
                inode = None  # the inode has all the links the file system allows
            else:
                st = os.lstat(dest)
                if (st.st_dev, st.st_ino) == inode[:2]:
                    # This link set the change time: the entry's new identity.
                    self._good[key] = (st.st_dev, st.st_ino, st.st_ctime_ns)
                    return
                os.unlink(dest)  # the entry was swapped after it was checked
                self.mark_wrong(key, "replaced while being linked")
        restage(rel, dest, digest, executable)
        self.session[key] = dest
        self.placed.setdefault(key, []).append(dest)


def _holds(fd: int, data: bytes | memoryview) -> bool:
    """Whether the file open at ``fd`` holds exactly ``data`` (read to its end).

    Each read asks for one byte more than is left to compare, so a file of the
    right size is read in one call per chunk and its end seen in the same call
    (a read of a regular file returns less than asked only at its end). Bytes
    are compared with bytes (``memcmp``; a memoryview compares byte by byte).
    """
    size = len(data)
    offset = 0
    while True:
        want = min(CHUNK_SIZE, size - offset + 1)
        chunk = os.read(fd, want)
        n = len(chunk)
        if not n:
            return offset == size
        if n > size - offset:
            return False
        part = data[offset:offset + n]  # the object itself when the whole of bytes
        if chunk != (part if isinstance(part, bytes) else part.tobytes()):
            return False
        offset += n
        if offset == size and n < want:
            return True


def _link_at(source: bytes, dest: bytes) -> bool:
    """Hard-link ``source`` at ``dest``; ``False`` when its inode has too many links."""
    with store_errors(f"cannot write {shown(dest)}"):
        try:
            os.link(source, dest, follow_symlinks=False)
        except OSError as err:
            if err.errno == errno.EMLINK:
                return False
            raise
    return True


def _link_or_copy(source: bytes, dest: bytes, executable: bool) -> None:
    try:
        os.link(source, dest, follow_symlinks=False)
        return
    except OSError as err:
        if err.errno != errno.EMLINK:
            raise
    fd, _ = open_regular_at(source)
    try:
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while chunk := os.read(fd, 1 << 20):
                write_all(out, chunk)
            os.fchmod(out, 0o555 if executable else 0o444)
            os.utime(out, (FIXED_MTIME, FIXED_MTIME))
        finally:
            os.close(out)
    finally:
        os.close(fd)


def materialise(temp: Path, linker: ContentLinker, restage: Restage,
                pending: Iterable[ManifestEntry] | None = None) -> list[bytes]:
    """Complete the tree in ``temp`` from its manifest and known content.

    :param pending: the entries ingestion did not write (in walk order); without
        it, the whole manifest is replayed and files present are skipped.
    :returns: the directories below ``temp`` (relative), parents first.
    """
    base = os.fsencode(temp)
    dirs: list[bytes] = []
    with store_errors(f"cannot build {shown(temp)}"), contextlib.ExitStack() as stack:
        if pending is None:
            stream = stack.enter_context(open(temp / MANIFEST_FILE, "rb"))
            entries: Iterable[ManifestEntry] = parse_manifest(stream, str(temp / MANIFEST_FILE))
        else:
            entries = pending
        for entry in entries:
            if not entry.rel:
                continue
            dest = base + b"/" + entry.rel
            if entry.type == "dir":
                os.makedirs(dest, exist_ok=True)
                dirs.append(entry.rel)
            elif entry.type == "link":
                os.symlink(entry.link or b"", dest)
                os.utime(dest, ns=(_FIXED_NS, _FIXED_NS), follow_symlinks=False)
            elif entry.hardlink is not None:
                os.link(base + b"/" + entry.hardlink, dest, follow_symlinks=False)
            elif pending is not None or not os.path.lexists(dest):
                linker.link(entry.sha256 or "", bool((entry.mode or 0) & 0o100),
                            entry.size or 0, dest, entry.rel, restage)
    return dirs


def write_metadata_file(temp: Path, name: str, text: str | bytes) -> None:
    """Write one of the object's own files, read-only (never through a planted name)."""
    data = text.encode("ascii") if isinstance(text, str) else text
    path = temp / name
    with store_errors(f"cannot write {shown(path)}"):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | getattr(os, "O_CLOEXEC", 0), 0o444)
        try:
            write_all(fd, data)
            os.fchmod(fd, 0o444)
        finally:
            os.close(fd)


def canonicalise(temp: Path, dirs: Sequence[bytes] | None = None) -> None:
    """Directories ``0555``; every node's mtime fixed; files already read-only.

    :param dirs: every directory below ``temp`` (relative, parents first), when
        :func:`materialise` built the tree and fixed its symlinks' times already;
        otherwise the tree is walked.
    """
    if dirs is not None:
        base = os.fsencode(temp) + b"/"
        with store_errors(f"cannot canonicalise {shown(temp)}"):
            for rel in reversed(dirs):  # children before their parents
                os.chmod(base + rel, 0o555, follow_symlinks=False)
                os.utime(base + rel, ns=(_FIXED_NS, _FIXED_NS), follow_symlinks=False)
            _canonical_top(temp)
        return
    with store_errors(f"cannot canonicalise {shown(temp)}"):
        for top, dirs_, files in os.walk(temp, topdown=False):
            for name in files:
                path = os.path.join(top, name)
                if os.path.islink(path):
                    os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
            for name in dirs_:
                path = os.path.join(top, name)
                if os.path.islink(path):
                    os.utime(path, (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
                else:
                    os.chmod(path, canonical_mode(0, is_dir=True))
                    os.utime(path, (FIXED_MTIME, FIXED_MTIME))
        _canonical_top(temp)


def _canonical_top(temp: Path) -> None:
    """The object's own files and its top directory."""
    manifest = os.path.join(temp, MANIFEST_FILE)
    if os.path.isfile(manifest):
        os.chmod(manifest, 0o444)
    for name in os.listdir(temp):
        path = os.path.join(temp, name)
        if not os.path.islink(path) and os.path.isfile(path):
            os.utime(path, (FIXED_MTIME, FIXED_MTIME))
    os.chmod(temp, 0o555)
    os.utime(temp, (FIXED_MTIME, FIXED_MTIME))


def _make_durable(layout: StoreLayout, temps: Sequence[Path], policy: str) -> None:
    with store_errors(f"cannot flush {shown(layout.root)} to disk"):
        if policy == "syncfs" and have_syncfs():
            syncfs(layout.root)
        elif policy in ("syncfs", "each"):
            for temp in temps:
                fsync_tree(temp)


def publish_all(layout: StoreLayout, items: Sequence[tuple[Path, str]], *,
                fsync: str) -> list[bool]:
    """Rename every prepared temporary to its name, as one unit.

    ``items`` are ``(temporary, name)`` pairs; a temporary that does not exist
    stands for an object found present earlier. Under the locks of every
    name: an existing name is reused (its temporary removed), the others
    renamed into place. Nothing is renamed before every lock is held and
    every temporary is durable.

    :returns: for each item, ``True`` when published, ``False`` when reused.
    :raises StoreError: when an object found earlier is gone and no
        temporary can replace it.
    """
    with contextlib.ExitStack() as locks:
        for name in sorted({name for _temp, name in items}):
            locks.enter_context(object_lock(layout, name))
        fresh = [temp for temp, name in items
                 if not os.path.lexists(layout.object(name)) and os.path.lexists(temp)]
        for temp, name in items:
            if not os.path.lexists(layout.object(name)) and not os.path.lexists(temp):
                raise StoreError(f"store object {shown(layout.object(name))} disappeared while "
                                 "promoting; promote again")
        _make_durable(layout, fresh, fsync)
        seams.reach("promote.before-publish")
        outcome: list[bool] = []
        for temp, name in items:
            final = layout.object(name)
            if temp in fresh:
                with store_errors(f"cannot publish {shown(final)}"):
                    os.rename(temp, final)
                outcome.append(True)
            else:
                remove_tree(temp)
                outcome.append(False)
        if fresh and fsync != "none":
            with store_errors(f"cannot flush {shown(layout.root)}"):
                fsync_dir(layout.root)
                if not have_syncfs() or fsync == "each":
                    fsync_dir(layout.links)
    return outcome


def _replace_entry(links: int, path: bytes, name: str, fresh: str) -> None:
    """Put ``path`` in place of the pool entry ``name`` (through the temporary ``fresh``)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh, dir_fd=links)
    os.link(path, fresh, dst_dir_fd=links, follow_symlinks=False)
    try:
        os.rename(fresh, name, src_dir_fd=links, dst_dir_fd=links)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(fresh, dir_fd=links)
        raise


def enter_pool(layout: StoreLayout, content: dict[tuple[str, bool], bytes],
               replace: set[tuple[str, bool]], token: str) -> None:
    """Enter published files into the content pool, replacing entries found wrong.

    :param content: (sha256, executable) -> a published file with that content.
    :param replace: keys whose present entry is wrong and must be replaced.
    :param token: the owner token naming the replacement's temporary name
        (``.links/.tmp-<token>-<entry>``, removed with other stale temporaries).
    """
    links = os.open(layout.links, DIR_FLAGS)
    try:
        for (digest, executable), path in content.items():
            name = layout.pool_entry(digest, executable).name
            try:
                try:
                    os.link(path, name, dst_dir_fd=links, follow_symlinks=False)
                except FileExistsError:
                    if (digest, executable) not in replace:
                        continue  # another promoter entered the same content: equally good
                    _replace_entry(links, path, name, f".tmp-{token}-{name}")
            except OSError as err:
                # The pool is an optimisation: an entry missing only costs a later copy
                # (an entry that cannot be replaced, a directory, stays for verify to name).
                log.warning("store.pool.entry_not_made", entry=name, error=err.strerror)
    finally:
        os.close(links)
