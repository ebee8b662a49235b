"""``promote``: a result root becomes four artifact objects and one result bundle.

The whole protocol, in order:

1. validate the result root (:mod:`~fruix_core.promotion.validate`); on any
   problem raise before anything is written;
2. create the store's bookkeeping directories, take this process's owner
   lock and remove temporaries left by dead promoters;
3. for each artifact kind: one ingesting pass (tree signature, manifest, new
   content written once), its identity and name, then publish under the
   object's lock (reuse when the name exists);
4. the bundle: identity from the artifact store paths and the run's
   provenance, published the same way.

Promoting the same result root again copies nothing and returns the same
paths; two runs differing only in provenance share artifact objects and get
different bundles.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from fruix_core.errors import FruixError, StoreError, UsageError
from fruix_core.model import ARTIFACT_KINDS, Promotion
from fruix_core.promotion.identity import (
    artifact_identity,
    artifact_name,
    bundle_identity,
    bundle_name,
)
from fruix_core.promotion.ingest import IngestedArtifact, Ingester, Progress
from fruix_core.promotion.layout import (
    OBJECT_FILE,
    REFERENCES_FILE,
    RESULT_FILE,
    StoreLayout,
)
from fruix_core.promotion.locking import OwnerLock, ensure_store, remove_stale_temporaries
from fruix_core.promotion.metalog import artifact_metalog
from fruix_core.promotion.publish import (
    FSYNC_POLICIES,
    canonicalise,
    materialise,
    publish,
    write_metadata_file,
)
from fruix_core.promotion.records import bundle_text, object_text
from fruix_core.promotion.storeio import remove_tree, store_errors
from fruix_core.promotion.validate import ValidatedRoot, validate_result_root

__all__ = ["FSYNC_ENV", "PromotionOutcome", "promote"]

log = structlog.get_logger(__name__)

#: Environment variable choosing the durability policy (see :data:`FSYNC_POLICIES`).
FSYNC_ENV = "FRUIX_STORE_FSYNC"


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


def _artifact_name(promotion: Promotion, ingested: IngestedArtifact) -> tuple[str, list]:
    document = artifact_identity(promotion, ingested.kind, ingested.tree_signature,
                                 ingested.manifest_sha256)
    name = artifact_name(document, ingested.kind, promotion.base.version, promotion.executor)
    return name, document


def promote(result_root: Path | str, store: Path | str, *, dry_run: bool = False,
            progress: Callable[[Progress], None] | None = None,
            fsync: str | None = None) -> PromotionOutcome:
    """Promote the result root into ``store``.

    :param result_root: a complete result root (``status`` says ``ok``).
    :param store: the store directory (created when missing).
    :param dry_run: validate and hash, report the paths, write nothing.
    :param progress: called with a :class:`Progress` as files are hashed.
    :param fsync: durability policy (``syncfs``, ``each``, ``none``); default
        from ``$FRUIX_STORE_FSYNC``, else ``syncfs``.
    :raises PromotionInputError: the result root is unfit (nothing written).
    :raises StoreError: the store cannot be written (nothing published).
    """
    policy = _fsync_policy(fsync)
    validated = validate_result_root(result_root)
    layout = StoreLayout(Path(store).absolute())
    totals = Progress(files_total=validated.files, bytes_total=validated.bytes)
    try:
        if dry_run:
            return _dry_run(validated, layout, progress, totals)
        return _promote(validated, layout, progress, totals, policy)
    except FruixError:
        raise
    except OSError as err:
        raise StoreError(f"promotion into {layout.root} failed: {err.strerror or err}"
                         f"{f' ({err.filename})' if err.filename else ''}") from None


def _dry_run(validated: ValidatedRoot, layout: StoreLayout,
             progress: Callable[[Progress], None] | None, totals: Progress) -> PromotionOutcome:
    promotion = validated.promotion
    known = layout.root.is_dir() and layout.links.is_dir()
    ingester = Ingester(layout if known else None, "dry", dry_run=True, progress=progress,
                        totals=totals)
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
    document = bundle_identity(promotion, {k: str(v) for k, v in artifacts.items()})
    bundle = layout.object(bundle_name(document, promotion.base.version, promotion.executor))
    every = [*artifacts.values(), bundle]
    return PromotionOutcome(
        bundle=bundle, artifacts=artifacts,
        published=tuple(p for p in every if not os.path.lexists(p)),
        reused=tuple(p for p in every if os.path.lexists(p)),
        dry_run=True, files=validated.files, bytes=validated.bytes,
        tree_signatures=signatures)


def _promote(validated: ValidatedRoot, layout: StoreLayout,
             progress: Callable[[Progress], None] | None, totals: Progress,
             policy: str) -> PromotionOutcome:
    promotion = validated.promotion
    ensure_store(layout)
    owner = OwnerLock(layout)
    owner.acquire()
    temps: list[Path] = []
    ingester = Ingester(layout, owner.token, dry_run=False, fsync_each=policy == "each",
                        progress=progress, totals=totals)
    try:
        remove_stale_temporaries(layout, owner.token)
        artifacts: dict[str, Path] = {}
        signatures: dict[str, str] = {}
        published: list[Path] = []
        reused: list[Path] = []
        for staged in validated.artifacts:
            temps.append(layout.temp(owner.token, staged.kind))
            ingested = ingester.ingest(staged, artifact_metalog(validated.root, staged.kind))
            assert ingested.temp_dir is not None
            temp = ingested.temp_dir
            name, document = _artifact_name(promotion, ingested)

            def prepare(temp: Path = temp, name: str = name, document: list = document,
                        ingested: IngestedArtifact = ingested) -> None:
                materialise(layout, temp)
                write_metadata_file(temp, OBJECT_FILE,
                                    object_text(name, ingested.nar_size, document))
                write_metadata_file(temp, REFERENCES_FILE, "")
                canonicalise(temp)

            path = layout.object(name)
            _record(publish(layout, temp, name, fsync=policy, prepare=prepare), path,
                    published, reused, kind=staged.kind, files=ingested.files,
                    bytes_written=ingested.bytes_written)
            artifacts[staged.kind] = path
            signatures[staged.kind] = ingested.tree_signature
        bundle = _publish_bundle(layout, owner.token, promotion, artifacts, policy, temps,
                                 published, reused)
        return PromotionOutcome(bundle=bundle, artifacts=artifacts, published=tuple(published),
                                reused=tuple(reused), files=validated.files,
                                bytes=validated.bytes, bytes_written=totals.bytes_written,
                                tree_signatures=signatures)
    finally:
        ingester.close()
        for temp in temps:
            try:
                remove_tree(temp)
            except OSError:
                log.warning("store.temporary.unremovable", path=str(temp))
        owner.release()


def _record(was_published: bool, path: Path, published: list[Path], reused: list[Path],
            **fields: object) -> None:
    if was_published:
        published.append(path)
        log.info("store.object.published", path=str(path), **fields)
    else:
        reused.append(path)
        log.info("store.object.reused", path=str(path), **fields)


def _publish_bundle(layout: StoreLayout, token: str, promotion: Promotion,
                    artifacts: dict[str, Path], policy: str, temps: list[Path],
                    published: list[Path], reused: list[Path]) -> Path:
    paths = {kind: str(artifacts[kind]) for kind in ARTIFACT_KINDS if kind in artifacts}
    document = bundle_identity(promotion, paths)
    name = bundle_name(document, promotion.base.version, promotion.executor)
    temp = layout.temp(token, "bundle")
    temps.append(temp)

    def prepare() -> None:
        with store_errors(f"cannot build {temp}"):
            os.mkdir(temp, 0o755)
            os.mkdir(temp / "artifacts", 0o755)
            for kind, target in paths.items():
                os.symlink(target, temp / "artifacts" / kind)
        write_metadata_file(temp, RESULT_FILE, bundle_text(name, document))
        write_metadata_file(temp, REFERENCES_FILE,
                            "".join(f"{p}\n" for p in sorted(paths.values())))
        canonicalise(temp)

    path = layout.object(name)
    _record(publish(layout, temp, name, fsync=policy, prepare=prepare), path, published, reused,
            kind="bundle", run_id=promotion.run_id)
    return path
