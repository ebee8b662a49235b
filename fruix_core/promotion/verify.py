"""``verify``: re-derive every store object's name and content and report differences.

For an artifact object: its metadata must re-derive its own name (a renamed
object fails); its tree (without the object's own files) must have the
recorded tree signature; every node must match its manifest line (type,
size, sha256, symlink target, store mode ``0444``/``0555`` from the recorded
mode, hard-link groups sharing one inode) and the manifest must have the
recorded digest; no file may be writable or setuid; ``.references`` must be
empty; its ``.scm`` must have exactly the known fields, with the recorded
``nar-size`` equal to the tree's; names reserved for an object's own files
may not appear in its tree. For a result bundle: its metadata must re-derive
its name, the bundle and ``artifacts/`` must be ``0555`` directories,
``artifacts/<kind>`` must be exactly the recorded symlinks (compared as
bytes), to objects that exist; ``.references`` must list them.

Verifying the whole store also checks the content pool ``.links``: each
entry a regular file whose SHA-256 matches its name, with the canonical mode
and time; so a clean verify means the next promotion cannot link a wrong
entry. An entry is the inode of the object files with its content, which the
same verify has just read and hashed: when its ``lstat`` (size, modification
and change times) is still the one those bytes were read under, that digest
is compared with its name and the entry is not read a second time. Every
metadata file is opened without following symlinks or blocking on a FIFO,
so no planted node hangs or redirects verify.

With ``fast``, a file whose ``lstat`` (device, inode, mode, size,
modification and change times) is exactly what an earlier full verify
recorded after hashing it (:class:`~fruix_core.promotion.statcache.VerifiedInodes`)
is not read again: its recorded digest stands in for its content. An object
all of whose files are answered that way is checked in everything but its
tree signature (which needs every byte); any other object, and every pool
entry not answered that way, is checked in full. A full verify proves the
bytes; ``--fast`` proves the bytes *or* that nobody changed them without the
kernel noticing (see the store page of the operator guide).

Each problem names the object, the file inside it and what differs.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fruix_core.errors import FruixError
from fruix_core.promotion.display import shown
from fruix_core.promotion.identity import store_path_text
from fruix_core.promotion.ingest import FIXED_MTIME, canonical_mode
from fruix_core.promotion.layout import (
    MANIFEST_FILE,
    OBJECT_FILE,
    OBJECT_NAME_RE,
    REFERENCES_FILE,
    RESULT_FILE,
    StoreLayout,
)
from fruix_core.promotion.manifest import ManifestEntry, parse_manifest
from fruix_core.promotion.nar import NarHasher, read_digest, read_regular, walk
from fruix_core.promotion.records import read_bundle_record, read_object_record
from fruix_core.promotion.safeio import open_regular_at
from fruix_core.promotion.safeio import read_regular as read_file
from fruix_core.promotion.statcache import VerifiedInodes

_OWN_FILES = (OBJECT_FILE, MANIFEST_FILE, REFERENCES_FILE)
#: Inodes read and hashed by this verify: (dev, ino) -> (size, mtime_ns, ctime_ns, sha256).
_Hashed = dict[tuple[int, int], tuple[int, int, int, str]]
_POOL_NAME = re.compile(r"[0-9a-f]{64}-[rx]\Z")

__all__ = ["Problem", "VerifyReport", "verify"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One difference: in which object, which file (``""`` for the object), what."""

    object: str
    path: str
    problem: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify`."""

    checked: tuple[Path, ...]
    problems: tuple[Problem, ...] = field(default_factory=tuple)
    #: Objects whose files were all answered from recorded stat (``fast`` only).
    trusted: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems


def _objects(store: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(store))
    except OSError:
        return []
    return [store / name for name in names if OBJECT_NAME_RE.match(name)]


def verify(store: Path | str, paths: Sequence[Path | str] | None = None, *,
           fast: bool = False) -> VerifyReport:
    """Check store objects against their recorded identity.

    Every file hashed and found right is recorded for later ``fast`` checks
    (when this process may write the store's cache).

    :param store: the store directory.
    :param paths: objects to check (store paths or names); all objects when ``None``.
    :param fast: trust files whose stat is unchanged since a full check hashed them.
    :returns: a report listing every problem found; ``report.ok`` when none.
    """
    store = Path(store).absolute()
    if paths is None and not store.is_dir():
        return VerifyReport(checked=(), problems=(
            Problem(str(store), "", "store directory does not exist"),))
    targets = _objects(store) if paths is None else [
        Path(p) if os.path.isabs(p) or os.sep in str(p) else store / p for p in paths]
    inodes: VerifiedInodes | None = None
    try:
        inodes = VerifiedInodes(store)
    except OSError:
        pass  # no store directory: nothing to record
    if inodes is not None and fast:
        inodes.load()
    problems: list[Problem] = []
    trusted: list[Path] = []
    hashed: _Hashed = {}
    for target in targets:
        full = Path(target).absolute()
        found, whole = _verify_one(full, inodes, fast, hashed)
        problems.extend(found)
        if whole:
            trusted.append(full)
    if paths is None:
        problems.extend(_verify_pool(StoreLayout(store), inodes, fast, hashed))
    if inodes is not None:
        inodes.save(keep_others=paths is not None)
    return VerifyReport(checked=tuple(Path(t).absolute() for t in targets),
                        problems=tuple(problems), trusted=tuple(trusted))


def _verify_one(path: Path, inodes: VerifiedInodes | None, fast: bool,
                hashed: _Hashed | None = None) -> tuple[list[Problem], bool]:
    """Problems of one object, and whether it was answered from recorded stat."""
    name = shown(path)
    if not os.path.lexists(path):
        return [Problem(name, "", "no such store object")], False
    if os.path.islink(path) or not path.is_dir():
        return [Problem(name, "", "not a directory")], False
    found: list[Problem] = []
    whole = False
    try:
        if os.path.lexists(path / OBJECT_FILE):
            if fast and inodes is not None:
                quick = _verify_artifact_fast(path, inodes)
                if quick is not None:
                    return quick, True
            found.extend(_verify_artifact(path, inodes, hashed))
        elif os.path.lexists(path / RESULT_FILE):
            found.extend(_verify_bundle(path))
        else:
            found.append(Problem(name, "", f"neither {OBJECT_FILE} nor {RESULT_FILE} present"))
    except FruixError as err:
        found.append(Problem(name, "", str(err)))
    except _Unreadable as err:
        found.append(Problem(name, "", f"cannot be checked further: {err}"))
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        where = f" ({shown(err.filename)})" if isinstance(err, OSError) and err.filename else ""
        found.append(Problem(name, "", f"cannot be checked: {shown(reason)}{where}"))
    return found, whole


def _check_name(path: Path, recorded: str, derived: str) -> Iterator[Problem]:
    if path.name != derived:
        yield Problem(shown(path), "",
                      f"name does not match its identity: expected {shown(derived)}")
    if recorded != derived:
        yield Problem(shown(path), "",
                      f"recorded name {shown(recorded)} does not match its identity")


def _component_key(rel: bytes) -> list[bytes]:
    return rel.split(b"/") if rel else []


def _sha256_regular(path: Path) -> str:
    fd, _st = open_regular_at(os.fspath(path))
    try:
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _verify_header(path: Path) -> Iterator[Problem]:
    """An artifact object's own files, name and manifest digest."""
    obj = shown(path)
    yield from _check_own_files(path, set(_OWN_FILES))
    record = read_object_record(path / OBJECT_FILE)
    yield from _check_name(path, record.name, record.derived_name)
    if _sha256_regular(path / MANIFEST_FILE) != record.manifest_sha256:
        yield Problem(obj, MANIFEST_FILE, "manifest digest differs from the recorded one")
    if read_file(path / REFERENCES_FILE, limit=1 << 20) != b"":
        yield Problem(obj, REFERENCES_FILE, "artifact objects refer to nothing; expected empty")


def _verify_artifact_fast(path: Path, inodes: VerifiedInodes) -> list[Problem] | None:
    """The object checked from recorded stat, or ``None`` when a file needs reading.

    Walks without opening any file (``lstat`` only); every regular file must
    be answered by :meth:`VerifiedInodes.lookup`, then the nodes are compared
    with the manifest as in a full check. The tree signature is not
    recomputed: every file's content and the tree's shape match the manifest
    the signature was computed with.
    """
    nodes: list[tuple[bytes, os.stat_result, bytes | None, str | None]] = []
    missed = False

    def observe(rel: bytes, st: os.stat_result, target: bytes | None) -> None:
        nonlocal missed
        digest = None
        if stat.S_ISREG(st.st_mode):
            digest = inodes.lookup(st)
            missed = missed or digest is None
        nodes.append((rel, st, target, digest))

    problems = list(_verify_header(path))
    if problems:
        return None  # checked in full, with every message
    walk(os.fsencode(path), on_entry=observe, with_contents=False,
         exclude_top=tuple(os.fsencode(n) for n in _OWN_FILES))
    if missed:
        return None
    manifest_path = path / MANIFEST_FILE
    fd, _st = open_regular_at(os.fspath(manifest_path))
    with os.fdopen(fd, "rb") as stream:
        merge = _Merge(shown(path), parse_manifest(stream, shown(manifest_path)), problems)
        for rel, st, target, digest in nodes:
            merge.node(rel, st, target, digest)
        merge.finish()
    return problems


def _verify_artifact(path: Path, verified: VerifiedInodes | None = None,
                     hashed: _Hashed | None = None) -> Iterator[Problem]:
    obj = shown(path)
    yield from _verify_header(path)
    record = read_object_record(path / OBJECT_FILE)
    manifest_path = path / MANIFEST_FILE
    problems: list[Problem] = []
    # Walk in NAR order while streaming the manifest alongside (a merge join).
    fd, _st = open_regular_at(os.fspath(manifest_path))
    with os.fdopen(fd, "rb") as stream:
        merge = _Merge(obj, parse_manifest(stream, shown(manifest_path)), problems, verified)

        def observe(rel: bytes, st: os.stat_result, target: bytes | None) -> None:
            if not stat.S_ISREG(st.st_mode):
                merge.node(rel, st, target, None)

        # Digest of each multiply-linked inode read: its other names feed the NAR only.
        inodes: dict[tuple[int, int], str] = {}

        def read(fd: int, rel: bytes, st: os.stat_result, nar: NarHasher) -> None:
            key = (st.st_dev, st.st_ino)
            known = inodes.get(key) if st.st_nlink > 1 else None
            if known is not None:
                read_regular(fd, rel, st, nar)
                merge.node(rel, st, None, known)
                return
            digest = read_digest(fd, rel, st, nar)
            if st.st_nlink > 1:
                inodes[key] = digest
                if hashed is not None:  # (a pool entry has a second name)
                    hashed[key] = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)
            merge.node(rel, st, None, digest)

        nar = walk(os.fsencode(path), on_entry=observe, on_regular=read,
                   exclude_top=tuple(os.fsencode(n) for n in _OWN_FILES))
        merge.finish()
    yield from problems
    if nar.hexdigest() != record.tree_signature:
        yield Problem(obj, "", f"tree signature is sha256:{nar.hexdigest()}, identity records "
                               f"sha256:{record.tree_signature}")
    if nar.size != record.nar_size:
        yield Problem(obj, OBJECT_FILE, f"nar-size is {record.nar_size}, the tree's NAR has "
                                        f"{nar.size} bytes")


class _Merge:
    """Compares walked nodes with manifest entries, both in NAR order."""

    def __init__(self, obj: str, entries: Iterator[ManifestEntry], problems: list[Problem],
                 inodes: VerifiedInodes | None = None) -> None:
        self.obj = obj
        self.entries = entries
        self.problems = problems
        self.inodes = inodes  # files found right are recorded here
        self.current = next(entries, None)
        self.groups: dict[bytes, tuple[int, int]] = {}

    def _show(self, rel: bytes) -> str:
        return shown(rel) or "."

    def _add(self, rel: bytes, message: str) -> None:
        self.problems.append(Problem(self.obj, self._show(rel), message))

    def node(self, rel: bytes, st: os.stat_result, target: bytes | None,
             digest: str | None) -> None:
        """Compare one walked node with the manifest entries up to it."""
        key = _component_key(rel)
        while self.current is not None and _component_key(self.current.rel) < key:
            self._add(self.current.rel, "missing (listed in the manifest)")
            self.current = next(self.entries, None)
        if self.current is None or self.current.rel != rel:
            self._add(rel, "not in the manifest (added)")
            return
        entry, self.current = self.current, next(self.entries, None)
        self._compare(entry, rel, st, target, digest)

    def _compare(self, entry: ManifestEntry, rel: bytes, st: os.stat_result,
                 target: bytes | None, digest: str | None) -> None:
        mode = st.st_mode
        kind = ("dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode)
                else "file" if stat.S_ISREG(mode) else "special")
        if kind != entry.type:
            self._add(rel, f"type is {kind}, manifest says {entry.type}")
            return
        if kind == "link":
            if target != entry.link:
                self._add(rel, f"symlink target is {shown(target or b'')!r}, manifest "
                               f"says {shown(entry.link or b'')!r}")
            return
        expected = canonical_mode(entry.mode or 0, is_dir=kind == "dir")
        if stat.S_IMODE(mode) != expected:
            self._add(rel, f"mode is {stat.S_IMODE(mode):04o}, expected {expected:04o} "
                           f"(recorded {entry.mode or 0:04o})")
        if kind != "file":
            return
        if st.st_size != entry.size:
            self._add(rel, f"size is {st.st_size}, manifest says {entry.size}")
        if digest != entry.sha256:
            self._add(rel, f"content differs (sha256 {digest}, manifest says {entry.sha256})")
        elif self.inodes is not None and digest is not None and st.st_size == entry.size:
            self.inodes.confirm(st, digest)
        if entry.nlink > 1:
            inode = (st.st_dev, st.st_ino)
            if entry.hardlink is None:
                self.groups[rel] = inode
            elif self.groups.get(entry.hardlink) != inode:
                self._add(rel, f"not hard-linked to ./{shown(entry.hardlink)} "
                               "as the manifest records")

    def finish(self) -> None:
        while self.current is not None:
            self._add(self.current.rel, "missing (listed in the manifest)")
            self.current = next(self.entries, None)


def _check_own_files(path: Path, names: set[str]) -> Iterator[Problem]:
    for name in sorted(names):
        full = path / name
        st = os.lstat(full) if os.path.lexists(full) else None
        if st is None or not stat.S_ISREG(st.st_mode):
            yield Problem(shown(path), name, "missing or not a regular file")
        elif stat.S_IMODE(st.st_mode) != 0o444:
            yield Problem(shown(path), name,
                          f"mode is {stat.S_IMODE(st.st_mode):04o}, expected 0444")
    if not all(stat.S_ISREG(os.lstat(path / n).st_mode) for n in names
               if os.path.lexists(path / n)):
        raise _Unreadable("its own files are not regular files")


class _Unreadable(ValueError):
    """An object's own files cannot be read safely; checked no further."""


def _dir_mode(obj: str, path: Path, rel: str) -> Iterator[Problem]:
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        yield Problem(obj, rel, "not a directory")
    elif stat.S_IMODE(st.st_mode) != 0o555:
        yield Problem(obj, rel, f"mode is {stat.S_IMODE(st.st_mode):04o}, expected 0555")


def _verify_bundle(path: Path) -> Iterator[Problem]:
    obj = shown(path)
    yield from _check_own_files(path, {RESULT_FILE, REFERENCES_FILE})
    record = read_bundle_record(path / RESULT_FILE)
    yield from _check_name(path, record.name, record.derived_name)
    yield from _dir_mode(obj, path, "")
    extra = sorted(set(os.listdir(path)) - {RESULT_FILE, REFERENCES_FILE, "artifacts"})
    for name in extra:
        yield Problem(obj, shown(name), "unexpected file in the bundle")
    links = path / "artifacts"
    present: list[str] = []
    if os.path.lexists(links):
        yield from _dir_mode(obj, links, "artifacts")
        if links.is_dir() and not links.is_symlink():
            present = sorted(os.listdir(links))
    else:
        yield Problem(obj, "artifacts", "missing directory")
    for kind in sorted(set(present) | set(record.artifacts)):
        link = links / kind
        expected = record.artifacts.get(kind)
        where = f"artifacts/{shown(kind)}"
        if expected is None:
            yield Problem(obj, where, "unexpected entry")
        elif not link.is_symlink():
            yield Problem(obj, where, "missing symlink")
        else:
            target = os.readlink(os.fsencode(link))
            if store_path_text(target) != expected:
                yield Problem(obj, where, f"points to {shown(target)}, identity records "
                                          f"{shown(expected)}")
            elif not os.path.isdir(target) or os.path.islink(target):
                yield Problem(obj, where, f"target {shown(target)} does not exist")
    refs = read_file(path / REFERENCES_FILE, limit=1 << 20).split(b"\n")
    if refs[-1:] != [b""] or sorted(store_path_text(r) for r in refs[:-1]) != sorted(
            record.artifacts.values()) or refs[:-1] != sorted(refs[:-1]):
        yield Problem(obj, REFERENCES_FILE, "does not list exactly the artifact objects")


def _verify_pool(layout: StoreLayout, inodes: VerifiedInodes | None = None,
                 fast: bool = False, hashed: _Hashed | None = None) -> Iterator[Problem]:
    pool = layout.links
    if not os.path.lexists(pool):
        return
    if not stat.S_ISDIR(os.lstat(pool).st_mode):
        yield Problem(shown(pool), "", "the content pool is not a directory")
        return
    where = shown(pool)
    for name in sorted(os.listdir(pool)):
        if not _POOL_NAME.match(name):
            yield Problem(where, shown(name), "unexpected entry in the content pool")
            continue
        full = pool / name
        st = os.lstat(full)
        if not stat.S_ISREG(st.st_mode):
            yield Problem(where, name, "not a regular file")
            continue
        expected = 0o555 if name.endswith("-x") else 0o444
        if stat.S_IMODE(st.st_mode) != expected:
            yield Problem(where, name,
                          f"mode is {stat.S_IMODE(st.st_mode):04o}, expected {expected:04o}")
        if st.st_mtime != FIXED_MTIME:
            yield Problem(where, name, "modification time is not the store's")
        if fast and inodes is not None and inodes.lookup(st) == name[:64]:
            continue
        read = hashed.get((st.st_dev, st.st_ino)) if hashed is not None else None
        if read is not None and read[:3] == (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            digest = read[3]  # these bytes were read and hashed by this verify
        else:
            try:
                digest = _sha256_regular(full)
            except OSError as err:
                yield Problem(where, name, f"cannot be read: {err.strerror}")
                continue
        if digest != name[:64]:
            yield Problem(where, name, f"content does not match its name (sha256 {digest})")
        elif inodes is not None:
            inodes.confirm(st, digest)
