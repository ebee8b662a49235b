"""Transports: run a command and move a tree, locally or in a guest.

Every transport runs commands through :class:`CommandRunner`'s ``run``
contract: output streamed line by line, exit status returned, a timeout and a
:class:`~fruix_core.model.CancelToken` honoured by stopping the command's whole
process group.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from fruix_core.errors import Cancelled, PhaseTimeout
from fruix_core.model import CancelToken, PhaseResult

__all__ = ["CommandOutcome", "CommandRunner", "LineSink"]

LineSink = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """How a command ended.

    ``returncode`` is the exit status (negative: killed by that signal);
    ``timed_out`` / ``cancelled`` say why it was stopped, if it was.
    """

    returncode: int
    duration: float
    last_lines: tuple[str, ...] = ()
    timed_out: bool = False
    cancelled: bool = False

    @property
    def failed(self) -> bool:
        """Whether the phase this command ran must be recorded as failed."""
        return self.cancelled or self.timed_out or self.returncode != 0

    def phase_result(self, phase: str, log_path: str, timeout: float | None) -> PhaseResult:
        """The :class:`PhaseResult` of a phase this command ran.

        :raises Cancelled: the command was stopped by Ctrl-C / SIGTERM.
        :raises PhaseTimeout: the command ran past ``timeout``.
        """
        if self.cancelled:
            raise Cancelled(f"interrupted during {phase}")
        if self.timed_out:
            raise PhaseTimeout(phase, timeout or 0)
        return PhaseResult(phase=phase, returncode=self.returncode, duration=self.duration,
                           log_path=log_path, last_lines=self.last_lines)


class CommandRunner(Protocol):
    """What executors need from a transport to run a phase."""

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None = None,
        on_line: LineSink | None = None,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
    ) -> CommandOutcome: ...
