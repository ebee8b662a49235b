"""Following the helper from the host: its output, its phase markers, its summary.

:func:`helper_failure` turns a helper step that did not succeed into the
error the operator sees; :func:`staged_from` reads the artifacts off the
summary document of ``--finish``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fruix_core import api as errors
from fruix_core.api import (
    BuildFailed,
    Cancelled,
    CommandOutcome,
    FruixError,
    GuestError,
    PhaseTimeout,
    StagedArtifacts,
    UsageError,
)

__all__ = ["helper_failure", "output_tail", "staged_from"]

#: Errors the helper may report that the host re-raises as themselves (message-only ones).
_REPORTED: dict[str, type[FruixError]] = {
    cls.__name__: cls for cls in (
        errors.UsageError, errors.SourceTreeError, errors.RunNotFoundError,
        errors.PromotionInputError, errors.MetadataError, errors.InfrastructureError,
        errors.ToolMissingError, errors.TransportError, errors.GuestError, errors.StoreError)
}


def output_tail(lines: Any) -> str:
    """The last few non-empty lines of a command's output, on one line."""
    return " | ".join(line.strip() for line in list(lines)[-3:] if line.strip())


def helper_failure(summary: Mapping[str, Any] | None, outcome: CommandOutcome | None,
                   guest: str) -> FruixError:
    """The host-side error for a helper run (or check) that did not succeed."""
    where = f"guest {guest}"
    if summary is None:
        if outcome is not None and outcome.cancelled:
            return Cancelled(f"interrupted; the helper in {where} was stopped")
        status = outcome.returncode if outcome is not None else "unknown"
        tail = output_tail(outcome.last_lines) if outcome is not None else ""
        return GuestError(f"{where}: the helper ended (exit status {status}) without a "
                          f"summary{': ' + tail if tail else ''}")
    message = f"{where}: {summary.get('error') or 'the helper failed'}"
    code = summary.get("exit_code")
    kind = summary.get("error_type")
    if summary.get("status") == "interrupted" or code == errors.ExitCode.INTERRUPTED:
        return Cancelled(message)
    if kind == "PhaseTimeout":
        return PhaseTimeout(str(summary.get("failed_phase") or "?"),
                            float(summary.get("timeout") or 0))
    if kind == "BuildFailed" or code == errors.ExitCode.BUILD_FAILED:
        return BuildFailed(str(summary.get("failed_phase") or "?"), code)
    cls = _REPORTED.get(str(kind))
    if cls is not None:
        return cls(message)
    return UsageError(message) if code == errors.ExitCode.USAGE else GuestError(message)


def staged_from(summary: Mapping[str, Any], result_root: str) -> StagedArtifacts:
    """The helper's artifacts as :class:`StagedArtifacts` (paths in the guest)."""
    artifacts = summary.get("artifacts")
    if not isinstance(artifacts, dict) or not artifacts:
        raise GuestError("the helper's summary lists no artifacts")
    key_files = {}
    sizes = {}
    for kind, entry in artifacts.items():
        files = entry.get("files") if isinstance(entry, dict) else None
        if not isinstance(files, dict):
            raise GuestError(f"the helper's summary describes artifact {kind!r} badly")
        key_files[kind] = tuple(sorted((str(k), str(v)) for k, v in files.items()))
        sizes[kind] = int(entry.get("size") or 0)
    return StagedArtifacts(result_root=result_root, kinds=tuple(artifacts), key_files=key_files,
                           sizes=sizes)


