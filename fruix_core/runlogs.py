"""``fruix native-build logs RUN [PHASE] [-f]``: print or follow a run's phase logs.

Logs are bytes (a compiler may print anything), copied to the output as
they are. A log that is not a regular file (a symlink planted in a result
root, a FIFO) is refused, never followed or opened.

Following polls: each round first reads the run's status, then copies what
the logs gained. When a round saw the run no longer ``running`` (or its
process gone), the copy that followed it was the last word, and following
stops; so nothing written before the run finished is lost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from fruix_core.errors import UsageError
from fruix_core.promotion.display import shown
from fruix_core.promotion.safeio import UnsafeNodeError, open_regular_at
from fruix_core.resultroot import ResultRoot
from fruix_core.runrecord import phase_names

__all__ = ["LogFollower", "print_logs", "selected_phases"]

_CHUNK = 1 << 16


def selected_phases(root: ResultRoot, phase: str | None) -> list[str]:
    """The phases whose logs to show: ``phase``, or every phase in build order.

    :raises UsageError: when ``phase`` is not one of the run's phases.
    """
    names = phase_names(root, root.read_metadata())
    if phase is None:
        return names
    if phase not in names:
        raise UsageError(f"run {root.run_id} has no phase {shown(phase)!r} "
                         f"(its phases: {', '.join(names)})")
    return [phase]


def _read_from(root: ResultRoot, phase: str, offset: int) -> tuple[bytes, int]:
    """New bytes of ``phase``'s log from ``offset``; a log that shrank is read from 0."""
    path = root.log_path(phase)
    try:
        fd, st = open_regular_at(os.fspath(path))
    except FileNotFoundError:
        return b"", offset
    except UnsafeNodeError as err:
        raise UsageError(f"{shown(path)}: {err.strerror}") from None
    try:
        if st.st_size < offset:
            offset = 0
        os.lseek(fd, offset, os.SEEK_SET)
        parts = []
        while chunk := os.read(fd, _CHUNK):
            parts.append(chunk)
        data = b"".join(parts)
        return data, offset + len(data)
    finally:
        os.close(fd)


@dataclass
class LogFollower:
    """Copies a run's phase logs to ``out`` as they grow.

    ``headers``: write ``==> <phase> <==`` before a log's bytes whenever the
    output switches to another log (like ``tail`` with several files).
    """

    root: ResultRoot
    phases: list[str] | None
    out: BinaryIO
    headers: bool = True
    offsets: dict[str, int] = field(default_factory=dict)
    _current: str | None = None

    def _names(self) -> list[str]:
        return self.phases if self.phases is not None else phase_names(
            self.root, self.root.read_metadata())

    def copy_new(self) -> int:
        """Copy what every log gained since the last call; the number of bytes copied."""
        copied = 0
        for name in self._names():
            data, self.offsets[name] = _read_from(self.root, name, self.offsets.get(name, 0))
            if not data:
                continue
            if self.headers and self._current != name:
                prefix = b"\n" if self._current is not None else b""
                self.out.write(prefix + f"==> {name} <==\n".encode())
            self._current = name
            self.out.write(data)
            copied += len(data)
        if copied:
            self.out.flush()
        return copied

    def running(self) -> bool:
        status = self.root.status()
        return status.state == "running" and not status.stale

    def follow(self, *, interval: float = 0.2,
               sleep: Callable[[float], None] = time.sleep) -> str:
        """Copy until the run stops running; the status it ended with."""
        while True:
            still = self.running()
            self.copy_new()
            if not still:
                return str(self.root.status())
            sleep(interval)


def print_logs(root: ResultRoot, phase: str | None, out: BinaryIO) -> int:
    """Print the selected logs once; the number of bytes printed."""
    follower = LogFollower(root, selected_phases(root, phase), out, headers=phase is None)
    return follower.copy_new()
