"""The lab's XAPI object model: sessions, VMs, snapshots, guest metrics, events.

Semantics follow XAPI for the calls the provider uses: objects are named by
opaque references (``OpaqueRef:<uuid>``) and uuids; the power-state machine
refuses a transition with ``VM_BAD_POWER_STATE [vm, expected, actual]``;
unknown references give ``HANDLE_INVALID [class, ref]``, unknown uuids
``UUID_INVALID [class, uuid]``; a dead session ``SESSION_INVALID [ref]``; a bad
login ``SESSION_AUTHENTICATION_FAILED [user, message]``. ``event.from``
returns every matching object for the empty token and otherwise blocks until
something changed after the token or the timeout passed.

Starting a VM asks a :class:`GuestBooter` to bring the guest up (a real sshd
for the default booter) and publishes its address in the guest metrics after
the VM's ``ip_delay``. Faults are injected per VM (:class:`VmFaults`) or for the
whole lab (:class:`LabFaults`).
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid as uuidlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

__all__ = [
    "NULL_REF",
    "GuestBooter",
    "LabFaults",
    "LabSession",
    "LabVM",
    "NullBooter",
    "VmFaults",
    "XapiError",
    "XapiState",
]

log = structlog.get_logger(__name__)

NULL_REF = "OpaqueRef:NULL"
#: Longest a hanging clean shutdown blocks its caller when nothing ends it.
HANG_LIMIT = 600.0


class XapiError(Exception):
    """A XAPI failure: ``ErrorDescription`` = ``[code, *params]``."""

    def __init__(self, code: str, *params: Any):
        self.description = [code, *(str(p) for p in params)]
        super().__init__(" ".join(self.description))


def new_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


@dataclass
class VmFaults:
    """Faults of one VM; change them at any time."""

    #: the agent only ever reports link-local addresses
    ip_never: bool = False
    #: ``VM.clean_shutdown`` blocks until a hard shutdown (or HANG_LIMIT)
    clean_shutdown_hangs: bool = False
    #: ``VM.start`` fails with this error code ('' = starts fine)
    start_fails: str = ""
    #: the address is published but the guest's sshd is never started
    ssh_never: bool = False
    #: this many ``VM.hard_shutdown`` calls fail with ``OTHER_OPERATION_IN_PROGRESS``
    hard_shutdown_busy: int = 0


@dataclass
class LabFaults:
    """Faults of the whole lab."""

    #: sessions die this many seconds after login (0 = never)
    session_ttl: float = 0.0
    #: ``event.from`` is unknown, as on a pool that forbids it: the client must poll
    events_unsupported: bool = False


@dataclass
class LabSession:
    ref: str
    uuid: str
    user: str
    originator: str
    created: float


@dataclass
class LabVM:
    """One VM (or snapshot) of the lab."""

    name: str
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    ref: str = field(default_factory=new_ref)
    power_state: str = "Halted"
    #: the guest's system root; snapshots keep a copy of it
    root: Path | None = None
    #: the address the agent reports, and sshd's port there
    address: str = "127.0.0.2"
    ssh_port: int = 22
    ip_delay: float = 0.2
    faults: VmFaults = field(default_factory=VmFaults)
    is_a_snapshot: bool = False
    snapshot_of: str = NULL_REF
    snapshots: list[str] = field(default_factory=list)
    guest_metrics: str = NULL_REF
    snapshot_time: float = 0.0
    #: bumped on every boot and halt, so a stale boot thread knows it is stale
    generation: int = 0
    boots: int = 0
    reverts: int = 0
    #: set by a hard shutdown, releases a hanging clean shutdown
    hard_stop: threading.Event = field(default_factory=threading.Event)
    #: set once a clean shutdown hangs (a barrier for tests: no sleeping to wait for it)
    shutdown_hanging: threading.Event = field(default_factory=threading.Event)

    def record(self) -> dict[str, Any]:
        """The XAPI ``VM`` record (the fields this lab knows)."""
        return {
            "uuid": self.uuid,
            "name_label": self.name,
            "name_description": "",
            "power_state": self.power_state,
            "is_a_template": False,
            "is_a_snapshot": self.is_a_snapshot,
            "is_control_domain": False,
            "snapshot_of": self.snapshot_of,
            "snapshots": list(self.snapshots),
            "snapshot_time": time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(self.snapshot_time)),
            "guest_metrics": self.guest_metrics,
            "domid": "1" if self.power_state in ("Running", "Paused") else "-1",
            "other_config": {},
        }


@dataclass
class _Metrics:
    ref: str
    uuid: str
    vm: str
    networks: dict[str, str]

    def record(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "networks": dict(self.networks), "os_version": {},
                "PV_drivers_detected": True,
                "last_updated": time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime())}


class GuestBooter(Protocol):
    """Brings a lab VM's guest up and down (a real sshd for the default booter)."""

    def boot(self, vm: LabVM) -> None:
        """Start the guest's services; called in a thread of its own."""

    def halt(self, vm: LabVM) -> None:
        """Stop them; idempotent."""


class NullBooter:
    """A guest without services: only the XAPI side moves."""

    def boot(self, vm: LabVM) -> None:
        pass

    def halt(self, vm: LabVM) -> None:
        pass


class XapiState:
    """Everything the lab's XAPI knows; every public method is one XAPI call."""

    def __init__(self, *, users: dict[str, str], booter: GuestBooter | None = None,
                 snapshot_dir: Path | None = None, faults: LabFaults | None = None):
        self.users = dict(users)
        self.booter: GuestBooter = booter or NullBooter()
        self.snapshot_dir = snapshot_dir
        self.faults = faults or LabFaults()
        self.vms: dict[str, LabVM] = {}
        self.metrics: dict[str, _Metrics] = {}
        self.sessions: dict[str, LabSession] = {}
        self.logged_out: list[str] = []
        #: every session ever opened, in order (to check originators)
        self.history: list[LabSession] = []
        self.expired: list[str] = []
        self.logins = 0
        #: the latest calls' method names, oldest first (for debugging a rehearsal)
        self.calls: deque[str] = deque(maxlen=1000)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._events: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._event_id = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lab side (not XAPI calls) ---------------------------------------------------

    def add_vm(self, vm: LabVM) -> LabVM:
        with self._lock:
            self.vms[vm.ref] = vm
            self._emit("vm", "add", vm.ref)
        return vm

    def vm_by_name(self, name: str) -> LabVM:
        with self._lock:
            for vm in self.vms.values():
                if vm.name == name and not vm.is_a_snapshot:
                    return vm
        raise KeyError(name)

    def live_sessions(self) -> list[LabSession]:
        with self._lock:
            self._expire_old()
            return list(self.sessions.values())

    def expire_sessions(self) -> int:
        """Kill every live session, as a pool master restart would; returns how many."""
        with self._lock:
            count = len(self.sessions)
            self.expired.extend(self.sessions)
            self.sessions.clear()
            return count

    def shutdown(self) -> None:
        """Stop every guest and wake every blocked call (the lab is going away)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        with self._lock:
            for vm in list(self.vms.values()):
                vm.hard_stop.set()
                if not vm.is_a_snapshot and vm.power_state != "Halted":
                    self._halt_guest(vm)
        for thread in self._threads:
            thread.join(timeout=5)

    # -- plumbing ---------------------------------------------------------------------

    def _emit(self, cls: str, operation: str, ref: str) -> None:
        self._event_id += 1
        snapshot: dict[str, Any] | None = None
        if operation != "del":
            snapshot = (self.vms[ref].record() if cls == "vm" else self.metrics[ref].record())
        self._events.append({"id": str(self._event_id), "timestamp": str(time.time()),
                             "class": cls, "operation": operation, "ref": ref,
                             "snapshot": snapshot, "_n": self._event_id})
        self._changed.notify_all()

    def _expire_old(self) -> None:
        ttl = self.faults.session_ttl
        if ttl <= 0:
            return
        now = time.monotonic()
        for ref, session in list(self.sessions.items()):
            if now - session.created > ttl:
                del self.sessions[ref]
                self.expired.append(ref)

    def check_session(self, ref: Any) -> LabSession:
        with self._lock:
            self._expire_old()
            session = self.sessions.get(ref) if isinstance(ref, str) else None
            if session is None:
                raise XapiError("SESSION_INVALID", ref)
            return session

    def _vm(self, ref: Any) -> LabVM:
        vm = self.vms.get(ref) if isinstance(ref, str) else None
        if vm is None:
            raise XapiError("HANDLE_INVALID", "VM", ref)
        return vm

    def _require(self, vm: LabVM, *expected: str) -> None:
        if vm.power_state not in expected:
            raise XapiError("VM_BAD_POWER_STATE", vm.ref, expected[0].lower(),
                            vm.power_state.lower())

    def _set_state(self, vm: LabVM, state: str) -> None:
        vm.power_state = state
        self._emit("vm", "mod", vm.ref)

    # -- guests -------------------------------------------------------------------------

    def _boot_guest(self, vm: LabVM) -> None:
        """Bring the guest up in a thread; publish its address after ``ip_delay``."""
        vm.generation += 1
        vm.boots += 1
        vm.hard_stop.clear()
        generation = vm.generation
        started = time.monotonic()

        def run() -> None:
            try:
                if not vm.faults.ssh_never:
                    self.booter.boot(vm)
            except Exception as exc:  # a broken guest stays without services, like a real one
                log.error("lab guest failed to boot", vm=vm.name, error=str(exc))
            with self._lock:
                stale = vm.generation != generation
            if stale:  # halted while booting: do not leave its sshd behind
                self.booter.halt(vm)
                return
            delay = vm.ip_delay - (time.monotonic() - started)
            if delay > 0 and self._stopping.wait(delay):
                return
            with self._lock:
                if vm.generation != generation or vm.power_state != "Running":
                    return
                networks = {"1/ipv4/0": "169.254.77.1", "0/ipv6/0": "fe80::216:3eff:fe00:1"}
                if not vm.faults.ip_never:
                    networks.update({"0/ip": vm.address, "0/ipv4/0": vm.address})
                self._publish_metrics(vm, networks)

        thread = threading.Thread(target=run, name=f"lab-boot-{vm.name}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _publish_metrics(self, vm: LabVM, networks: dict[str, str]) -> None:
        if vm.guest_metrics == NULL_REF:
            metrics = _Metrics(new_ref(), str(uuidlib.uuid4()), vm.ref, networks)
            self.metrics[metrics.ref] = metrics
            vm.guest_metrics = metrics.ref
            self._emit("vm_guest_metrics", "add", metrics.ref)
            self._emit("vm", "mod", vm.ref)
        else:
            self.metrics[vm.guest_metrics].networks = networks
            self._emit("vm_guest_metrics", "mod", vm.guest_metrics)

    def _halt_guest(self, vm: LabVM) -> None:
        vm.generation += 1
        try:
            self.booter.halt(vm)
        except Exception as exc:  # never let a guest's death break the lab
            log.error("lab guest failed to halt", vm=vm.name, error=str(exc))
        if vm.guest_metrics != NULL_REF:
            ref, vm.guest_metrics = vm.guest_metrics, NULL_REF
            self.metrics.pop(ref, None)
            self._emit("vm_guest_metrics", "del", ref)

    # -- session ---------------------------------------------------------------------------

    def login_with_password(self, user: Any, password: Any, version: Any = "",
                            originator: Any = "") -> str:
        with self._lock:
            if not isinstance(user, str) or self.users.get(user) != password:
                raise XapiError("SESSION_AUTHENTICATION_FAILED", user,
                                "Authentication failure")
            session = LabSession(new_ref(), str(uuidlib.uuid4()), user, str(originator),
                                 time.monotonic())
            self.sessions[session.ref] = session
            self.history.append(session)
            self.logins += 1
            return session.ref

    def logout(self, session: LabSession) -> str:
        with self._lock:
            self.sessions.pop(session.ref, None)
            self.logged_out.append(session.ref)
            return ""

    # -- VM reads ----------------------------------------------------------------------------

    def get_all(self) -> list[str]:
        with self._lock:
            return list(self.vms)

    def get_all_records(self) -> dict[str, Any]:
        with self._lock:
            return {ref: vm.record() for ref, vm in self.vms.items()}

    def get_by_uuid(self, uuid: Any) -> str:
        with self._lock:
            for vm in self.vms.values():
                if vm.uuid == uuid:
                    return vm.ref
            raise XapiError("UUID_INVALID", "VM", uuid)

    def get_by_name_label(self, label: Any) -> list[str]:
        with self._lock:
            return [vm.ref for vm in self.vms.values() if vm.name == label]

    def get_record(self, ref: Any) -> dict[str, Any]:
        with self._lock:
            return self._vm(ref).record()

    def get_field(self, ref: Any, name: str) -> Any:
        with self._lock:
            return self._vm(ref).record()[name]

    def metrics_record(self, ref: Any) -> dict[str, Any]:
        with self._lock:
            metrics = self.metrics.get(ref) if isinstance(ref, str) else None
            if metrics is None:
                raise XapiError("HANDLE_INVALID", "VM_guest_metrics", ref)
            return metrics.record()

    # -- VM lifecycle ----------------------------------------------------------------------------

    def start(self, ref: Any, start_paused: Any = False, force: Any = False) -> str:
        with self._lock:
            vm = self._vm(ref)
            if vm.is_a_snapshot:
                raise XapiError("OPERATION_NOT_ALLOWED", "snapshots cannot be started")
            self._require(vm, "Halted")
            if vm.faults.start_fails:
                raise XapiError(vm.faults.start_fails, vm.ref)
            if start_paused:
                self._set_state(vm, "Paused")
                return ""
            self._set_state(vm, "Running")
            self._boot_guest(vm)
            return ""

    def clean_shutdown(self, ref: Any) -> str:
        with self._lock:
            vm = self._vm(ref)
            self._require(vm, "Running")
            hangs = vm.faults.clean_shutdown_hangs
        if hangs:
            # The guest ignores the ACPI request; only a hard shutdown ends the wait.
            vm.shutdown_hanging.set()
            vm.hard_stop.wait(HANG_LIMIT)
            with self._lock:
                self._require(vm, "Running")
                raise XapiError("VM_SHUTDOWN_TIMEOUT", vm.ref, str(HANG_LIMIT))
        with self._lock:
            self._require(vm, "Running")
            self._halt_guest(vm)
            self._set_state(vm, "Halted")
            return ""

    def hard_shutdown(self, ref: Any) -> str:
        with self._lock:
            vm = self._vm(ref)
            self._require(vm, "Running", "Paused", "Suspended")
            if vm.faults.hard_shutdown_busy > 0:
                vm.faults.hard_shutdown_busy -= 1
                raise XapiError("OTHER_OPERATION_IN_PROGRESS", "VM", vm.ref, "clean_shutdown")
            self._halt_guest(vm)
            self._set_state(vm, "Halted")
            vm.hard_stop.set()
            return ""

    def pause(self, ref: Any) -> str:
        with self._lock:
            vm = self._vm(ref)
            self._require(vm, "Running")
            self._set_state(vm, "Paused")
            return ""

    def unpause(self, ref: Any) -> str:
        with self._lock:
            vm = self._vm(ref)
            self._require(vm, "Paused")
            self._set_state(vm, "Running")
            if vm.guest_metrics == NULL_REF:  # started paused: the guest boots now
                self._boot_guest(vm)
            return ""

    def suspend(self, ref: Any) -> str:
        with self._lock:
            vm = self._vm(ref)
            self._require(vm, "Running")
            self._halt_guest(vm)
            self._set_state(vm, "Suspended")
            return ""

    def resume(self, ref: Any, start_paused: Any = False, force: Any = False) -> str:
        with self._lock:
            vm = self._vm(ref)
            self._require(vm, "Suspended")
            self._set_state(vm, "Running")
            self._boot_guest(vm)
            return ""

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot_root(self, snap: LabVM) -> Path:
        if self.snapshot_dir is None:
            raise XapiError("INTERNAL_ERROR", "the lab has no snapshot directory")
        return self.snapshot_dir / snap.uuid

    def snapshot(self, ref: Any, name: Any) -> str:
        with self._lock:
            vm = self._vm(ref)
            if vm.is_a_snapshot:
                raise XapiError("OPERATION_NOT_ALLOWED", "cannot snapshot a snapshot")
            snap = LabVM(name=str(name), power_state="Halted", is_a_snapshot=True,
                         snapshot_of=vm.ref, address=vm.address, ssh_port=vm.ssh_port,
                         snapshot_time=time.time())
            if vm.root is not None:
                copy = self._snapshot_root(snap)
                shutil.copytree(vm.root, copy, symlinks=True)
                snap.root = copy
            self.vms[snap.ref] = snap
            vm.snapshots.append(snap.ref)
            self._emit("vm", "add", snap.ref)
            self._emit("vm", "mod", vm.ref)
            return snap.ref

    def revert(self, snapshot_ref: Any) -> str:
        with self._lock:
            snap = self._vm(snapshot_ref)
            if not snap.is_a_snapshot:
                raise XapiError("VM_REVERT_FAILED", snap.ref, "not a snapshot")
            vm = self._vm(snap.snapshot_of)
            if vm.power_state != "Halted":
                self._halt_guest(vm)
                vm.hard_stop.set()
            if vm.root is not None and snap.root is not None:
                scratch = vm.root.with_name(vm.root.name + ".reverting")
                shutil.rmtree(scratch, ignore_errors=True)
                shutil.copytree(snap.root, scratch, symlinks=True)
                shutil.rmtree(vm.root)
                scratch.rename(vm.root)
            vm.reverts += 1
            self._set_state(vm, "Halted")
            return ""

    # -- events ---------------------------------------------------------------------------------

    @staticmethod
    def _matches(event: dict[str, Any], classes: list[str]) -> bool:
        for wanted in classes:
            wanted = str(wanted).lower()
            if wanted == "*":
                return True
            cls, _, ref = wanted.partition("/")
            if cls == event["class"] and (not ref or ref == event["ref"].lower()):
                return True
        return False

    def event_from(self, classes: Any, token: Any, timeout: Any) -> dict[str, Any]:
        if self.faults.events_unsupported:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", "event.from")
        if not isinstance(classes, list):
            raise XapiError("FIELD_TYPE_ERROR", "classes")
        try:
            wait = max(0.0, min(float(timeout), 3600.0))
        except (TypeError, ValueError):
            raise XapiError("FIELD_TYPE_ERROR", "timeout") from None
        with self._changed:
            if token == "":
                events = []
                for ref, vm in self.vms.items():
                    events.append({"id": "0", "class": "vm", "operation": "add", "ref": ref,
                                   "snapshot": vm.record(), "timestamp": str(time.time())})
                for ref, metrics in self.metrics.items():
                    events.append({"id": "0", "class": "vm_guest_metrics", "operation": "add",
                                   "ref": ref, "snapshot": metrics.record(),
                                   "timestamp": str(time.time())})
                return {"events": [e for e in events if self._matches(e, classes)],
                        "valid_ref_counts": {}, "token": f"{self._event_id:020d}"}
            try:
                since = int(str(token))
            except ValueError:
                raise XapiError("EVENT_FROM_TOKEN_PARSE_FAILURE", token) from None
            deadline = time.monotonic() + wait

            def pending() -> list[dict[str, Any]]:
                return [e for e in self._events if e["_n"] > since and self._matches(e, classes)]

            found = pending()
            while not found and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
                found = pending()
            events = [{k: v for k, v in e.items() if k != "_n" and v is not None}
                      for e in found]
            return {"events": events, "valid_ref_counts": {},
                    "token": f"{self._event_id:020d}"}

