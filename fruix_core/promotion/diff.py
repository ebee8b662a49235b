"""``fruix store diff``: what changed between two bundles or two artifact objects.

Both sides are compared through their per-file manifests (never by walking
the trees), so a diff of two worlds reads two text files. Lines are read
generically, keyword by keyword, so keywords added to the manifest later
(``uname``, ``gname``, ``flags`` from a METALOG) are compared too. Each
changed path names the aspects that differ:

==========  ===============================================
content     ``sha256digest`` or ``size`` (a file's bytes)
type        file, dir or link
mode        permission bits (setuid/setgid included)
owner       ``uname``, ``gname``, ``uid``, ``gid``
flags       file flags (``schg``, ...)
link        a symbolic link's target
hardlink    membership of a hard-link group
==========  ===============================================

A side is a store path or object name (a bundle or an artifact object), or
a run id (``latest`` too) resolved through the results directory to the
bundle its promotion published. Nothing outside the store is followed: a
bundle's ``artifacts/<kind>`` link must name an object of the same store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fruix_core.errors import UsageError, VerificationError
from fruix_core.model import ARTIFACT_KINDS
from fruix_core.promotion.display import shown
from fruix_core.promotion.layout import MANIFEST_FILE, OBJECT_FILE, OBJECT_NAME_RE, RESULT_FILE
from fruix_core.promotion.manifest import encode_path, parse_manifest_fields
from fruix_core.promotion.safeio import DIR_FLAGS, open_regular_at

__all__ = [
    "Change",
    "DiffSide",
    "StoreDiff",
    "bundle_objects",
    "bundle_of_run",
    "bundles_by_run",
    "diff_sides",
    "read_manifest_fields",
    "resolve_side",
]

#: Manifest keyword -> the aspect a difference in it is reported as.
ASPECTS: Mapping[str, str] = {
    "type": "type", "sha256digest": "content", "size": "content", "mode": "mode",
    "uname": "owner", "gname": "owner", "uid": "owner", "gid": "owner",
    "flags": "flags", "link": "link", "nlink": "hardlink", "hardlink": "hardlink",
}
_BUNDLE_MARK = "-fruix-native-build-result-"

Fields = dict[str, str]


@dataclass(frozen=True, slots=True)
class DiffSide:
    """One side of a diff: artifact kind -> store object path."""

    label: str                      # what the operator typed
    kind: str                       # "bundle" or "artifact"
    path: Path                      # the bundle or the artifact object
    objects: Mapping[str, Path]     # kind -> artifact object
    run_id: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {"argument": shown(self.label), "kind": self.kind, "path": shown(self.path),
                "run_id": shown(self.run_id) if self.run_id is not None else None,
                "objects": {k: shown(p) for k, p in self.objects.items()}}


@dataclass(frozen=True, slots=True)
class Change:
    """One path that differs; ``path`` is manifest-encoded (``./usr/bin/wc``)."""

    artifact: str
    path: str
    change: str                     # added | removed | changed
    aspects: tuple[str, ...] = ()
    size_a: int | None = None
    size_b: int | None = None
    details: Mapping[str, tuple[str | None, str | None]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"artifact": self.artifact, "path": self.path, "change": self.change,
                "aspects": list(self.aspects), "size_a": self.size_a, "size_b": self.size_b,
                "details": {k: {"a": a, "b": b} for k, (a, b) in self.details.items()}}


@dataclass(frozen=True, slots=True)
class StoreDiff:
    """The outcome of :func:`diff_sides`."""

    a: DiffSide
    b: DiffSide
    changes: tuple[Change, ...]
    identical: tuple[str, ...]      # artifacts whose manifests are equal

    def counts(self) -> dict[str, int]:
        out = {"added": 0, "removed": 0, "changed": 0}
        for change in self.changes:
            out[change.change] += 1
        return out

    def summary(self) -> dict[str, object]:
        counts = self.counts()
        grown = sum((c.size_b or 0) for c in self.changes if c.change == "added")
        shrunk = sum((c.size_a or 0) for c in self.changes if c.change == "removed")
        before = sum((c.size_a or 0) for c in self.changes if c.change == "changed")
        after = sum((c.size_b or 0) for c in self.changes if c.change == "changed")
        return {**counts, "bytes_added": grown, "bytes_removed": shrunk,
                "changed_bytes_a": before, "changed_bytes_b": after,
                "identical_artifacts": list(self.identical)}

    def summary_line(self) -> str:
        c = self.counts()
        if not self.changes:
            return "no differences"
        s = self.summary()
        return (f"{sum(c.values())} paths differ: {c['added']} added "
                f"({s['bytes_added']} bytes), {c['removed']} removed "
                f"({s['bytes_removed']} bytes), {c['changed']} changed "
                f"({s['changed_bytes_a']} -> {s['changed_bytes_b']} bytes)")


# -- reading manifests ---------------------------------------------------------------


def _open_object_file(obj: Path, name: str) -> int:
    """A descriptor of ``obj/name``, neither the object nor the file followed if a symlink."""
    dfd = os.open(obj, DIR_FLAGS)
    try:
        fd, _st = open_regular_at(name, dfd)
    finally:
        os.close(dfd)
    return fd


def read_manifest_fields(obj: Path) -> dict[bytes, Fields]:
    """The manifest of the artifact object ``obj``: raw path -> {keyword: value}.

    :raises VerificationError: when the manifest is missing or malformed.
    """
    source = f"{shown(obj)}/{MANIFEST_FILE}"
    try:
        fd = _open_object_file(obj, MANIFEST_FILE)
    except OSError as err:
        raise VerificationError(f"{source}: cannot read: {err.strerror or err}") from None
    with os.fdopen(fd, "rb") as stream:
        # Values are ASCII (digests, octal, names) or vis-encoded bytes: keep them encoded.
        return {rel: {key: value.decode("ascii", "replace") for key, value in fields.items()}
                for rel, fields in parse_manifest_fields(stream, source)}


# -- resolving the operator's arguments ------------------------------------------------


def _kind_of_object(path: Path) -> str | None:
    if os.path.lexists(path / OBJECT_FILE):
        return "artifact"
    if os.path.lexists(path / RESULT_FILE):
        return "bundle"
    return None


def _artifact_kind(path: Path) -> str:
    name = path.name
    for kind in ARTIFACT_KINDS:
        if f"-fruix-native-{kind}-" in name:
            return kind
    return "artifact"


def bundle_objects(bundle: Path) -> dict[str, Path]:
    """kind -> artifact object of ``bundle``; each link must stay in the bundle's store."""
    links = bundle / "artifacts"
    if links.is_symlink() or not links.is_dir():
        raise VerificationError(f"{shown(bundle)}: no artifacts directory")
    store = bundle.parent
    out: dict[str, Path] = {}
    for kind in sorted(os.listdir(links)):
        link = links / kind
        if not link.is_symlink():
            raise VerificationError(f"{shown(link)}: not a symlink to an artifact object")
        target = Path(os.readlink(link))
        if not OBJECT_NAME_RE.match(target.name) or not _same_dir(target.parent, store):
            raise VerificationError(f"{shown(link)}: points to {shown(target)}, not an object "
                                    f"of the store {shown(store)}; not followed")
        if target.is_symlink() or not target.is_dir():
            raise VerificationError(f"{shown(link)}: target {shown(target)} does not exist")
        out[kind] = target
    return out


def _same_dir(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one directory (a store reached through a symlink too)."""
    try:
        return a.is_absolute() and os.path.samefile(a, b)
    except OSError:
        return False


def bundles_by_run(store: Path) -> dict[str, list[Path]]:
    """Run id -> bundles in ``store`` recording it (usually one)."""
    from fruix_core.promotion.records import read_bundle_record

    out: dict[str, list[Path]] = {}
    try:
        names = sorted(os.listdir(store))
    except OSError:
        return out
    for name in names:
        if _BUNDLE_MARK not in name or not OBJECT_NAME_RE.match(name):
            continue
        path = store / name
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            record = read_bundle_record(path / RESULT_FILE)
        except Exception:  # noqa: BLE001 - an unreadable bundle names no run; verify reports it
            continue
        out.setdefault(record.run_id, []).append(path)
    return out


def bundle_of_run(store: Path, run_id: str, metadata: Mapping[str, str],
                  index: Mapping[str, list[Path]] | None = None) -> Path | None:
    """The bundle a run's promotion published into ``store``, or ``None``.

    Run ids are unique within one results directory only; when several
    bundles record ``run_id``, the run's base version and executor (from its
    metadata) pick the one whose name ends with them.
    """
    found = (index if index is not None else bundles_by_run(store)).get(run_id, [])
    if len(found) > 1:
        tail = f"-{metadata.get('base_version', '')}-{metadata.get('executor', '')}"
        found = [p for p in found if p.name.endswith(tail)]
    if len(found) > 1:
        raise UsageError(f"run {run_id} matches several bundles in {shown(store)}: "
                         + ", ".join(shown(p.name) for p in found) + "; name one of them")
    return found[0] if found else None


def _side_of_object(label: str, path: Path, run_id: str | None = None) -> DiffSide:
    kind = _kind_of_object(path)
    if kind == "artifact":
        return DiffSide(label, "artifact", path, {_artifact_kind(path): path}, run_id)
    if kind == "bundle":
        return DiffSide(label, "bundle", path, bundle_objects(path), run_id)
    raise UsageError(f"{shown(path)}: not a store object (neither {OBJECT_FILE} "
                     f"nor {RESULT_FILE} present)")


def resolve_side(argument: str, *, store: Path, results: Path) -> DiffSide:
    """Turn a store path, object name or run id into a :class:`DiffSide`.

    :raises UsageError: (exit 2) when ``argument`` names nothing.
    """
    from fruix_core.resultroot import resolve_run

    if os.sep in argument:
        return _side_of_path(argument, store)
    if OBJECT_NAME_RE.match(argument):
        path = store.absolute() / argument
        if not os.path.lexists(path) or path.is_symlink() or not path.is_dir():
            raise UsageError(f"no store object {shown(argument)} in {shown(store)}")
        return _side_of_object(argument, path)
    try:
        root = resolve_run(results, argument)
    except UsageError:
        if os.path.lexists(argument):  # a relative path without a slash
            return _side_of_path(argument, store)
        raise UsageError(f"{shown(argument)}: no store object, store path or run by that "
                         f"name (store {shown(store)}, results {shown(results)})") from None
    return _side_of_run(argument, root.run_id, root.read_metadata(), store)


def _side_of_path(argument: str, store: Path) -> DiffSide:
    from fruix_core.resultroot import ResultRoot

    candidate = Path(argument)
    if not os.path.lexists(candidate):
        raise UsageError(f"{shown(argument)}: no such store object or result root")
    # The operator's own argument may be a link (a GC root, results/latest): resolve it
    # once here; nothing inside is followed.
    real = candidate.resolve() if candidate.is_symlink() else candidate.absolute()
    if not real.is_dir():
        raise UsageError(f"{shown(argument)}: not a directory")
    if _kind_of_object(real) is None and (real / "status").exists():
        root = ResultRoot(real)
        return _side_of_run(argument, root.run_id, root.read_metadata(), store)
    return _side_of_object(argument, real)


def _side_of_run(label: str, run_id: str, metadata: Mapping[str, str], store: Path) -> DiffSide:
    bundle = bundle_of_run(store.absolute(), run_id, metadata)
    if bundle is None:
        raise UsageError(f"run {run_id} has no bundle in the store {shown(store)} "
                         "(was it promoted? see fruix native-build promote)")
    return _side_of_object(label, bundle, run_id)


# -- comparing --------------------------------------------------------------------------


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _compare(artifact: str, a: dict[bytes, Fields], b: dict[bytes, Fields]) -> Iterator[Change]:
    for rel in sorted(set(a) | set(b)):
        shown_path = "./" + encode_path(rel).decode("ascii") if rel else "."
        fa, fb = a.get(rel), b.get(rel)
        if fa is None and fb is not None:
            yield Change(artifact, shown_path, "added", size_b=_int(fb.get("size")))
        elif fb is None and fa is not None:
            yield Change(artifact, shown_path, "removed", size_a=_int(fa.get("size")))
        elif fa is not None and fb is not None and fa != fb:
            details: dict[str, tuple[str | None, str | None]] = {}
            aspects: list[str] = []
            for key in sorted(set(fa) | set(fb)):
                if fa.get(key) == fb.get(key):
                    continue
                details[key] = (fa.get(key), fb.get(key))
                aspect = ASPECTS.get(key, key)
                if aspect not in aspects:
                    aspects.append(aspect)
            yield Change(artifact, shown_path, "changed", tuple(aspects),
                         _int(fa.get("size")), _int(fb.get("size")), details)


def diff_sides(a: DiffSide, b: DiffSide,
               cache: dict[Path, dict[bytes, Fields]] | None = None) -> StoreDiff:
    """Compare two sides, artifact by artifact, through their manifests.

    :param cache: manifests already read, by object path (filled as they are read);
        store objects never change, so a caller comparing many pairs shares one.

    :raises UsageError: when a bundle is compared with an artifact object.
    :raises VerificationError: when a manifest cannot be read.
    """
    if a.kind != b.kind:
        raise UsageError(f"cannot compare a {a.kind} ({shown(a.label)}) with a {b.kind} "
                         f"({shown(b.label)})")
    pairs: list[tuple[str, Path | None, Path | None]]
    if a.kind == "artifact":
        ka, kb = next(iter(a.objects)), next(iter(b.objects))
        pairs = [(ka if ka == kb else f"{ka}->{kb}", a.objects[ka], b.objects[kb])]
    else:
        kinds = [k for k in ARTIFACT_KINDS if k in a.objects or k in b.objects]
        kinds += sorted((set(a.objects) | set(b.objects)) - set(kinds))
        pairs = [(shown(k), a.objects.get(k), b.objects.get(k)) for k in kinds]
    changes: list[Change] = []
    identical: list[str] = []
    for label, pa, pb in pairs:
        ma = _manifest(pa, cache)
        mb = _manifest(pb, cache)
        found = list(_compare(label, ma, mb))
        changes.extend(found)
        if not found and pa is not None and pb is not None:
            identical.append(label)
    return StoreDiff(a, b, tuple(changes), tuple(identical))



def _manifest(obj: Path | None, cache: dict[Path, dict[bytes, Fields]] | None
              ) -> dict[bytes, Fields]:
    if obj is None:
        return {}
    if cache is None:
        return read_manifest_fields(obj)
    if obj not in cache:
        cache[obj] = read_manifest_fields(obj)
    return cache[obj]
