"""Run commands on this machine, in their own process group.

The command runs in a new session so that a timeout, Ctrl-C or SIGTERM stops
the whole tree (make and every compiler it started) and no orphan survives:
SIGTERM to the group, a grace period, then SIGKILL; after a normal exit the
group is swept with SIGKILL too, for children that outlived their parent.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

from fruix_core.errors import ToolMissingError
from fruix_core.model import CancelToken
from fruix_core.transport import CommandOutcome, LineSink

__all__ = ["LocalRunner", "kill_process_group"]

#: Seconds between SIGTERM and SIGKILL when stopping a process group.
GRACE_SECONDS = 3.0
TAIL_LINES = 20
#: How often a running command is checked for cancellation and timeout.
POLL_SECONDS = 0.1


def kill_process_group(pgid: int, grace: float = GRACE_SECONDS,
                       leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL it.

    ``leader`` is reaped while waiting: an unreaped leader keeps its group
    alive as a zombie, which would make every stop wait the whole grace.
    """
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if leader is not None:
            leader.poll()
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class LocalRunner:
    """Runs commands with :mod:`subprocess`, streaming merged stdout/stderr."""

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None = None,
        on_line: LineSink | None = None,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
    ) -> CommandOutcome:
        started = time.monotonic()
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        try:
            proc = subprocess.Popen(
                list(argv), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            )
        except FileNotFoundError:
            raise ToolMissingError(
                f"'{argv[0]}' not found (PATH={env.get('PATH', '')})") from None
        except PermissionError:
            raise ToolMissingError(f"'{argv[0]}' is not executable") from None

        def pump() -> None:
            assert proc.stdout is not None
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                if on_line is not None:
                    on_line(line)
            proc.stdout.close()

        reader = threading.Thread(target=pump, name="fruix-output", daemon=True)
        reader.start()
        timed_out = cancelled = False
        try:
            while proc.poll() is None:
                if cancel is not None and cancel.cancelled:
                    cancelled = True
                elif timeout is not None and time.monotonic() - started > timeout:
                    timed_out = True
                if timed_out or cancelled:
                    kill_process_group(proc.pid, leader=proc)
                    break
                # The reader ends at EOF, normally the moment the command exits: waiting
                # on it (not sleeping) keeps the per-phase latency near zero.
                reader.join(POLL_SECONDS)
                if not reader.is_alive():
                    try:
                        proc.wait(timeout=POLL_SECONDS)
                    except subprocess.TimeoutExpired:
                        pass
        except BaseException:
            kill_process_group(proc.pid, grace=0.5, leader=proc)
            raise
        finally:
            returncode = proc.wait()
            # Sweep children that outlived make (daemonised helpers, stray compilers).
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            reader.join(timeout=5)
        return CommandOutcome(
            returncode=returncode, duration=time.monotonic() - started,
            last_lines=tuple(tail), timed_out=timed_out, cancelled=cancelled,
        )
