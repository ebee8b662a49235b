"""Removing old result roots and build areas: ``fruix native-build prune``.

A run is never pruned while it is protected:

* it is still running (its process is alive; a ``running`` status whose
  process is gone is *stale* and counts as failed);
* ``<results>/latest`` points at it;
* a store pin (``fruix store pin``) in the configured store names its bundle;
* it is one of the ``keep_last`` newest successful runs.

Failed (and stale) runs are removed only with ``failed=True``: they are what
``--resume`` continues. A pruned run loses its result root and its build
area (``paths.build_root/<run-id>``); its store objects stay until
``fruix store gc`` finds them unreachable.

Removal renames the directory to ``.prune-<run-id>-<pid>`` first, so a run
is either fully there or gone under its name; a prune killed half-way leaves
only a dot-directory that the next prune removes. Nothing is followed:
the removal does not follow symlinks, and a run id that is a symlink is only
unlinked, never followed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from fruix_core.config import Config
from fruix_core.errors import StoreError, UsageError
from fruix_core.promotion.gc import DEFAULT_KEEP_LAST, pinned_run_ids
from fruix_core.promotion.layout import StoreLayout
from fruix_core.promotion.storeio import remove_tree
from fruix_core.resultroot import LATEST, list_runs

__all__ = ["PrunedRun", "PruneReport", "prune_runs", "remove_build_area"]

log = structlog.get_logger(__name__)

_TRASH = ".prune-"


@dataclass(frozen=True, slots=True)
class PrunedRun:
    """One run removed (or, in a dry run, that would be)."""

    run_id: str
    status: str
    bytes: int


@dataclass(slots=True)
class PruneReport:
    """What ``prune_runs`` did."""

    removed: list[PrunedRun] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # run id -> why
    dry_run: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes for r in self.removed)

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "removed": [{"run_id": r.run_id, "status": r.status, "bytes": r.bytes}
                        for r in self.removed],
            "kept": dict(self.kept), "bytes_freed": self.bytes_freed,
        }


def _size(path: Path) -> int:
    total = 0
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total


def _remove(path: Path) -> None:
    """Rename ``path`` aside, then delete it; a symlink is only unlinked."""
    if path.is_symlink() or not path.exists():
        remove_tree(path)  # a link is only unlinked; nothing there is fine
        return
    trash = path.with_name(f"{_TRASH}{path.name}-{os.getpid()}")
    os.rename(path, trash)
    remove_tree(trash)


def remove_build_area(config: Config, run_id: str) -> None:
    """Remove ``paths.build_root/<run-id>`` (after a successful run); never raises."""
    area = config.build_root / run_id
    try:
        _remove(area)
    except OSError as exc:
        log.warning("cannot remove the build area", path=str(area), error=str(exc))


def _clean_trash(results: Path, build_root: Path) -> None:
    for top in (results, build_root):
        if not top.is_dir():
            continue
        for name in os.listdir(top):
            if name.startswith(_TRASH):
                with contextlib.suppress(OSError):
                    remove_tree(top / name)


def prune_runs(config: Config, *, keep_last: int = DEFAULT_KEEP_LAST, failed: bool = False,
               dry_run: bool = False) -> PruneReport:
    """Remove result roots (and their build areas) that nothing protects.

    :param keep_last: successful runs kept, newest first.
    :param failed: also remove failed and stale runs.
    :raises UsageError: ``keep_last`` is negative.
    :raises StoreError: a result root cannot be removed.
    """
    if keep_last < 0:
        raise UsageError(f"--keep-last must be 0 or more, not {keep_last}")
    report = PruneReport(dry_run=dry_run)
    if not dry_run:
        _clean_trash(config.results, config.build_root)
    try:
        latest = os.readlink(config.results / LATEST)
    except OSError:
        latest = ""
    pinned = pinned_run_ids(StoreLayout(config.store))
    runs = [(root, root.status()) for root in reversed(list_runs(config.results))]
    # The same "recent" roots as store gc: the newest keep_last successful runs.
    recent = {root.run_id for root, status in runs if status.state == "ok"}
    recent = set(sorted(recent, reverse=True)[:keep_last])
    for root, status in runs:  # newest first
        run_id = root.run_id
        why = ""
        if status.state == "running" and not status.stale:
            why = "running"
        elif run_id == os.path.basename(latest.rstrip("/")):
            why = "latest"
        elif run_id in pinned:
            why = "pinned"
        elif run_id in recent:
            why = f"one of the {keep_last} newest successful runs"
        elif status.state == "ok":
            pass
        elif not failed:
            why = f"{status} (pass --failed to remove it)"
        if why:
            report.kept[run_id] = why
            continue
        area = config.build_root / run_id
        size = _size(root.path) + (_size(area) if area.is_dir() else 0)
        report.removed.append(PrunedRun(run_id, str(status), size))
        if dry_run:
            continue
        try:
            _remove(root.path)
            _remove(area)
        except OSError as exc:
            raise StoreError(f"cannot remove run {run_id} in {config.results}: "
                             f"{exc.strerror or exc}") from None
        log.info("run pruned", run_id=run_id, status=str(status), bytes=size)
    return report


def describe(report: PruneReport) -> list[str]:
    """Lines for the terminal."""
    verb = "would remove" if report.dry_run else "removed"
    lines = [f"{verb} {r.run_id} ({r.status}, {r.bytes / 1e6:.1f} MB)" for r in report.removed]
    lines.append(f"{len(report.removed)} run(s) {verb}, {report.bytes_freed / 1e6:.1f} MB "
                 f"{'would be ' if report.dry_run else ''}freed; {len(report.kept)} kept")
    return lines

