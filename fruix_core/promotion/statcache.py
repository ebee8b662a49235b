"""The stat cache: re-promoting an unchanged artifact tree reads none of its files.

Like git's index, a promotion records what the tree looked like when it was
read: every node's device, inode, type and mode, owner, link count, size,
modification and change times (nanoseconds) and, for symlinks, the target,
in walk order with the names. Their SHA-256 is the tree's *stat
fingerprint*. After publishing, ``STORE/.cache/<fingerprint>`` records the
artifact's tree signature, NAR size and manifest digest. The next promotion
computes the fingerprint during validation (which ``lstat``-s every node
anyway); when a record exists for it and the artifact object it names is in
the store, that artifact is not read again.

Why a match means the content is the one hashed: every write to a file,
every ``chmod``/``chown``/``utime``, every rename, link or unlink sets the
change time (``ctime``) of the node or its directory to the current time,
and no unprivileged process can set ``ctime`` back. A fingerprint is only
recorded when every node's ``mtime`` and ``ctime`` are older than the start
of the promotion that read it, minus :data:`RACY_MARGIN_NS` (the *racily
clean* rule: a change made in the same clock tick as the read could leave
the times unchanged); any later change then gives the node a newer
``ctime`` and a different fingerprint.

What a hit can and cannot do (the result root is writable by whoever built
it): a hit publishes nothing new. It only answers with an object that is
already in the store, whose content was hashed from bytes that were really
read; it never puts bytes of the result root under a digest that was not
computed from them. The one change a fingerprint cannot see is a write
through a shared writable mapping while its page stays dirty (the kernel
updates the times at the first write fault only, and some file systems
never); a re-promotion then answers with the content the file had when it
was last read, exactly as if the change had been made after promotion.

Records are written by the store's owner only, under ``STORE/.cache`` (a
real directory owned by the store's owner, never followed). A record that
is unreadable, malformed, fails its own checksum, or names another store
(device and inode of the store directory) is ignored and replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import struct
import time
from dataclasses import dataclass

import structlog

from fruix_core.promotion.safeio import DIR_FLAGS, FILE_FLAGS

__all__ = ["CACHE_VERSION", "DISABLE_ENV", "RACY_MARGIN_NS", "VERIFIED_FILE", "CachedTree",
           "StatCache", "TreeFingerprint", "VerifiedInodes"]

log = structlog.get_logger(__name__)

#: Format of the records (and of the fingerprint); another version never matches.
CACHE_VERSION = 1
#: A node changed less than this long before the promotion started is
#: "racily clean": the tree is not recorded (file-system clocks tick coarsely).
RACY_MARGIN_NS = 2_000_000_000
#: Name of the cache directory inside the store.
CACHE_DIR = ".cache"
#: ``FRUIX_STORE_STAT_CACHE=off``: neither trust nor write records (every tree is read).
DISABLE_ENV = "FRUIX_STORE_STAT_CACHE"

_NODE = struct.Struct("<QQIIIQqqqI")
_MAX_RECORD = 4096


class TreeFingerprint:
    """Accumulates the stat of every node of a walk into one digest.

    :param kind: the artifact kind (part of the digest).
    :param started_ns: wall-clock time before the walk started (for the racy rule).
    """

    __slots__ = ("_hash", "newest", "started_ns")

    def __init__(self, kind: str, started_ns: int | None = None) -> None:
        self._hash = hashlib.sha256(f"fruix-statcache-{CACHE_VERSION}\0{kind}\0".encode())
        self.newest = 0
        self.started_ns = time.time_ns() if started_ns is None else started_ns

    def add(self, rel: bytes, st: os.stat_result, target: bytes | None) -> None:
        """One node, as ``lstat`` saw it (``target``: the symlink's, else ``None``)."""
        extra = target if target is not None else b""
        self._hash.update(_NODE.pack(st.st_dev, st.st_ino, st.st_mode, st.st_uid, st.st_gid,
                                     st.st_nlink, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                     len(rel)) + rel + struct.pack("<I", len(extra)) + extra)
        newest = st.st_ctime_ns if st.st_ctime_ns > st.st_mtime_ns else st.st_mtime_ns
        if newest > self.newest:
            self.newest = newest

    @property
    def racy(self) -> bool:
        """Whether a node changed too close to the start of the walk to be trusted later."""
        return self.newest >= self.started_ns - RACY_MARGIN_NS

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


@dataclass(frozen=True, slots=True)
class CachedTree:
    """What a previous promotion computed for a tree with that fingerprint."""

    kind: str
    tree_signature: str
    nar_size: int
    manifest_sha256: str
    files: int


def _checksum(fields: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class StatCache:
    """The records of one store (``STORE/.cache``)."""

    def __init__(self, store: os.PathLike[str] | str) -> None:
        self.store = os.fspath(store)
        st = os.stat(self.store)
        self._store_id = [st.st_dev, st.st_ino]
        self._owner = st.st_uid
        self.enabled = os.environ.get(DISABLE_ENV, "on") != "off"

    def _open_dir(self, create: bool) -> int | None:
        """The cache directory, only if it is a real directory of the store's owner."""
        path = os.path.join(self.store, CACHE_DIR)
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(path, 0o755)
        try:
            fd = os.open(path, DIR_FLAGS)
        except OSError:
            return None
        st = os.fstat(fd)
        if st.st_uid != self._owner or stat.S_IMODE(st.st_mode) & 0o022:
            os.close(fd)
            log.warning("store.statcache.untrusted", path=path)
            return None
        return fd

    def lookup(self, fingerprint: str, kind: str) -> CachedTree | None:
        """The record for ``fingerprint``, or ``None`` (absent, foreign or damaged)."""
        if not fingerprint or not self.enabled:
            return None
        data = self._read(fingerprint, _MAX_RECORD)
        if data is None:
            return None
        return self._parse(data, fingerprint, kind)

    def _parse(self, data: bytes, fingerprint: str, kind: str) -> CachedTree | None:
        try:
            fields = json.loads(data.decode("ascii")) if len(data) <= _MAX_RECORD else None
            if not isinstance(fields, dict):
                raise ValueError("not an object")
            check = fields.pop("check", None)
            if check != _checksum(fields):
                raise ValueError("checksum differs")
            if (fields.get("version") != CACHE_VERSION or fields.get("store") != self._store_id
                    or fields.get("fingerprint") != fingerprint or fields.get("kind") != kind):
                return None
            tree = CachedTree(kind=kind, tree_signature=str(fields["tree_signature"]),
                              nar_size=int(fields["nar_size"]),
                              manifest_sha256=str(fields["manifest_sha256"]),
                              files=int(fields["files"]))
            for digest in (tree.tree_signature, tree.manifest_sha256):
                if len(digest) != 64 or digest.strip("0123456789abcdef"):
                    raise ValueError("not a digest")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            log.warning("store.statcache.damaged", record=fingerprint)
            return None
        return tree

    def record(self, fingerprint: str, tree: CachedTree) -> None:
        """Write the record for ``fingerprint`` (atomically; failures only cost speed)."""
        if not self.enabled:
            return
        fields: dict[str, object] = {
            "version": CACHE_VERSION, "store": self._store_id, "fingerprint": fingerprint,
            "kind": tree.kind, "tree_signature": tree.tree_signature,
            "nar_size": tree.nar_size, "manifest_sha256": tree.manifest_sha256,
            "files": tree.files,
        }
        fields["check"] = _checksum(fields)
        self._write(fingerprint, json.dumps(fields, sort_keys=True).encode("ascii"))

    def _write(self, name: str, data: bytes) -> None:
        """Replace the cache file ``name`` atomically (failures only cost speed)."""
        try:
            dir_fd = self._open_dir(create=True)
        except OSError:
            return
        if dir_fd is None:
            return
        temp = f".new-{os.getpid()}-{name}"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | getattr(os, "O_CLOEXEC", 0), 0o644, dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as err:
            log.warning("store.statcache.not_recorded", error=err.strerror)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def _read(self, name: str, limit: int) -> bytes | None:
        """The cache file ``name`` if it is a regular file of the store's owner, else ``None``."""
        dir_fd = self._open_dir(create=False)
        if dir_fd is None:
            return None
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
        except OSError:
            return None
        finally:
            os.close(dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != self._owner:
                return None
            parts = []
            total = 0
            while total <= limit:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
                if not chunk:
                    break
                parts.append(chunk)
                total += len(chunk)
            return b"".join(parts)
        except OSError:
            return None
        finally:
            os.close(fd)


#: Name of the file of verified store inodes inside ``STORE/.cache``.
VERIFIED_FILE = "verified-inodes"
_INODE = struct.Struct("<QQIqqq32s")
_VERIFIED_MAGIC = b"fruix-verified-inodes-1\n"
_MAX_VERIFIED = 64 << 20


class VerifiedInodes:
    """Store files a full check found right: ``store verify --fast`` trusts their stat.

    A full ``store verify`` records, for every regular file of the store whose
    content it hashed and found equal to its manifest line or pool name, the
    inode's device, number, mode, size, modification and change times
    (nanoseconds) with that SHA-256. ``--fast`` answers a file whose ``lstat``
    still gives exactly those values from the record instead of reading it;
    any write, ``chmod``, new link or unlink of the inode sets a new change
    time, so only a change that leaves the change time as it was (the clock
    set back by the superuser, a raw write to the device, a write through a
    mapping made before the check) goes unnoticed. Inodes changed within
    :data:`RACY_MARGIN_NS` of the check are not recorded.

    The file is ``STORE/.cache/verified-inodes``, written and trusted like
    the stat-cache records (store owner only, checksum, this store's device
    and inode); anything else in its place is ignored, never trusted.
    """

    def __init__(self, store: os.PathLike[str] | str) -> None:
        self._cache = StatCache(store)
        self.started_ns = time.time_ns()
        #: (dev, ino) -> (mode, size, mtime_ns, ctime_ns, sha256 bytes)
        self.known: dict[tuple[int, int], tuple[int, int, int, int, bytes]] = {}
        self.confirmed: dict[tuple[int, int], tuple[int, int, int, int, bytes]] = {}

    def load(self) -> None:
        """Read the records (none when absent, damaged or not this store's)."""
        if not self._cache.enabled:
            return
        data = self._cache._read(VERIFIED_FILE, _MAX_VERIFIED)
        if data is None:
            return
        header, _, body = data.partition(b"\n\n")
        try:
            fields = json.loads(header[len(_VERIFIED_MAGIC):].decode("ascii"))
            if (not header.startswith(_VERIFIED_MAGIC) or not isinstance(fields, dict)
                    or fields.get("store") != self._cache._store_id
                    or fields.get("sha256") != hashlib.sha256(body).hexdigest()
                    or len(body) % _INODE.size):
                raise ValueError("not this store's records")
        except (ValueError, UnicodeDecodeError):
            log.warning("store.statcache.damaged", record=VERIFIED_FILE)
            return
        self.known = {(dev, ino): (mode, size, mtime, ctime, digest)
                      for dev, ino, mode, size, mtime, ctime, digest in _INODE.iter_unpack(body)}

    def lookup(self, st: os.stat_result) -> str | None:
        """The recorded SHA-256 of this inode if its stat is exactly as recorded."""
        found = self.known.get((st.st_dev, st.st_ino))
        if found is None or found[:4] != (st.st_mode, st.st_size, st.st_mtime_ns,
                                          st.st_ctime_ns):
            return None
        self.confirmed[(st.st_dev, st.st_ino)] = found
        return found[4].hex()

    def confirm(self, st: os.stat_result, digest: str) -> None:
        """Record that this inode, as ``st`` describes it, was hashed to ``digest``."""
        if max(st.st_ctime_ns, st.st_mtime_ns) >= self.started_ns - RACY_MARGIN_NS:
            return  # racily clean: a change in the same tick could keep these times
        self.confirmed[(st.st_dev, st.st_ino)] = (st.st_mode, st.st_size, st.st_mtime_ns,
                                                  st.st_ctime_ns, bytes.fromhex(digest))

    def save(self, *, keep_others: bool) -> None:
        """Write the confirmed records (with the other known ones when ``keep_others``)."""
        if not self._cache.enabled:
            return
        records = {**self.known, **self.confirmed} if keep_others else self.confirmed
        body = b"".join(_INODE.pack(dev, ino, *fields)
                        for (dev, ino), fields in sorted(records.items()))
        header = json.dumps({"store": self._cache._store_id,
                             "sha256": hashlib.sha256(body).hexdigest()}).encode("ascii")
        self._cache._write(VERIFIED_FILE, _VERIFIED_MAGIC + header + b"\n\n" + body)
