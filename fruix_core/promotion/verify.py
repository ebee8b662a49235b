"""``verify``: re-derive every store object's name and content and report differences.

For an artifact object: its metadata must re-derive its own name (a renamed
object fails); its tree (without the object's own files) must have the
recorded tree signature; every node must match its manifest line (type,
size, sha256, symlink target, store mode ``0444``/``0555`` from the recorded
mode, hard-link groups sharing one inode) and the manifest must have the
recorded digest; no file may be writable or setuid; ``.references`` must be
empty. For a result bundle: its metadata must re-derive its name, and
``artifacts/<kind>`` must be exactly the recorded symlinks, to objects that
exist; ``.references`` must list them.

Each problem names the object, the file inside it and what differs.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fruix_core.errors import FruixError
from fruix_core.promotion.ingest import canonical_mode
from fruix_core.promotion.layout import (
    MANIFEST_FILE,
    OBJECT_FILE,
    OBJECT_NAME_RE,
    REFERENCES_FILE,
    RESERVED_NAMES,
    RESULT_FILE,
)
from fruix_core.promotion.manifest import ManifestEntry, parse_manifest
from fruix_core.promotion.nar import NarHasher, read_regular, walk
from fruix_core.promotion.records import read_bundle_record, read_object_record

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

    @property
    def ok(self) -> bool:
        return not self.problems


def _objects(store: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(store))
    except OSError:
        return []
    return [store / name for name in names if OBJECT_NAME_RE.match(name)]


def verify(store: Path | str, paths: Sequence[Path | str] | None = None) -> VerifyReport:
    """Check store objects against their recorded identity.

    :param store: the store directory.
    :param paths: objects to check (store paths or names); all objects when ``None``.
    :returns: a report listing every problem found; ``report.ok`` when none.
    """
    store = Path(store).absolute()
    if paths is None and not store.is_dir():
        return VerifyReport(checked=(), problems=(
            Problem(str(store), "", "store directory does not exist"),))
    targets = _objects(store) if paths is None else [
        Path(p) if os.path.isabs(p) or os.sep in str(p) else store / p for p in paths]
    problems: list[Problem] = []
    for target in targets:
        problems.extend(_verify_one(Path(target).absolute()))
    return VerifyReport(checked=tuple(Path(t).absolute() for t in targets),
                        problems=tuple(problems))


def _verify_one(path: Path) -> list[Problem]:
    name = str(path)
    if not os.path.lexists(path):
        return [Problem(name, "", "no such store object")]
    if os.path.islink(path) or not path.is_dir():
        return [Problem(name, "", "not a directory")]
    try:
        if os.path.lexists(path / OBJECT_FILE):
            return list(_verify_artifact(path))
        if os.path.lexists(path / RESULT_FILE):
            return list(_verify_bundle(path))
    except FruixError as err:
        return [Problem(name, "", str(err))]
    except (OSError, ValueError) as err:
        return [Problem(name, "", f"cannot be checked: {err}")]
    return [Problem(name, "", f"neither {OBJECT_FILE} nor {RESULT_FILE} present")]


def _check_name(path: Path, recorded: str, derived: str) -> Iterator[Problem]:
    if path.name != derived:
        yield Problem(str(path), "", f"name does not match its identity: expected {derived}")
    if recorded != derived:
        yield Problem(str(path), "", f"recorded name {recorded} does not match its identity")


def _component_key(rel: bytes) -> list[bytes]:
    return rel.split(b"/") if rel else []


def _verify_artifact(path: Path) -> Iterator[Problem]:
    obj = str(path)
    record = read_object_record(path / OBJECT_FILE)
    yield from _check_name(path, record.name, record.derived_name)
    yield from _check_own_files(path, {OBJECT_FILE, MANIFEST_FILE, REFERENCES_FILE})
    manifest_path = path / MANIFEST_FILE
    digest = hashlib.sha256()
    with open(manifest_path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != record.manifest_sha256:
        yield Problem(obj, MANIFEST_FILE, "manifest digest differs from the recorded one")
    problems: list[Problem] = []
    # Walk in NAR order while streaming the manifest alongside (a merge join).
    with open(manifest_path, "rb") as stream:
        merge = _Merge(obj, parse_manifest(stream, str(manifest_path)), problems)

        def observe(rel: bytes, st: os.stat_result, target: bytes | None) -> None:
            if not stat.S_ISREG(st.st_mode):
                merge.node(rel, st, target, None)

        def read(p: bytes, rel: bytes, st: os.stat_result, nar: NarHasher) -> None:
            file_hash = hashlib.sha256()
            read_regular(p, rel, st, nar, file_hash.update)
            merge.node(rel, st, None, file_hash.hexdigest())

        nar = walk(os.fsencode(path), on_entry=observe, on_regular=read,
                   exclude_top=tuple(os.fsencode(n) for n in RESERVED_NAMES))
        merge.finish()
    yield from problems
    if nar.hexdigest() != record.tree_signature:
        yield Problem(obj, "", f"tree signature is sha256:{nar.hexdigest()}, identity records "
                               f"sha256:{record.tree_signature}")
    refs = (path / REFERENCES_FILE).read_bytes() if (path / REFERENCES_FILE).is_file() else None
    if refs != b"":
        yield Problem(obj, REFERENCES_FILE, "artifact objects refer to nothing; expected empty")


class _Merge:
    """Compares walked nodes with manifest entries, both in NAR order."""

    def __init__(self, obj: str, entries: Iterator[ManifestEntry], problems: list[Problem]):
        self.obj = obj
        self.entries = entries
        self.problems = problems
        self.current = next(entries, None)
        self.groups: dict[bytes, tuple[int, int]] = {}

    def _show(self, rel: bytes) -> str:
        return os.fsdecode(rel) or "."

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
                self._add(rel, f"symlink target is {os.fsdecode(target or b'')!r}, manifest "
                               f"says {os.fsdecode(entry.link or b'')!r}")
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
        if entry.nlink > 1:
            inode = (st.st_dev, st.st_ino)
            if entry.hardlink is None:
                self.groups[rel] = inode
            elif self.groups.get(entry.hardlink) != inode:
                self._add(rel, f"not hard-linked to ./{os.fsdecode(entry.hardlink)} "
                               "as the manifest records")

    def finish(self) -> None:
        while self.current is not None:
            self._add(self.current.rel, "missing (listed in the manifest)")
            self.current = next(self.entries, None)


def _check_own_files(path: Path, names: set[str]) -> Iterator[Problem]:
    for name in sorted(names):
        full = path / name
        if not full.is_file() or full.is_symlink():
            yield Problem(str(path), name, "missing or not a regular file")
        elif stat.S_IMODE(os.lstat(full).st_mode) & 0o7222:
            yield Problem(str(path), name, "writable or setuid in the store")


def _verify_bundle(path: Path) -> Iterator[Problem]:
    obj = str(path)
    record = read_bundle_record(path / RESULT_FILE)
    yield from _check_name(path, record.name, record.derived_name)
    yield from _check_own_files(path, {RESULT_FILE, REFERENCES_FILE})
    extra = sorted(set(os.listdir(path)) - {RESULT_FILE, REFERENCES_FILE, "artifacts"})
    for name in extra:
        yield Problem(obj, name, "unexpected file in the bundle")
    links = path / "artifacts"
    present = sorted(os.listdir(links)) if links.is_dir() and not links.is_symlink() else []
    for kind in sorted(set(present) | set(record.artifacts)):
        link = links / kind
        expected = record.artifacts.get(kind)
        if expected is None:
            yield Problem(obj, f"artifacts/{kind}", "unexpected entry")
        elif not link.is_symlink():
            yield Problem(obj, f"artifacts/{kind}", "missing symlink")
        elif os.readlink(link) != expected:
            yield Problem(obj, f"artifacts/{kind}",
                          f"points to {os.readlink(link)}, identity records {expected}")
        elif not os.path.isdir(expected):
            yield Problem(obj, f"artifacts/{kind}", f"target {expected} does not exist")
    refs_path = path / REFERENCES_FILE
    if refs_path.is_file():
        refs = refs_path.read_text("utf-8", "replace")
        wanted = "".join(f"{p}\n" for p in sorted(record.artifacts.values()))
        if refs != wanted:
            yield Problem(obj, REFERENCES_FILE, "does not list exactly the artifact objects")
