"""``promote``: a result root becomes four artifact objects and one result bundle.

The whole protocol, in order; nothing is published before step 5, so a
refusal at any earlier step leaves no object, no pool entry and no lock file
of its own (temporaries are removed; a crash's are removed by the next run):

1. validate the result root (:mod:`~fruix_core.promotion.validate`), keeping
   its directories open; on any problem raise before anything is written;
2. create the store's bookkeeping directories (checked, never followed),
   take this process's owner lock and the collector's lock (shared), remove
   temporaries left by dead promoters;
3. ingest all four artifacts (one descriptor-based walk each, re-checking
   everything validation checked on what is actually read) into temporaries
   -- except an artifact whose tree is unchanged since a previous promotion
   read it and whose object is in the store
   (:mod:`~fruix_core.promotion.statcache`): it is not read again;
4. name them, build the bundle's temporary, and complete every temporary
   whose name is not in the store yet (materialise from checked content,
   metadata, canonicalise);
5. publish all five as one unit under their locks
   (:func:`~fruix_core.promotion.publish.publish_all`);
6. enter the new content into the pool, record the results directory as
   a source of GC roots, and record the trees read in the stat cache.

Promoting the same result root again copies nothing and returns the same
paths; two runs differing only in provenance share artifact objects and get
different bundles. A store that cannot be written still answers a promotion
whose objects it holds already.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from fruix_core.errors import FruixError, StoreError, UsageError
from fruix_core.model import ARTIFACT_KINDS, Promotion
from fruix_core.promotion import seams
from fruix_core.promotion.display import shown
from fruix_core.promotion.gc import register_results_dir
from fruix_core.promotion.identity import (
    artifact_identity,
    artifact_name,
    bundle_identity,
    bundle_name,
    store_path_text,
)
from fruix_core.promotion.ingest import IngestedArtifact, Ingester, Progress, restage
from fruix_core.promotion.layout import (
    OBJECT_FILE,
    REFERENCES_FILE,
    RESULT_FILE,
    StoreLayout,
)
from fruix_core.promotion.locking import (
    OwnerLock,
    check_store,
    ensure_store,
    gc_lock,
    remove_stale_temporaries,
)
from fruix_core.promotion.metalog import ArtifactMetalog, artifact_metalog
from fruix_core.promotion.publish import (
    FSYNC_POLICIES,
    POOL_CHECKS,
    ContentLinker,
    canonicalise,
    enter_pool,
    materialise,
    publish_all,
    write_metadata_file,
)
from fruix_core.promotion.records import bundle_text, object_text
from fruix_core.promotion.statcache import CachedTree, StatCache
from fruix_core.promotion.storeio import remove_tree, store_errors
from fruix_core.promotion.validate import (
    StagedArtifact,
    ValidatedRoot,
    store_identity,
    validate_result_root,
)

__all__ = ["FSYNC_ENV", "POOL_CHECK_ENV", "PromotionOutcome", "check_store_path", "promote"]

log = structlog.get_logger(__name__)

#: Environment variable choosing the durability policy (see :data:`FSYNC_POLICIES`).
FSYNC_ENV = "FRUIX_STORE_FSYNC"
#: Environment variable choosing what is checked of a pool entry (see :data:`POOL_CHECKS`).
POOL_CHECK_ENV = "FRUIX_STORE_POOL_CHECK"


@dataclass(frozen=True, slots=True)
class PromotionOutcome:
    """What a promotion produced (or, with ``dry_run``, would produce).

    :ivar bundle: store path of the result bundle.
    :ivar artifacts: kind -> store path of the artifact object.
    :ivar published: objects created by this promotion.
    :ivar reused: objects that already existed.
    """

    bundle: Path
    artifacts: dict[str, Path]
    published: tuple[Path, ...]
    reused: tuple[Path, ...]
    dry_run: bool = False
    files: int = 0
    bytes: int = 0
    bytes_written: int = 0
    tree_signatures: dict[str, str] = field(default_factory=dict)


def _fsync_policy(fsync: str | None) -> str:
    policy = fsync or os.environ.get(FSYNC_ENV) or "syncfs"
    if policy not in FSYNC_POLICIES:
        raise UsageError(f"{FSYNC_ENV}={policy!r}: expected one of {', '.join(FSYNC_POLICIES)}")
    return policy


def _pool_check(check: str | None) -> str:
    chosen = check or os.environ.get(POOL_CHECK_ENV) or "stat"
    if chosen not in POOL_CHECKS:
        raise UsageError(f"{POOL_CHECK_ENV}={chosen!r}: expected one of {', '.join(POOL_CHECKS)}")
    return chosen


def _artifact_name(promotion: Promotion, ingested: IngestedArtifact) -> tuple[str, list[Any]]:
    document = artifact_identity(promotion, ingested.kind, ingested.tree_signature,
                                 ingested.manifest_sha256)
    name = artifact_name(document, ingested.kind, promotion.base.version, promotion.executor)
    return name, document


def check_store_path(root: Path) -> None:
    """Refuse a store path that ``.references`` could not hold faithfully (a newline).

    :raises UsageError: naming the path (escaped).
    """
    if b"\n" in os.fsencode(root):
        raise UsageError(f"store path {shown(root)} contains a newline; store paths are "
                         "written one per line in .references, choose another directory")


def _writable(root: Path) -> bool:
    if not os.path.isdir(root):
        return True  # created by ensure_store (which reports why it cannot)
    if not os.access(root, os.W_OK):
        return False
    try:
        return not os.statvfs(root).f_flag & os.ST_RDONLY
    except OSError:
        return True


def promote(result_root: Path | str, store: Path | str, *, dry_run: bool = False,
            progress: Callable[[Progress], None] | None = None,
            fsync: str | None = None, pool_check: str | None = None) -> PromotionOutcome:
    """Promote the result root into ``store``.

    :param result_root: a complete result root (``status`` says ``ok``).
    :param store: the store directory (created when missing).
    :param dry_run: validate and hash, report the paths, write nothing.
    :param progress: called with a :class:`Progress` as files are hashed.
    :param fsync: durability policy (``syncfs``, ``each``, ``none``); default
        from ``$FRUIX_STORE_FSYNC``, else ``syncfs``.
    :param pool_check: what is checked of a content-pool entry before it is
        linked (``stat`` or ``content``); default from ``$FRUIX_STORE_POOL_CHECK``,
        else ``stat``.
    :raises PromotionInputError: the result root is unfit (nothing written).
    :raises StoreError: the store cannot be written (nothing published).
    """
    policy = _fsync_policy(fsync)
    checking = _pool_check(pool_check)
    layout = StoreLayout(Path(store).absolute())
    check_store_path(layout.root)
    validated = validate_result_root(result_root, store=layout.root)
    try:
        seams.reach("promote.validated")
        totals = Progress(files_total=validated.files, bytes_total=validated.bytes)
        try:
            if dry_run:
                return _dry_run(validated, layout, progress, totals)
            if not _writable(layout.root):
                return _already_stored(validated, layout, progress, totals)
            return _promote(validated, layout, progress, totals, policy, checking)
        except FruixError:
            raise
        except OSError as err:
            raise StoreError(f"promotion into {shown(layout.root)} failed: "
                             f"{err.strerror or err}"
                             f"{f' ({shown(err.filename)})' if err.filename else ''}") from None
    finally:
        validated.close()


def _dry_run(validated: ValidatedRoot, layout: StoreLayout,
             progress: Callable[[Progress], None] | None, totals: Progress) -> PromotionOutcome:
    promotion = validated.promotion
    known = layout.root.is_dir() and layout.links.is_dir() and not layout.links.is_symlink()
    ingester = Ingester(layout if known else None, "dry", dry_run=True, progress=progress,
                        totals=totals, store_id=store_identity(layout.root))
    artifacts: dict[str, Path] = {}
    signatures: dict[str, str] = {}
    try:
        for staged in validated.artifacts:
            ingested = ingester.ingest(staged, artifact_metalog(validated.root, staged.kind))
            name, _ = _artifact_name(promotion, ingested)
            artifacts[staged.kind] = layout.object(name)
            signatures[staged.kind] = ingested.tree_signature
    finally:
        ingester.close()
    document = bundle_identity(promotion, {k: store_path_text(v) for k, v in artifacts.items()})
    bundle = layout.object(bundle_name(document, promotion.base.version, promotion.executor))
    every = [*artifacts.values(), bundle]
    return PromotionOutcome(
        bundle=bundle, artifacts=artifacts,
        published=tuple(p for p in every if not os.path.lexists(p)),
        reused=tuple(p for p in every if os.path.lexists(p)),
        dry_run=True, files=validated.files, bytes=validated.bytes,
        tree_signatures=signatures)


def _already_stored(validated: ValidatedRoot, layout: StoreLayout,
                    progress: Callable[[Progress], None] | None,
                    totals: Progress) -> PromotionOutcome:
    """A store that cannot be written: answer from what it holds, or say why not."""
    check_store(layout)
    outcome = _dry_run(validated, layout, progress, totals)
    if outcome.published:
        raise StoreError(f"the store {shown(layout.root)} is not writable by this user (or "
                         f"read-only) and does not hold {shown(outcome.published[0].name)} yet")
    for path in outcome.reused:
        log.info("store.object.reused", path=shown(path))
    return replace(outcome, dry_run=False)


def _promote(validated: ValidatedRoot, layout: StoreLayout,
             progress: Callable[[Progress], None] | None, totals: Progress,
             policy: str, checking: str = "stat") -> PromotionOutcome:
    promotion = validated.promotion
    ensure_store(layout)
    owner = OwnerLock(layout)
    owner.acquire()
    temps: list[Path] = [layout.temp(owner.token, kind) for kind in ARTIFACT_KINDS]
    temps.append(layout.temp(owner.token, "bundle"))
    ingester = Ingester(layout, owner.token, dry_run=False, fsync_each=policy == "each",
                        progress=progress, totals=totals, store_id=store_identity(layout.root))
    linker = ContentLinker(layout, ingester.session, check=checking)
    ingester.pool_link = linker.place
    ingester.pool_wrong = linker.mark_wrong
    try:
        with gc_lock(layout, exclusive=False):
            remove_stale_temporaries(layout, owner.token)
            metalogs = {staged.kind: artifact_metalog(validated.root, staged.kind)
                        for staged in validated.artifacts}
            # The METALOG shapes the manifest (and so the name): it is part of the key.
            keys = {staged.kind: _cache_key(staged.fingerprint, metalogs[staged.kind])
                    for staged in validated.artifacts}
            cache = StatCache(layout.root)
            ingested = [_cached(cache, keys[staged.kind], staged, layout, owner.token,
                                promotion, ingester)
                        or ingester.ingest(staged, metalogs[staged.kind])
                        for staged in validated.artifacts]
            named = [(item, *_artifact_name(promotion, item)) for item in ingested]
            artifacts = {item.kind: layout.object(name) for item, name, _doc in named}
            for (item, name, document), staged in zip(named, validated.artifacts, strict=True):
                assert item.temp_dir is not None
                if not os.path.lexists(layout.object(name)):
                    _prepare_artifact(item, name, document, staged, linker)
            bundle_temp = layout.temp(owner.token, "bundle")
            bundle = _prepare_bundle(layout, bundle_temp, promotion, artifacts)
            items = [(item.temp_dir, name) for item, name, _doc in named]
            items.append((bundle_temp, bundle.name))
            done = publish_all(layout, items, fsync=policy)  # type: ignore[arg-type]
            pairs = list(zip(items, done, strict=True))
            published = [layout.object(name) for (_t, name), new in pairs if new]
            reused = [layout.object(name) for (_t, name), new in pairs if not new]
            for (item, name, _doc), new in zip(named, done[:-1], strict=True):
                log.info("store.object.published" if new else "store.object.reused",
                         path=shown(layout.object(name)), kind=item.kind, files=item.files,
                         bytes_written=item.bytes_written if new else 0)
            log.info("store.object.published" if done[-1] else "store.object.reused",
                     path=shown(bundle), kind="bundle", run_id=promotion.run_id)
            _enter_new_content(layout, named, done, ingester, linker, owner.token)
            for item in ingested:
                key = keys.get(item.kind)
                if item.fingerprint is not None and key is not None:
                    cache.record(key, CachedTree(
                        kind=item.kind, tree_signature=item.tree_signature,
                        nar_size=item.nar_size, manifest_sha256=item.manifest_sha256,
                        files=item.files))
            register_results_dir(layout, validated.root.parent)
        return PromotionOutcome(
            bundle=bundle, artifacts=artifacts, published=tuple(published),
            reused=tuple(reused), files=validated.files, bytes=validated.bytes,
            bytes_written=totals.bytes_written,
            tree_signatures={item.kind: item.tree_signature for item in ingested})
    finally:
        ingester.close()
        linker.close()
        for temp in temps:
            try:
                remove_tree(temp)
            except OSError:
                log.warning("store.temporary.unremovable", path=shown(temp))
        owner.release()


def _cache_key(fingerprint: str | None, metalog: ArtifactMetalog | None) -> str | None:
    """The stat cache's key: the tree's fingerprint and the METALOG lines that apply."""
    if fingerprint is None:
        return None
    digest = hashlib.sha256(fingerprint.encode())
    for rel, entry in sorted((metalog.entries if metalog is not None else {}).items()):
        digest.update(b"\0" + rel + b"\0" + repr((entry.type, entry.mode, entry.uname,
                                                      entry.gname, entry.flags,
                                                      entry.link)).encode())
    return digest.hexdigest()


def _cached(cache: StatCache, key: str | None, staged: StagedArtifact, layout: StoreLayout,
            token: str, promotion: Promotion, ingester: Ingester) -> IngestedArtifact | None:
    """The artifact as a previous promotion read it, when its tree is unchanged since.

    Only an object already in the store is answered this way (nothing is
    written from a record); its temporary stays absent, meaning "reused".
    """
    tree = cache.lookup(key, staged.kind) if key is not None else None
    if tree is None:
        return None
    item = IngestedArtifact(kind=staged.kind, tree_signature=tree.tree_signature,
                            nar_size=tree.nar_size, manifest_sha256=tree.manifest_sha256,
                            temp_dir=layout.temp(token, staged.kind), files=tree.files,
                            bytes_written=0)
    name, _document = _artifact_name(promotion, item)
    if not os.path.isdir(layout.object(name)) or os.path.islink(layout.object(name)):
        return None
    ingester.skipped(staged)
    log.debug("store.statcache.hit", kind=staged.kind, object=shown(layout.object(name)))
    return item


def _prepare_artifact(item: IngestedArtifact, name: str, document: list[Any],
                      staged: StagedArtifact, linker: ContentLinker) -> None:
    temp = item.temp_dir
    assert temp is not None

    def again(rel: bytes, dest: bytes, digest: str, executable: bool) -> None:
        restage(staged, rel, dest, digest, executable)

    dirs = materialise(temp, linker, again, item.pending)
    write_metadata_file(temp, OBJECT_FILE, object_text(name, item.nar_size, document))
    write_metadata_file(temp, REFERENCES_FILE, "")
    canonicalise(temp, dirs)


def _prepare_bundle(layout: StoreLayout, temp: Path, promotion: Promotion,
                    artifacts: dict[str, Path]) -> Path:
    paths = {kind: artifacts[kind] for kind in ARTIFACT_KINDS if kind in artifacts}
    document = bundle_identity(promotion, {k: store_path_text(v) for k, v in paths.items()})
    name = bundle_name(document, promotion.base.version, promotion.executor)
    if not os.path.lexists(layout.object(name)):
        with store_errors(f"cannot build {shown(temp)}"):
            os.mkdir(temp, 0o755)
            os.mkdir(temp / "artifacts", 0o755)
            for kind, target in paths.items():
                os.symlink(os.fsencode(target), temp / "artifacts" / kind)
        write_metadata_file(temp, RESULT_FILE, bundle_text(name, document))
        write_metadata_file(temp, REFERENCES_FILE,
                            b"".join(os.fsencode(p) + b"\n" for p in sorted(
                                os.fsencode(v) for v in paths.values())))
        canonicalise(temp)
    return layout.object(name)


def _enter_new_content(layout: StoreLayout, named: list[Any], done: list[bool], ingester: Ingester,
                       linker: ContentLinker, token: str) -> None:
    """Pool entries for content now in published objects (the pool only speeds up)."""
    moved: dict[bytes, bytes] = {}
    for (item, name, _doc), new in zip(named, done[:-1], strict=True):
        if new and item.temp_dir is not None:
            moved[os.fsencode(item.temp_dir) + b"/"] = os.fsencode(layout.object(name)) + b"/"
    content: dict[tuple[str, bool], bytes] = {}
    for key, first in ingester.session.items():
        for path in [first, *linker.placed.get(key, [])]:
            prefix = next((p for p in moved if path.startswith(p)), None)
            if prefix is not None:
                content[key] = moved[prefix] + path[len(prefix):]
                break
    if content:
        enter_pool(layout, content, linker.bad, token)
