"""What ``fruix native-build run`` says on stderr while it builds.

Three displays of the same :class:`~fruix_core.model.RunEvent` stream, chosen
by :func:`progress_display`:

* :class:`TerminalProgress` (stderr is a terminal): a live area drawn by
  ``rich`` -- run id, ``phase 2/5 buildkernel``, elapsed time, the last output
  line, the log path, the guest's current step, promotion progress -- above
  which each finished step leaves one line (``✓ buildworld  1m02s``).
* :class:`LineProgress` (stderr is a file or a pipe: cron, CI): one plain
  line per event, ``2026-12-06T17:40:01Z fruix: phase 2/5 buildkernel
  started``, written and flushed at once.
* :class:`JsonProgress` (``--log-format json``): one JSON object per event,
  like the JSON log records.
"""

from __future__ import annotations

import datetime as _dt
import re
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, TextIO

from fruix_core.model import RunEvent
from fruix_core.runrecord import duration_text as duration
from fruix_core.runrecord import iso_time, size_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from fruix_core.promotion import Progress

__all__ = ["LINE_PREFIX", "JsonProgress", "LineProgress", "TerminalProgress", "describe",
           "duration", "progress_display"]


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _phase(event: RunEvent) -> str:
    place = f"{event.number}/{event.count} " if event.number and event.count else ""
    return f"phase {place}{event.phase}"


def describe(event: RunEvent) -> str | None:
    """One line telling ``event``, or ``None`` for events that only move a live display."""
    kind, guest = event.kind, event.guest or ""
    lines: dict[str, Callable[[], str]] = {
        "run-started": lambda: (f"run {event.run_id} started (executor {event.executor}"
                                + (f", guest {guest}" if guest else "")
                                + f"); logs in {event.log}"),
        "guest-acquiring": lambda: f"guest {guest}: acquiring",
        "guest-step": lambda: f"guest {guest}: {event.message}",
        "guest-acquired": lambda: (f"guest {guest} acquired at {event.host} "
                                   f"in {duration(event.seconds)}"),
        "phase-started": lambda: f"{_phase(event)} started (log {event.log})",
        "phase-finished": lambda: f"{_phase(event)} finished in {duration(event.seconds)}",
        "phase-failed": lambda: (f"{_phase(event)} FAILED after {duration(event.seconds)}: "
                                 f"{_first_line(event.error)}"),
        "staging-started": lambda: "staging the artifacts",
        "staging-finished": lambda: f"artifacts staged in {duration(event.seconds)}",
        "teardown-started": lambda: "tearing down the build environment",
        "teardown-finished": lambda: (
            f"build environment torn down in {duration(event.seconds)}" if not event.error
            else f"teardown FAILED: {_first_line(event.error)}"),
        "import-started": lambda: f"importing the result root from guest {guest}",
        "import-finished": lambda: f"result root imported in {duration(event.seconds)}",
        "guest-releasing": lambda: f"guest {guest}: releasing (run {event.status})",
        "guest-released": lambda: (
            f"guest {guest} released in {duration(event.seconds)}" if not event.error
            else f"guest {guest}: release FAILED: {_first_line(event.error)}"),
        "promotion-started": lambda: f"promoting into {event.message}",
        "promotion-finished": lambda: (f"promoted in {duration(event.seconds)}: bundle "
                                       f"{event.bundle}"),
        "run-finished": lambda: f"run {event.run_id} ok in {duration(event.seconds)}",
        "run-failed": lambda: (f"run {event.run_id} {event.status} at {event.phase} after "
                               f"{duration(event.seconds)}: {_first_line(event.error)}"),
    }
    tell = lines.get(kind)
    return tell() if tell is not None else None


#: How every line of :class:`LineProgress` begins (a UTC timestamp, then ``fruix:``).
LINE_PREFIX = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ fruix: ")


def _timestamp() -> str:
    return str(iso_time(_dt.datetime.now(_dt.UTC)))


class _Display:
    """What every display offers ``run_command``: a context and three callbacks."""

    #: given to ``run_build(progress=...)``; ``None`` when the display shows no files/bytes
    promotion: Callable[[Progress], None] | None = None

    def __enter__(self) -> _Display:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def on_event(self, event: RunEvent) -> None:
        return None

    def on_output(self, phase: str, line: str) -> None:
        return None


class LineProgress(_Display):
    """One plain, timestamped line per event, flushed at once (stderr off a terminal)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def render(self, event: RunEvent) -> str | None:
        text = describe(event)
        return None if text is None else f"{_timestamp()} fruix: {text}"

    def on_event(self, event: RunEvent) -> None:
        line = self.render(event)
        if line is None:
            return
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class JsonProgress(LineProgress):
    """One JSON object per event (``--log-format json``): ``event`` is the plain line."""

    def render(self, event: RunEvent) -> str | None:
        from fruix_core.logconfig import json_record

        level = "error" if event.kind in ("phase-failed", "run-failed") else "info"
        return json_record(level, describe(event) or event.kind, "fruix.progress",
                           **event.as_dict())


class TerminalProgress(_Display):
    """A live area on a terminal (``rich``); finished steps stay as lines above it."""

    def __init__(self, stream: TextIO, refresh_per_second: float = 4) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, highlight=False, soft_wrap=False)
        ok = "✓" if (self.console.encoding or "").lower().startswith("utf") else "ok"
        self._marks = (ok, "✗" if ok == "✓" else "FAILED")
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._phase_started = self._started
        self._run_id = ""
        self._phase = ""
        self._log = ""
        self._doing = "starting"
        self._line = ""
        self._promotion = ""
        self.promotion = self._on_promotion
        self._live = Live(get_renderable=self._render, console=self.console,
                          refresh_per_second=refresh_per_second, transient=True,
                          redirect_stdout=False, redirect_stderr=True)

    def __enter__(self) -> TerminalProgress:
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.stop()

    # -- what the run tells ------------------------------------------------------------

    def _keep(self, text: str, style: str = "") -> None:
        """A line that stays above the live area."""
        from rich.text import Text

        # The style goes on the text: print(style=...) would also colour the live area,
        # which rich draws in the same batch.
        self.console.print(Text(text, style=style))

    def on_event(self, event: RunEvent) -> None:
        ok, failed = self._marks
        kind = event.kind
        with self._lock:
            self._run_id = event.run_id
            if kind == "phase-started":
                self._phase, self._log = _phase(event), event.log or ""
                self._doing, self._line = self._phase, ""
                self._phase_started = time.monotonic()
            elif kind in ("guest-acquiring", "guest-step", "guest-releasing",
                          "staging-started", "teardown-started", "import-started",
                          "promotion-started"):
                self._doing = describe(event) or kind
                self._phase_started = time.monotonic() if kind != "guest-step" \
                    else self._phase_started
                self._line = self._promotion = self._log = ""
            elif kind == "guest-acquired":
                self._doing, self._phase_started = "preparing the build environment", \
                    time.monotonic()
        if kind == "run-started":
            self._keep(describe(event) or "", "bold")
        elif kind == "phase-finished":
            self._keep(f"{ok} {event.phase:<14} {duration(event.seconds)}", "green")
        elif kind == "phase-failed":
            self._keep(f"{failed} {event.phase:<14} {duration(event.seconds)}  "
                       f"(log {event.log})", "bold red")
        elif kind == "guest-step":
            self._keep(f"  {describe(event)}", "dim")
        elif kind in ("guest-acquired", "guest-released", "staging-finished",
                      "teardown-finished", "import-finished", "promotion-finished"):
            mark = failed if event.error else ok
            self._keep(f"{mark} {describe(event)}", "red" if event.error else "")
        elif kind in ("run-finished", "run-failed"):
            self._keep(describe(event) or "", "bold green" if kind == "run-finished"
                       else "bold red")

    def on_output(self, phase: str, line: str) -> None:
        with self._lock:
            self._line = line.rstrip("\n").replace("\t", " ")

    def _on_promotion(self, state: Progress) -> None:

        with self._lock:
            self._promotion = (f"{state.kind}: {state.files_done}/{state.files_total} files, "
                               f"{size_text(state.bytes_done)}/{size_text(state.bytes_total)}, "
                               f"{size_text(state.bytes_written)} written")

    # -- the live area ----------------------------------------------------------------

    def _render(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        now = time.monotonic()
        with self._lock:
            head = Text()
            head.append(f"run {self._run_id or '…'}", style="bold")
            head.append(f"  {self._doing}", style="cyan")
            head.append(f"  {duration(now - self._phase_started)}"
                        f"  (total {duration(now - self._started)})", style="dim")
            rows = [head]
            detail = self._promotion or self._line
            if detail:
                rows.append(Text("  " + detail, overflow="ellipsis", no_wrap=True))
            if self._log and not self._promotion:
                rows.append(Text(f"  log: {self._log}", style="dim", overflow="ellipsis",
                                 no_wrap=True))
        return Group(*rows)


def progress_display(log_format: str, stream: TextIO | None = None) -> _Display:
    """The display for ``stream`` (stderr): JSON lines, a live terminal area, or plain lines."""
    stream = stream or sys.stderr
    if log_format == "json":
        return JsonProgress(stream)
    if stream.isatty():
        return TerminalProgress(stream)
    return LineProgress(stream)
