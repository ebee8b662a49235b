"""The line protocol between the in-guest helper and the host-side executor.

With ``--markers`` the helper interleaves marker lines with the build output
on its standard output, so the host can attribute every line to a phase
without a second channel::

    @@fruix-self-hosted@@ phase-start buildworld
    ... make output ...
    @@fruix-self-hosted@@ phase-end buildworld 0 12.345
    @@fruix-self-hosted@@ summary {"status": "ok", ...}

A build output line that happens to start with the marker prefix is sent with
one leading space, so it can never be taken for a marker. The summary is the
``--json`` document of the helper on one line; it is always the last marker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MARKER",
    "PROG",
    "Marker",
    "escape_output",
    "parse_marker",
    "phase_end",
    "phase_start",
    "summary_line",
    "unescape_output",
]

#: The helper's command name, also the first word of its ``--version`` line.
PROG = "fruix-self-hosted-native-build"
MARKER = "@@fruix-self-hosted@@"


@dataclass(frozen=True, slots=True)
class Marker:
    """One parsed marker line.

    ``kind`` is ``phase-start``, ``phase-end`` or ``summary``; ``phase``,
    ``returncode`` and ``seconds`` are set for phase markers, ``document`` for
    the summary.
    """

    kind: str
    phase: str = ""
    returncode: int = 0
    seconds: float = 0.0
    document: dict[str, Any] | None = None


def phase_start(phase: str) -> str:
    """The marker line announcing that ``phase`` starts."""
    return f"{MARKER} phase-start {phase}"


def phase_end(phase: str, returncode: int, seconds: float) -> str:
    """The marker line reporting how ``phase`` ended."""
    return f"{MARKER} phase-end {phase} {returncode} {seconds:.3f}"


def summary_line(document: dict[str, Any]) -> str:
    """The marker line carrying the helper's summary document."""
    return f"{MARKER} summary {json.dumps(document, sort_keys=True, separators=(',', ':'))}"


def escape_output(line: str) -> str:
    """A build output line as sent in marker mode (never mistaken for a marker)."""
    return " " + line if line.startswith(MARKER) else line


def unescape_output(line: str) -> str:
    """The build output line that :func:`escape_output` sent as ``line``."""
    return line[1:] if line.startswith(" " + MARKER) else line


def parse_marker(line: str) -> Marker | None:
    """The marker on ``line``, or ``None`` for an ordinary output line (or a garbled marker)."""
    if not line.startswith(MARKER + " "):
        return None
    words = line[len(MARKER) + 1:].split(" ", 1)
    kind, rest = words[0], (words[1] if len(words) > 1 else "")
    try:
        if kind == "phase-start" and rest and " " not in rest:
            return Marker(kind, phase=rest)
        if kind == "phase-end":
            phase, code, seconds = rest.split(" ")
            return Marker(kind, phase=phase, returncode=int(code), seconds=float(seconds))
        if kind == "summary":
            document = json.loads(rest)
            if isinstance(document, dict):
                return Marker(kind, document=document)
    except ValueError:
        return None
    return None
