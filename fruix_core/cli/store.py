"""The CLI side of ``fruix native-build promote`` and ``fruix store verify|gc|pin|roots``.

Both commands print store paths for people or, with ``--json``, exactly one
JSON document on stdout; progress (files and bytes) goes to stderr, and only
when stderr is a terminal. Errors are raised as
:class:`~fruix_core.errors.FruixError` subclasses for ``main`` to report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from fruix_core.cli.jsonout import emit
from fruix_core.errors import ExitCode
from fruix_core.promotion import Progress, promote, verify
from fruix_core.promotion.display import shown
from fruix_core.runrecord import size_text

if TYPE_CHECKING:
    from fruix_core.promotion.layout import StoreLayout


def _json_path(path: Path) -> str:
    """A path for JSON: as is when it is text, escaped (never invalid) when it holds bytes
    that are not UTF-8 or control characters."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return shown(path)
    return text if text.isprintable() else shown(path)

__all__ = ["ProgressLine", "gc_command", "pin_command", "promote_command",
           "roots_command", "verify_command", "export_tar_command"]


class ProgressLine:
    """A self-overwriting progress line on a terminal, at most 10 updates a second."""

    def __init__(self, stream: TextIO, interval: float = 0.1) -> None:
        self.stream = stream
        self.interval = interval
        self._last = 0.0
        self._shown = False

    def __call__(self, state: Progress) -> None:
        now = time.monotonic()
        if now - self._last < self.interval and state.files_done < state.files_total:
            return
        self._last = now
        self.stream.write(
            f"\r\x1b[Kpromoting {state.kind}: {state.files_done}/{state.files_total} files, "
            f"{size_text(state.bytes_done)}/{size_text(state.bytes_total)}, "
            f"{size_text(state.bytes_written)} written")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def promote_command(result_root: str, store: str, *, dry_run: bool, as_json: bool) -> int:
    """Promote ``result_root`` into ``store``; print paths or one JSON document.

    :returns: :attr:`ExitCode.OK`; failures raise ``FruixError`` subclasses.
    """
    line = ProgressLine(sys.stderr) if sys.stderr.isatty() else None
    try:
        outcome = promote(Path(result_root), Path(store), dry_run=dry_run, progress=line)
    finally:
        if line is not None:
            line.close()
    if not dry_run:
        from fruix_core.resultroot import ResultRoot

        ResultRoot(result_root).record_promotion(outcome.bundle, outcome.artifacts)
    if as_json:
        emit("fruix.promote/1", {
            "bundle": _json_path(outcome.bundle),
            "artifacts": {kind: _json_path(path) for kind, path in outcome.artifacts.items()},
            "published": [_json_path(p) for p in outcome.published],
            "reused": [_json_path(p) for p in outcome.reused],
            "dry_run": dry_run,
        })
        return int(ExitCode.OK)
    published = set(outcome.published)
    verb = "would publish" if dry_run else "published"
    for kind, path in outcome.artifacts.items():
        state = verb if path in published else "reused"
        print(f"{kind:<10} {shown(path)}  ({state})")
    state = verb if outcome.bundle in published else "reused"
    print(f"{'bundle':<10} {shown(outcome.bundle)}  ({state})")
    return int(ExitCode.OK)


def _check_exists(paths: list[str], store: str) -> None:
    import os

    from fruix_core.errors import UsageError

    for given in paths:
        path = given if os.path.isabs(given) or os.sep in given else os.path.join(store, given)
        if not os.path.lexists(path):
            raise UsageError(f"{shown(given)}: no such store object"
                             + ("" if os.sep in given else f" in {shown(store)}"))
    if not paths and not os.path.isdir(store):
        raise UsageError(f"{shown(store)}: no such store directory")


def verify_command(paths: list[str], store: str, *, as_json: bool, fast: bool = False) -> int:
    """Verify the given store objects (all of ``store`` when ``paths`` is empty).

    ``fast`` trusts files whose stat is unchanged since a full verify hashed them.

    :returns: :attr:`ExitCode.OK` when clean, :attr:`ExitCode.VERIFICATION` otherwise.
    :raises UsageError: (exit 2) when a named store path or the store does not exist: a
        mistyped name is the operator's, not a corrupt store.
    """
    _check_exists(paths, store)
    report = verify(Path(store), [Path(p) for p in paths] if paths else None, fast=fast)
    if as_json:
        emit("fruix.store-verify/1", {
            "checked": [_json_path(p) for p in report.checked],
            "problems": [{"object": p.object, "path": p.path, "problem": p.problem}
                         for p in report.problems],
            "fast": fast,
            "trusted": [_json_path(p) for p in report.trusted],
        }, ok=report.ok)
    else:
        for problem in report.problems:
            where = f"{problem.object}/{problem.path}" if problem.path else problem.object
            print(f"{where}: {problem.problem}")
        bad = len({p.object for p in report.problems})
        trusted = f" ({len(report.trusted)} from unchanged stat)" if fast else ""
        print(f"checked {len(report.checked)} store objects{trusted}: "
              + ("all clean" if report.ok else f"{bad} with problems"))
    return int(ExitCode.OK if report.ok else ExitCode.VERIFICATION)


# -- garbage collection and roots --------------------------------------------


if TYPE_CHECKING:
    from fruix_core.promotion.layout import StoreLayout


def _layout(store: str) -> StoreLayout:
    from fruix_core.promotion.layout import StoreLayout

    return StoreLayout(Path(store).absolute())


def gc_command(store: str, *, keep_last: int | None, dry_run: bool, as_json: bool) -> int:
    """Delete store objects no root reaches; print what goes (or would) and the bytes freed.

    :returns: :attr:`ExitCode.OK`; failures raise ``FruixError`` subclasses.
    """
    from fruix_core.promotion.display import shown
    from fruix_core.promotion.gc import DEFAULT_KEEP_LAST, collect_garbage

    report = collect_garbage(_layout(store), dry_run=dry_run,
                             keep_last=DEFAULT_KEEP_LAST if keep_last is None else keep_last)
    if as_json:
        emit("fruix.store-gc/1", {
            "dry_run": dry_run,
            "roots": [{"kind": r.kind, "name": shown(r.name), "target": shown(r.target)}
                      for r in report.roots],
            "live": report.live,
            "deleted": [shown(p) for p in report.deleted],
            "pool_entries": report.pool_entries,
            "bytes_freed": report.bytes_freed,
        })
        return int(ExitCode.OK)
    verb = "would delete" if dry_run else "deleted"
    for path in report.deleted:
        print(f"{verb} {shown(path)}")
    print(f"{verb} {len(report.deleted)} store objects and {report.pool_entries} pool entries, "
          f"{'would free' if dry_run else 'freed'} {size_text(report.bytes_freed)}; "
          f"{report.live} objects reachable from {len(report.roots)} roots")
    return int(ExitCode.OK)


def pin_command(store: str, target: str, *, name: str | None, remove: bool,
                as_json: bool) -> int:
    """Make a store object a GC root (or, with ``remove``, drop the pin ``target``)."""
    from fruix_core.promotion.display import shown
    from fruix_core.promotion.gc import pin, unpin

    layout = _layout(store)
    if remove:
        unpin(layout, target)
        document = {"removed": shown(target)}
        text = f"removed pin {shown(target)}"
    else:
        root = pin(layout, target, name)
        document = {"name": shown(root.name), "target": shown(root.target)}
        text = f"pinned {shown(root.target)} as {shown(root.name)}"
    if as_json:
        emit("fruix.store-pin/1", document)
    else:
        print(text)
    return int(ExitCode.OK)


def roots_command(store: str, *, keep_last: int | None, as_json: bool) -> int:
    """List the store's GC roots: pins, and the rooted runs of each results directory."""
    from fruix_core.promotion.display import shown
    from fruix_core.promotion.gc import DEFAULT_KEEP_LAST, list_roots

    roots = list_roots(_layout(store),
                       DEFAULT_KEEP_LAST if keep_last is None else keep_last)
    if as_json:
        emit("fruix.store-roots/1", {"roots": [
            {"kind": r.kind, "name": shown(r.name), "target": shown(r.target)} for r in roots]})
    else:
        for root in roots:
            print(f"{root.kind:<7} {shown(root.name)} -> {shown(root.target)}")
    return int(ExitCode.OK)


def export_tar_command(obj: str, store: str, output: str | None) -> int:
    """Export one artifact object as a pax tar to ``output`` (stdout when ``None``)."""
    from fruix_core.errors import UsageError
    from fruix_core.promotion.export import export_tar, export_tar_file

    path = Path(obj)
    if not path.exists() and "/" not in obj:
        path = Path(store) / obj
    if not path.is_dir():
        raise UsageError(f"no store object {obj!r} (neither a directory nor a name in {store})")
    if output is not None:
        report = export_tar_file(path, Path(output))
        print(f"{output}: {report.entries} entries, {size_text(report.bytes)} of files",
              file=sys.stderr)
        return int(ExitCode.OK)
    if sys.stdout.isatty():
        raise UsageError("refusing to write a tar archive to a terminal; use -o FILE or a pipe")
    sys.stdout.flush()
    export_tar(path, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return int(ExitCode.OK)
