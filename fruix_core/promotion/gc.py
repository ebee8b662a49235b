"""Garbage collection of a store: roots, reachability, deletion that survives ``kill -9``.

Roots are

- explicit pins, ``STORE/.roots/<name>``: symlinks to store objects made by
  ``fruix store pin`` (Nix-style indirect roots, listed by ``fruix store roots``);
- for every results directory that promoted into this store (recorded as
  ``STORE/.roots/.results/<h>``, a symlink to it, by each promotion): the
  bundle of its ``latest`` run and of its last ``keep_last`` successful runs
  (run ids sort by time).

Everything reachable from a root through ``.references`` stays; every other
object is deleted, bundles before artifacts (so no surviving object ever
refers to a deleted one), then every pool entry no object links any more,
stale lock files and temporaries of dead promoters.

Safety: the collector holds the store's GC lock exclusively
(:func:`~fruix_core.promotion.locking.gc_lock`) while every promotion holds it
shared, so nothing a promotion is reusing or has just published is deleted
under it. An object is first renamed to ``STORE/.trash-<name>`` (atomic: its
name is gone at once) and then removed; a collector killed at any moment
leaves at most trash that the next collection removes first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from fruix_core.errors import StoreError, UsageError
from fruix_core.promotion import seams
from fruix_core.promotion.display import shown
from fruix_core.promotion.layout import (
    OBJECT_FILE,
    OBJECT_NAME_RE,
    REFERENCES_FILE,
    RESULT_FILE,
    StoreLayout,
)
from fruix_core.promotion.locking import gc_lock, remove_stale_temporaries
from fruix_core.promotion.safeio import read_regular
from fruix_core.promotion.statcache import CACHE_DIR
from fruix_core.promotion.storeio import remove_tree, store_errors

__all__ = [
    "DEFAULT_KEEP_LAST",
    "GcReport",
    "Root",
    "collect_garbage",
    "list_roots",
    "pin",
    "pinned_run_ids",
    "register_results_dir",
    "unpin",
]

log = structlog.get_logger(__name__)

#: Successful runs kept per results directory when ``--keep-last`` is not given.
DEFAULT_KEEP_LAST = 3
_PIN_NAME_RE = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9._+-]{0,200}\Z")
_LATEST = "latest"


@dataclass(frozen=True, slots=True)
class Root:
    """One GC root: ``kind`` is ``pin``, ``latest`` or ``recent``."""

    kind: str
    name: str
    target: Path


@dataclass(slots=True)
class GcReport:
    """What a collection deleted (or, with ``dry_run``, would delete)."""

    roots: list[Root] = field(default_factory=list)
    live: int = 0
    deleted: list[Path] = field(default_factory=list)
    pool_entries: int = 0
    bytes_freed: int = 0
    dry_run: bool = False


def _real_dir(path: Path, owner: int) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != owner:
        raise StoreError(f"{shown(path)} is not a directory owned by the store's owner; "
                         "refusing to use it")


def _replace_symlink(directory: Path, name: str, target: bytes) -> None:
    fresh = directory / f".new-{name}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)
    os.symlink(target, fresh)
    os.rename(fresh, directory / name)


def register_results_dir(layout: StoreLayout, results_dir: Path) -> None:
    """Record that ``results_dir`` promoted into this store (its runs are GC roots)."""
    raw = os.fsencode(results_dir)
    key = hashlib.sha256(raw).hexdigest()[:32]
    link = layout.results_roots / key
    try:
        if os.readlink(os.fsencode(link)) == raw:
            return
    except OSError:
        pass
    with store_errors(f"cannot record {shown(results_dir)} in {shown(layout.roots_dir)}"):
        owner = os.stat(layout.root).st_uid
        _real_dir(layout.roots_dir, owner)
        _real_dir(layout.results_roots, owner)
        _replace_symlink(layout.results_roots, key, raw)


def _object_path(layout: StoreLayout, target: str | Path) -> Path:
    text = os.fspath(target)
    path = Path(text) if os.sep in text else layout.root / text
    path = path.absolute()
    if path.parent != layout.root and os.path.realpath(path.parent) != os.path.realpath(
            layout.root):
        raise UsageError(f"{shown(path)} is not an object of the store {shown(layout.root)}")
    name = path.name
    if not OBJECT_NAME_RE.match(name) or not os.path.isdir(layout.object(name)) or \
            os.path.islink(layout.object(name)):
        raise UsageError(f"{shown(path)}: no such store object in {shown(layout.root)}")
    return layout.object(name)


def pin(layout: StoreLayout, target: str | Path, name: str | None = None) -> Root:
    """Make ``target`` (a store path or object name) a root named ``name``.

    :raises UsageError: for an unknown object or an unusable name.
    """
    if name is not None and not _PIN_NAME_RE.match(name):
        raise UsageError(f"pin name {shown(name)!r}: use letters, digits, '.', '_', '+', '-', "
                         "not starting with '.' or '-'")
    _object_path(layout, target)  # a clear error before anything is touched
    # Shared GC lock: a collection cannot delete the object between the check and the pin.
    with gc_lock(layout, exclusive=False):
        path = _object_path(layout, target)
        name = name or path.name
        with store_errors(f"cannot pin in {shown(layout.roots_dir)}"):
            _real_dir(layout.roots_dir, os.stat(layout.root).st_uid)
            _replace_symlink(layout.roots_dir, name, os.fsencode(path))
    return Root("pin", name, path)


def unpin(layout: StoreLayout, name: str) -> None:
    """Remove the pin ``name``.

    :raises UsageError: when there is no such pin.
    """
    path = layout.roots_dir / name
    if not _PIN_NAME_RE.match(name) or not os.path.islink(path):
        raise UsageError(f"no pin named {shown(name)!r} in {shown(layout.roots_dir)}")
    with store_errors(f"cannot remove {shown(path)}"):
        os.unlink(path)


def _bundle_run_id(path: Path) -> str | None:
    from fruix_core.promotion.records import read_bundle_record

    try:
        return read_bundle_record(path / RESULT_FILE).run_id
    except Exception:  # noqa: BLE001 - an unreadable bundle is no root; verify reports it
        return None


def pinned_run_ids(layout: StoreLayout) -> set[str]:
    """Run ids of the bundles that pins (``fruix store pin``) name."""
    return {run_id for root in _pins(layout) if (run_id := _bundle_run_id(root.target))}


def _run_status(run_dir: Path) -> str:
    try:
        data = read_regular(run_dir / "status", limit=256)
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip().split(" ", 1)[0]


def _results_runs(results_dir: Path, keep_last: int) -> list[tuple[str, str]]:
    """``(kind, run id)`` of the rooted runs of one results directory."""
    rooted: list[tuple[str, str]] = []
    try:
        latest = os.readlink(results_dir / _LATEST)
        rooted.append(("latest", os.path.basename(latest.rstrip("/"))))
    except OSError:
        pass
    try:
        names = sorted((n for n in os.listdir(results_dir) if n != _LATEST), reverse=True)
    except OSError:
        return rooted
    ok = [n for n in names if not os.path.islink(results_dir / n)
          and _run_status(results_dir / n) == "ok"]
    rooted.extend(("recent", n) for n in ok[:keep_last])
    return rooted


def _objects(layout: StoreLayout) -> list[str]:
    try:
        names = os.listdir(layout.root)
    except OSError as err:
        raise StoreError(f"cannot read the store {shown(layout.root)}: {err.strerror}") from None
    return sorted(n for n in names if OBJECT_NAME_RE.match(n)
                  and os.path.isdir(layout.object(n)) and not os.path.islink(layout.object(n)))


def _pins(layout: StoreLayout) -> list[Root]:
    roots: list[Root] = []
    pins = sorted(os.listdir(layout.roots_dir)) if os.path.isdir(layout.roots_dir) else []
    for name in pins:
        if name.startswith("."):
            continue
        try:
            target = os.readlink(layout.roots_dir / name)
        except OSError:
            continue
        roots.append(Root("pin", name, Path(target)))
    return roots


def list_roots(layout: StoreLayout, keep_last: int = DEFAULT_KEEP_LAST) -> list[Root]:
    """Every root of the store (pins first, then results directories' runs)."""
    if keep_last < 0:
        raise UsageError(f"--keep-last must be 0 or more, not {keep_last}")
    roots = _pins(layout)
    results = layout.results_roots
    registered = sorted(os.listdir(results)) if os.path.isdir(results) else []
    wanted: dict[str, list[tuple[str, Path]]] = {}
    for key in registered:
        if key.startswith("."):
            continue
        try:
            results_dir = Path(os.readlink(results / key))
        except OSError:
            continue
        for kind, run_id in _results_runs(results_dir, keep_last):
            wanted.setdefault(run_id, []).append((kind, results_dir / run_id))
    if wanted:
        for name in _objects(layout):
            path = layout.object(name)
            if "-fruix-native-build-result-" not in name:
                continue
            bundle_run = _bundle_run_id(path)
            for kind, run_dir in wanted.get(bundle_run or "", []):
                roots.append(Root(kind, os.fsdecode(run_dir), path))
    return roots


def _references(path: Path) -> list[str]:
    try:
        data = read_regular(path / REFERENCES_FILE, limit=1 << 20)
    except OSError:
        return []
    return [os.path.basename(os.fsdecode(line)) for line in data.split(b"\n") if line]


def _usage(paths: list[Path], pool: Path) -> tuple[int, int]:
    """(bytes freed, pool entries freed) if ``paths`` and the unlinked pool entries go."""
    seen: dict[tuple[int, int], list[int]] = {}  # inode -> [links seen, nlink, bytes]
    total = 0
    for top in paths:
        for base, dirs, files in os.walk(top):
            for name in dirs + files:
                st = os.lstat(os.path.join(base, name))
                if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                    entry = seen.setdefault((st.st_dev, st.st_ino),
                                            [0, st.st_nlink, st.st_blocks * 512])
                    entry[0] += 1
                else:
                    total += st.st_blocks * 512
        total += os.lstat(top).st_blocks * 512
    entries = 0
    pooled: set[tuple[int, int]] = set()
    for name in os.listdir(pool) if os.path.isdir(pool) else []:
        st = os.lstat(pool / name)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink == 1 or (key in seen and seen[key][0] + 1 == st.st_nlink):
            entries += 1
            total += st.st_blocks * 512
            pooled.add(key)
    for key, (links, nlink, size) in seen.items():
        if key not in pooled and links == nlink:
            total += size
    return total, entries


def collect_garbage(layout: StoreLayout, *, keep_last: int = DEFAULT_KEEP_LAST,
                    dry_run: bool = False) -> GcReport:
    """Delete what no root reaches; see the module docstring.

    :raises StoreError: when the store cannot be read or written.
    :raises UsageError: for a negative ``keep_last``.
    """
    if keep_last < 0:
        raise UsageError(f"--keep-last must be 0 or more, not {keep_last}")
    if not os.path.isdir(layout.root):
        raise StoreError(f"{shown(layout.root)}: no such store directory")
    report = GcReport(dry_run=dry_run)
    if dry_run:
        return _collect(layout, keep_last, report)
    with gc_lock(layout, exclusive=True):
        _finish_interrupted(layout)
        return _collect(layout, keep_last, report)


def _finish_interrupted(layout: StoreLayout) -> None:
    for name in sorted(os.listdir(layout.root)):
        if name.startswith(".trash-"):
            remove_tree(layout.root / name)
            log.info("store.gc.trash_removed", path=shown(layout.root / name))
    remove_stale_temporaries(layout, "")


def _collect(layout: StoreLayout, keep_last: int, report: GcReport) -> GcReport:
    report.roots = list_roots(layout, keep_last)
    objects = set(_objects(layout))
    live: set[str] = set()
    todo = [root.target.name for root in report.roots if root.target.name in objects]
    while todo:
        name = todo.pop()
        if name in live:
            continue
        live.add(name)
        todo.extend(ref for ref in _references(layout.object(name))
                    if ref in objects and ref not in live)
    report.live = len(live)
    dead = sorted(objects - live,
                  key=lambda n: (not os.path.lexists(layout.object(n) / RESULT_FILE)
                                 or os.path.lexists(layout.object(n) / OBJECT_FILE), n))
    report.deleted = [layout.object(n) for n in dead]
    report.bytes_freed, report.pool_entries = _usage(report.deleted, layout.links)
    if report.dry_run:
        return report
    for name in dead:
        seams.reach("gc.deleting", name.encode())
        trash = layout.trash(name)
        with store_errors(f"cannot delete {shown(layout.object(name))}"):
            os.rename(layout.object(name), trash)
            seams.reach("gc.trashed", name.encode())
            remove_tree(trash)
        log.info("store.gc.deleted", path=shown(layout.object(name)))
    _sweep_pool(layout)
    if dead:
        _sweep_cache(layout)
    _sweep_locks(layout)
    _sweep_registrations(layout)
    return report


def _sweep_pool(layout: StoreLayout) -> None:
    pool = layout.links
    for name in os.listdir(pool) if os.path.isdir(pool) else []:
        path = pool / name
        st = os.lstat(path)
        if name.startswith(".new-") or not stat.S_ISREG(st.st_mode) or st.st_nlink == 1:
            with store_errors(f"cannot delete {shown(path)}"):
                os.unlink(path)


def _sweep_cache(layout: StoreLayout) -> None:
    """Stat-cache records (they only speed up; the next promotion of each tree rewrites its own)."""
    cache = layout.root / CACHE_DIR
    if not os.path.isdir(cache) or os.path.islink(cache):
        return
    for name in os.listdir(cache):
        with contextlib.suppress(OSError):
            os.unlink(cache / name)


def _sweep_locks(layout: StoreLayout) -> None:
    """Object lock files of absent objects (no promoter publishes while we hold the GC lock)."""
    locks = layout.locks
    for name in os.listdir(locks) if os.path.isdir(locks) else []:
        if name.endswith(".lock") and OBJECT_NAME_RE.match(name[:-len(".lock")]) and \
                not os.path.lexists(layout.object(name[:-len(".lock")])):
            with contextlib.suppress(OSError):
                os.unlink(locks / name)


def _sweep_registrations(layout: StoreLayout) -> None:
    results = layout.results_roots
    for key in os.listdir(results) if os.path.isdir(results) else []:
        path = results / key
        try:
            gone = key.startswith(".new-") or not os.path.isdir(os.readlink(path))
        except OSError:
            gone = True
        if gone:
            with contextlib.suppress(OSError):
                os.unlink(path)
