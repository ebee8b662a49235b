"""Following the helper from the host: its output, its phase markers, its summary.

:class:`HelperRun` runs the helper once over an SSH session on a background
thread and queues what it prints; :func:`helper_failure` turns a helper that
did not succeed into the error the operator sees; :func:`staged_from` reads
the artifacts off its summary document.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping
from typing import Any

from fruix_core import api as errors
from fruix_core.api import (
    BuildFailed,
    Cancelled,
    CancelToken,
    CommandOutcome,
    FruixError,
    GuestError,
    PhaseTimeout,
    StagedArtifacts,
    UsageError,
)
from fruix_guest_self_hosted import protocol

__all__ = ["STOP_WAIT", "HelperRun", "helper_failure", "output_tail", "staged_from"]

#: Seconds to wait for the helper to stop after a cancel before giving up on it.
STOP_WAIT = 20.0

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


class HelperRun:
    """The helper's one invocation in the guest, read on a background thread.

    Output lines and phase markers are queued (``("line", text)``, ``(kind, Marker)``)
    for the executor's ``fruix_run_phase``; the summary marker is kept;
    ``("exit", None)`` is queued last.
    """

    def __init__(self, session: Any, script: str, timeout: float | None = None) -> None:
        self.session = session
        self.script = script
        self.timeout = timeout
        self.cancel = CancelToken()
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.summary: dict[str, Any] | None = None
        self.outcome: CommandOutcome | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self.run, name="fruix-self-hosted",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _on_line(self, line: str) -> None:
        marker = protocol.parse_marker(line)
        if marker is None:
            self.events.put(("line", protocol.unescape_output(line)))
        elif marker.kind == "summary":
            self.summary = marker.document
        else:
            self.events.put((marker.kind, marker))

    def run(self) -> None:
        """Run the helper to its end in this thread (:meth:`start` runs it in the background)."""
        try:
            self.outcome = self.session.run_script(self.script, on_line=self._on_line,
                                                   timeout=self.timeout, cancel=self.cancel)
        except BaseException as exc:  # handed to the hook that waits for it
            self.error = exc
        finally:
            self.finished.set()
            self.events.put(("exit", None))

    def stop(self, reason: str = "stopped by the host") -> None:
        """Stop the helper's process group in the guest and wait for it (bounded)."""
        if self.thread.is_alive():
            self.cancel.cancel(reason)
            self.thread.join(STOP_WAIT)

    def wait(self, cancel: CancelToken) -> None:
        """Wait for the helper to end, passing a host cancel on to the guest."""
        while not self.finished.wait(0.1):
            if cancel.cancelled and not self.cancel.cancelled:
                self.cancel.cancel(cancel.reason or "interrupted")


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


