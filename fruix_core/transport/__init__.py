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

from fruix_core.model import CancelToken

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
