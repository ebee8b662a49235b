"""Deterministic fault injection for the lab: named points, holds and hooks.

Every VM operation passes a named *point* while it is underway on the server
(``"VM.start"``, ``"VM.clean_shutdown"``, ``"VM.hard_shutdown"``,
``"VM.revert"``, ...), after XAPI has registered it in the VM's
``current_operations``. A test can

- :meth:`LabFaults.hold` a point: the operation waits there, server-side,
  until the test :meth:`Hold.release` s it, or its task is cancelled;
  :meth:`Hold.wait_reached` tells the test the operation got there;
- :meth:`LabFaults.on` a point or a call (``"call:VM.start"`` before the lab
  handles it, ``"answer:VM.start"`` after it, before the answer is sent) to run
  a callback there, e.g. to change the pool master or send an interrupt;
- :meth:`LabFaults.reset_after` a call: the lab does the call and then drops
  the connection without answering, so the client cannot know the outcome
  (Python's ``xmlrpc.client`` then silently sends the call again).

Nothing here sleeps: the test decides when a held operation moves on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Hold", "LabFaults", "VmFaults"]


class Hold:
    """A point where server-side work waits until released (or cancelled)."""

    def __init__(self, point: str):
        self.point = point
        self._released = threading.Event()
        self._reached = threading.Event()
        self.count = 0

    def release(self) -> None:
        """Let every operation waiting here (and every later one) go on."""
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()

    def wait_reached(self, timeout: float = 10.0) -> bool:
        """Block until an operation reached the point (``False`` after ``timeout``)."""
        return self._reached.wait(timeout)

    def arrive(self, stop: Callable[[], bool], wake: threading.Event) -> bool:
        """Called by the operation: wait until released; ``False`` when ``stop()`` says so.

        ``wake`` is set by whoever changes what ``stop`` looks at (a cancel).
        """
        self.count += 1
        self._reached.set()
        while not self._released.is_set():
            if stop():
                return False
            wake.wait(0.05)
        return not stop()


@dataclass
class VmFaults:
    """Faults of one VM; change them at any time."""

    #: the agent only ever reports link-local addresses
    ip_never: bool = False
    #: the guest ignores a clean shutdown: it waits until a hard shutdown or task
    #: cancel ends it, or the shutdown limit passes (``VM_SHUTDOWN_TIMEOUT``)
    clean_shutdown_hangs: bool = False
    #: ``VM.start`` fails with this error code ('' = starts fine)
    start_fails: str = ""
    #: the address is published but the guest's sshd is never started
    ssh_never: bool = False


@dataclass
class LabFaults:
    """Faults and server-side timings of the whole lab."""

    #: sessions die this many seconds after login (0 = never)
    session_ttl: float = 0.0
    #: ``event.from`` is unknown, as on a pool that forbids it: the client must poll
    events_unsupported: bool = False
    #: how long a conflicting VM operation waits on the server for the other one
    #: (xen-api ``helpers.ml``, ``Policy.standard``: 2 hours); then
    #: ``OTHER_OPERATION_IN_PROGRESS``
    conflict_wait: float = 7200.0
    #: how long XAPI waits for a guest to shut itself down
    #: (xen-api ``xapi_globs.ml``, ``domain_shutdown_total_timeout``)
    shutdown_limit: float = 1200.0
    #: seconds a failed login waits before answering (xen-api ``xapi_session.ml``,
    #: ``thread_delay_and_raise_error``)
    failed_login_delay: float = 5.0
    #: ``OTHER_OPERATION_IN_PROGRESS`` parameters: "8.2" gives
    #: ``["VM.<op>", vm]``, "8.3" gives ``["VM", vm, op, task]``
    api_style: str = "8.3"
    holds: dict[str, Hold] = field(default_factory=dict)
    hooks: dict[str, list[Callable[[], None]]] = field(default_factory=dict)
    resets: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def hold(self, point: str) -> Hold:
        """Hold operations at ``point`` until the returned hold is released."""
        with self._lock:
            hold = self.holds.get(point)
            if hold is None or hold.released:
                hold = self.holds[point] = Hold(point)
            return hold

    def held(self, point: str) -> Hold | None:
        with self._lock:
            return self.holds.get(point)

    def on(self, point: str, callback: Callable[[], None], *, once: bool = True) -> None:
        """Run ``callback`` when a call or operation reaches ``point``."""
        if once:
            fired = threading.Event()
            inner = callback

            def callback() -> None:
                if not fired.is_set():
                    fired.set()
                    inner()

        with self._lock:
            self.hooks.setdefault(point, []).append(callback)

    def fire(self, point: str) -> None:
        with self._lock:
            callbacks = list(self.hooks.get(point, ()))
        for callback in callbacks:
            callback()

    def reset_after(self, method: str, times: int = 1) -> None:
        """Drop the connection after handling the next ``times`` calls of ``method``."""
        with self._lock:
            self.resets[method] = self.resets.get(method, 0) + times

    def take_reset(self, method: str) -> bool:
        with self._lock:
            left = self.resets.get(method, 0)
            if left <= 0:
                return False
            self.resets[method] = left - 1
            return True
