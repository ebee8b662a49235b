"""Release survives Ctrl-C: it runs in a worker thread while the main thread only waits.

Python delivers Ctrl-C (``KeyboardInterrupt``) to the main thread only, so
the worker shutting down and reverting the VM is never interrupted. The
waiting thread says what release is doing when an interrupt arrives; a
second interrupt within :data:`ABANDON_WINDOW` seconds of the first is the
only way to stop waiting, and it says, in one line, which VM is left in what
state. SIGTERM only sets the run's cancel token, which release never reads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from fruix_core.api import GuestError

__all__ = ["ABANDON_WINDOW", "shielded"]

log = structlog.get_logger(__name__)

#: Seconds within which a second interrupt during release abandons it.
ABANDON_WINDOW = 3.0


def shielded(work: Callable[[], None], *, label: str, stage: Callable[[], str],
             how_to_finish: str) -> None:
    """Run ``work`` (a release) so that a single Ctrl-C cannot abandon it.

    :param label: the VM, for messages.
    :param stage: what the release is doing now ("shutting down VM build").
    :param how_to_finish: what an operator runs to finish an abandoned release.
    :raises GuestError: abandoned by two interrupts in a row, naming the VM
        and its stage; or whatever ``work`` raised.
    """
    if threading.current_thread() is not threading.main_thread():
        work()
        return
    failure: list[BaseException] = []
    done = threading.Event()

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # handed to the waiting thread
            failure.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=run, name="fruix-xcpng-release", daemon=True)
    worker.start()
    last_interrupt: float | None = None
    while not done.is_set():
        try:
            done.wait(0.2)
        except KeyboardInterrupt:
            now = time.monotonic()
            if last_interrupt is not None and now - last_interrupt <= ABANDON_WINDOW:
                message = (f"release of {label} ABANDONED while {stage()}: the VM may be left "
                           f"running and not reverted; finish it with: {how_to_finish}")
                log.warning(message)
                raise GuestError(message) from None
            last_interrupt = now
            log.warning(f"still releasing {label}: {stage()}; it will end halted and "
                        f"reverted (Ctrl-C again within {ABANDON_WINDOW:g} s abandons it)")
    if failure:
        raise failure[0]
