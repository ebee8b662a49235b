"""A run as an operator reads it back: status, metadata, phases in order, timings, logs.

Timings come from the run's metadata when the runner recorded them
(``started``, ``finished``, ``run_seconds``, and per phase
``phase_<name>_started``, ``phase_<name>_finished``, ``phase_<name>_seconds``;
ISO 8601 UTC). Result roots written before those keys existed still get a
timeline: the run id is the run's start (a UTC stamp), each phase ends when
its log was last written and starts when the previous one ended.

Metadata is data from a result root: values are parsed, never evaluated,
and a value that does not parse is ignored rather than trusted.

The ``metadata`` file stays ``key=value`` text (the guest helper writes it
too); the types of its values for JSON come from one table here,
:data:`METADATA_TYPES`, applied by :func:`typed_metadata`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from fruix_core.profile import PHASES
from fruix_core.resultroot import ResultRoot, RunStatus

__all__ = ["METADATA_TYPES", "PhaseRecord", "RunRecord", "duration_text", "iso_time",
           "phase_names", "read_run", "typed_metadata"]

_RUN_STAMP = re.compile(r"(\d{8}T\d{6}Z)(?:-\d+)?\Z")
_PHASE_NAME = re.compile(r"[A-Za-z0-9._-]+\Z")

#: Metadata keys (full-match patterns) whose values are numbers: ``integer``
#: (counts, byte sizes) or ``number`` (seconds). Every other key is a string
#: (no key is a boolean). A listed key whose value does not parse is ``None``.
METADATA_TYPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"build_jobs"), "integer"),
    (re.compile(r"size_[A-Za-z0-9_]+|[A-Za-z0-9_]+_size"), "integer"),
    (re.compile(r"run_seconds|phase_[A-Za-z0-9._-]+_seconds"), "number"),
)


@dataclass(frozen=True, slots=True)
class PhaseRecord:
    """One phase of a run; times are ``None`` when unknown."""

    name: str
    log: Path | None
    started: _dt.datetime | None
    finished: _dt.datetime | None
    seconds: float | None
    timing: str  # "metadata", "log-times" or "none"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What :func:`read_run` found in one result root."""

    root: ResultRoot
    status: RunStatus
    metadata: dict[str, str]
    phases: tuple[PhaseRecord, ...]
    started: _dt.datetime | None
    finished: _dt.datetime | None
    seconds: float | None

    @property
    def run_id(self) -> str:
        return self.root.run_id

    @property
    def state(self) -> str:
        return "stale" if self.status.stale else self.status.state


def _parse_time(value: str | None) -> _dt.datetime | None:
    if not value:
        return None
    try:
        when = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.UTC)


def _parse_seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _mtime(path: Path) -> _dt.datetime | None:
    try:
        return _dt.datetime.fromtimestamp(os.lstat(path).st_mtime, _dt.UTC)
    except OSError:
        return None


def _run_stamp(run_id: str) -> _dt.datetime | None:
    match = _RUN_STAMP.match(run_id)
    if not match:
        return None
    return _dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=_dt.UTC)


def phase_names(root: ResultRoot, metadata: dict[str, str]) -> list[str]:
    """The run's phases in build order, then any other logs it has (sorted)."""
    declared = [p for p in metadata.get("phases", "").split(",") if _PHASE_NAME.match(p)]
    names = declared or [p.name for p in PHASES]
    try:
        logs = sorted(p.name[:-4] for p in root.logs.iterdir() if p.name.endswith(".log"))
    except OSError:
        logs = []
    return names + [n for n in logs if n not in names and _PHASE_NAME.match(n)]


def read_run(root: ResultRoot) -> RunRecord:
    """Read ``root``'s status, metadata and phase timings (see the module docstring)."""
    metadata = root.read_metadata()
    status = root.status()
    run_started = _parse_time(metadata.get("started")) or _run_stamp(root.run_id)
    phases: list[PhaseRecord] = []
    previous_end = run_started
    for name in phase_names(root, metadata):
        log = root.log_path(name)
        has_log = os.path.lexists(log) and not os.path.islink(log)
        started = _parse_time(metadata.get(f"phase_{name}_started"))
        finished = _parse_time(metadata.get(f"phase_{name}_finished"))
        seconds = _parse_seconds(metadata.get(f"phase_{name}_seconds"))
        timing = "metadata"
        if started is None and finished is None and seconds is None:
            if not has_log:
                continue
            timing = "log-times"
            started, finished = previous_end, _mtime(log)
            if started is not None and finished is not None:
                seconds = max(0.0, (finished - started).total_seconds())
        elif seconds is None and started is not None and finished is not None:
            seconds = max(0.0, (finished - started).total_seconds())
        if seconds is None and started is None and finished is None:
            timing = "none"
        phases.append(PhaseRecord(name, log if has_log else None, started, finished, seconds,
                                  timing))
        previous_end = finished or previous_end
    finished_run = _parse_time(metadata.get("finished"))
    if finished_run is None and status.state in ("ok", "failed"):
        finished_run = previous_end if phases else None
    seconds_run = _parse_seconds(metadata.get("run_seconds"))
    if seconds_run is None and run_started is not None and finished_run is not None:
        seconds_run = max(0.0, (finished_run - run_started).total_seconds())
    return RunRecord(root, status, metadata, tuple(phases), run_started, finished_run,
                     seconds_run)


def _typed(kind: str, value: str) -> int | float | None:
    if kind == "integer":
        return int(value) if re.fullmatch(r"[0-9]{1,20}", value) else None
    return _parse_seconds(value)


def typed_metadata(metadata: dict[str, str]) -> dict[str, object]:
    """``metadata`` with the values of :data:`METADATA_TYPES`' keys as numbers."""
    out: dict[str, object] = {}
    for key, value in metadata.items():
        kind = next((k for pattern, k in METADATA_TYPES if pattern.fullmatch(key)), None)
        out[key] = value if kind is None else _typed(kind, value)
    return out


def iso_time(when: _dt.datetime | None) -> str | None:
    """``when`` as ISO 8601 UTC with a ``Z`` (``2026-04-05T15:03:59Z``)."""
    return when.astimezone(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if when else None


def size_text(n: int | None) -> str:
    """A size for people: ``512 B``, ``3.4 KiB``, ``1.2 GiB``; ``?`` when unknown."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            break
        value /= 1024
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def duration_text(seconds: float | None) -> str:
    """A duration for people: ``4.2s``, ``27s``, ``3m05s``, ``1h02m``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{secs}s"
