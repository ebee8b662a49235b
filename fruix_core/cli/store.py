"""The CLI side of ``fruix native-build promote`` and ``fruix store verify``.

Both commands print store paths for people or, with ``--json``, exactly one
JSON document on stdout; progress (files and bytes) goes to stderr, and only
when stderr is a terminal. Errors are raised as
:class:`~fruix_core.errors.FruixError` subclasses for ``main`` to report.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TextIO

from fruix_core.errors import ExitCode
from fruix_core.promotion import Progress, promote, verify

__all__ = ["ProgressLine", "export_tar_command", "promote_command", "verify_command"]


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


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
            f"{_size(state.bytes_done)}/{_size(state.bytes_total)}, "
            f"{_size(state.bytes_written)} written")
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
    if as_json:
        document = {
            "bundle": str(outcome.bundle),
            "artifacts": {kind: str(path) for kind, path in outcome.artifacts.items()},
            "published": [str(p) for p in outcome.published],
            "reused": [str(p) for p in outcome.reused],
            "dry_run": dry_run,
        }
        print(json.dumps(document, indent=2))
        return int(ExitCode.OK)
    published = set(outcome.published)
    verb = "would publish" if dry_run else "published"
    for kind, path in outcome.artifacts.items():
        state = verb if path in published else "reused"
        print(f"{kind:<10} {path}  ({state})")
    state = verb if outcome.bundle in published else "reused"
    print(f"{'bundle':<10} {outcome.bundle}  ({state})")
    return int(ExitCode.OK)


def verify_command(paths: list[str], store: str, *, as_json: bool) -> int:
    """Verify the given store objects (all of ``store`` when ``paths`` is empty).

    :returns: :attr:`ExitCode.OK` when clean, :attr:`ExitCode.VERIFICATION` otherwise.
    """
    report = verify(Path(store), [Path(p) for p in paths] if paths else None)
    if as_json:
        document = {
            "ok": report.ok,
            "checked": [str(p) for p in report.checked],
            "problems": [{"object": p.object, "path": p.path, "problem": p.problem}
                         for p in report.problems],
        }
        print(json.dumps(document, indent=2))
    else:
        for problem in report.problems:
            where = f"{problem.object}/{problem.path}" if problem.path else problem.object
            print(f"{where}: {problem.problem}")
        bad = len({p.object for p in report.problems})
        print(f"checked {len(report.checked)} store objects: "
              + ("all clean" if report.ok else f"{bad} with problems"))
    return int(ExitCode.OK if report.ok else ExitCode.VERIFICATION)


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
        print(f"{output}: {report.entries} entries, {_size(report.bytes)} of files",
              file=sys.stderr)
        return int(ExitCode.OK)
    if sys.stdout.isatty():
        raise UsageError("refusing to write a tar archive to a terminal; use -o FILE or a pipe")
    sys.stdout.flush()
    export_tar(path, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return int(ExitCode.OK)
