"""The lab's pool database and its XAPI calls: hosts, sessions, VMs, tasks, metrics, events.

Semantics follow xen-api (cited per rule below and in the lab's tests):

- a pool of hosts, one of them the master; a member answers a login, and any
  call on an existing session, with ``HOST_IS_SLAVE [master address]``
  (``xapi_session.ml``, ``session_check.ml``). Sessions live in the pool
  database and survive a master change;
- VM operations run as XAPI runs them (``message_forwarding.ml``
  ``with_vm_operation``): a conflicting operation *waits on the server* for
  the other one (``helpers.ml`` ``retry``, up to :attr:`LabFaults.conflict_wait`),
  then fails ``OTHER_OPERATION_IN_PROGRESS``; the operation is listed in the
  VM's ``current_operations`` while it runs; it keeps running when the client
  hangs up; ``Async.*`` calls return a task at once; only ``task.cancel`` (or a
  hard shutdown, which cancels a clean shutdown) stops one;
- refusals have XAPI's shapes (``xapi_vm_lifecycle.ml``):
  ``VM_BAD_POWER_STATE [vm, allowed states lower case comma-joined, actual]``,
  ``VM_IS_SNAPSHOT [vm, op]``, ``REVERT_ONLY_ALLOWED_ON_SNAPSHOT []``,
  ``VM_LACKS_FEATURE [vm]`` for a clean shutdown of a guest without the agent;
- guest metrics are deleted when a VM starts (``xapi_vm.ml``), not when it
  halts, and published by the guest's agent after the VM's ``ip_delay``;
- ``event.from`` tokens are ``"%020Ld,%020Ld"`` (``xapi_event.ml``).

The lab's own side (adding VMs and hosts, changing the master, faults) are the
methods not named after an XAPI call.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from fruix_xapi_lab.faults import LabFaults
from fruix_xapi_lab.objects import (
    AGENTS,
    ALLOWED_STATES,
    NULL_REF,
    GuestBooter,
    LabHost,
    LabSession,
    LabTask,
    LabVM,
    Metrics,
    NullBooter,
    XapiError,
    new_ref,
    xapi_time,
)
from fruix_xapi_lab.operations import VmOperations

__all__ = [
    "AGENTS",
    "ALLOWED_STATES",
    "NULL_REF",
    "GuestBooter",
    "LabHost",
    "LabSession",
    "LabTask",
    "LabVM",
    "NullBooter",
    "XapiError",
    "XapiState",
]

log = structlog.get_logger(__name__)


class XapiState(VmOperations):
    """Everything the lab's pool knows; the methods named after calls are XAPI calls."""

    def __init__(self, *, users: dict[str, str], booter: GuestBooter | None = None,
                 snapshot_dir: Path | None = None, faults: LabFaults | None = None,
                 hosts: list[LabHost] | None = None):
        self.users = dict(users)
        self.booter: GuestBooter = booter or NullBooter()
        self.snapshot_dir = snapshot_dir
        self.faults = faults or LabFaults()
        self.hosts: list[LabHost] = hosts or [LabHost("xcp-host1", "127.0.0.1")]
        self.master: LabHost = self.hosts[0]
        self.pool_ref = new_ref()
        self.vms: dict[str, LabVM] = {}
        self.metrics: dict[str, Metrics] = {}
        self.tasks: dict[str, LabTask] = {}
        self.sessions: dict[str, LabSession] = {}
        self.logged_out: list[str] = []
        #: every session ever opened, in order (to check originators)
        self.history: list[LabSession] = []
        self.expired: list[str] = []
        self.logins = 0
        #: the latest calls as (host name, method), oldest first
        self.calls: deque[tuple[str, str]] = deque(maxlen=2000)
        #: every task.cancel call's task ref
        self.cancelled: list[str] = []
        #: the classes of every event.from call, in order
        self.subscriptions: list[list[str]] = []
        #: task ref -> operation, while the operation waits for a conflicting one
        self.waiting: dict[str, str] = {}
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

    def host(self, name: str) -> LabHost:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def designate_master(self, host: LabHost) -> None:
        """Make ``host`` the master (as ``pool.designate_new_master`` does); sessions stay."""
        with self._lock:
            self.master = host
            for vm in self.vms.values():
                if vm.resident_on != NULL_REF:
                    vm.resident_on = host.ref
        log.info("lab pool master changed", master=host.name, address=host.address)

    def live_sessions(self) -> list[LabSession]:
        with self._lock:
            self._expire_old()
            return list(self.sessions.values())

    def expire_sessions(self) -> int:
        """Kill every live session, as a pool restart would; returns how many."""
        with self._lock:
            count = len(self.sessions)
            self.expired.extend(self.sessions)
            self.sessions.clear()
            return count

    def calls_of(self, method: str) -> list[str]:
        """The hosts that received ``method``, in order."""
        return [host for host, name in list(self.calls) if name == method]

    def call(self, op: str, *args: Any) -> Any:
        """Lab side: run VM operation ``op`` (``"start"``, ...) now, as a sync call would."""
        task = self.new_task(f"VM.{op}", "lab", visible=False)
        try:
            value = getattr(self, op)(task, *args)
        except XapiError as exc:
            self.finish_task(task, error=exc)
            raise
        self.finish_task(task, value)
        return value

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``condition()`` holds (checked on every change), or ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True

    def shutdown(self) -> None:
        """Stop every guest, cancel every task and wake every blocked call."""
        self._stopping.set()
        with self._changed:
            for task in self.tasks.values():
                task.cancel_requested.set()
            self._changed.notify_all()
        with self._lock:
            for vm in list(self.vms.values()):
                if not vm.is_a_snapshot and vm.power_state != "Halted":
                    self._halt_guest(vm)
        for thread in self._threads:
            thread.join(timeout=5)

    # -- plumbing ---------------------------------------------------------------------

    def _emit(self, cls: str, operation: str, ref: str) -> None:
        self._event_id += 1
        snapshot: dict[str, Any] | None = None
        if operation != "del":
            if cls == "vm":
                snapshot = self._record(self.vms[ref])
            elif cls == "vm_guest_metrics":
                snapshot = self.metrics[ref].record()
            elif cls == "task":
                snapshot = self.tasks[ref].record()
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

    def check_session(self, ref: Any, host: LabHost | None = None) -> LabSession:
        """The live session ``ref``; on a member ``HOST_IS_SLAVE`` (``session_check.ml``)."""
        with self._lock:
            self._expire_old()
            session = self.sessions.get(ref) if isinstance(ref, str) else None
            if session is None:
                raise XapiError("SESSION_INVALID", ref)
            if host is not None and host is not self.master:
                raise XapiError("HOST_IS_SLAVE", self.master.address)
            return session

    def _vm(self, ref: Any) -> LabVM:
        vm = self.vms.get(ref) if isinstance(ref, str) else None
        if vm is None:
            raise XapiError("HANDLE_INVALID", "VM", ref)
        return vm

    def _task(self, ref: Any) -> LabTask:
        task = self.tasks.get(ref) if isinstance(ref, str) else None
        if task is None or not task.visible:
            raise XapiError("HANDLE_INVALID", "task", ref)
        return task

    def _record(self, vm: LabVM) -> dict[str, Any]:
        """The XAPI ``VM`` record (the fields this lab knows)."""
        return {
            "uuid": vm.uuid,
            "name_label": vm.name,
            "name_description": "",
            "power_state": vm.power_state,
            # xen-api: snapshots are templates too (``xapi_vm_snapshot.ml``)
            "is_a_template": vm.is_a_snapshot,
            "is_a_snapshot": vm.is_a_snapshot,
            "is_control_domain": False,
            "snapshot_of": vm.snapshot_of,
            "snapshots": list(vm.snapshots),
            "VIFs": list(vm.vifs),
            "snapshot_time": xapi_time(vm.snapshot_time),
            "guest_metrics": vm.guest_metrics,
            "resident_on": vm.resident_on,
            "allowed_operations": [op for op in ALLOWED_STATES
                                   if self._operation_error(vm, op, None) is None],
            "current_operations": dict(vm.current_operations),
            "domid": "1" if vm.power_state in ("Running", "Paused") else "-1",
            "other_config": {},
        }

    # -- guests -------------------------------------------------------------------------

    def _boot_guest(self, vm: LabVM) -> None:
        """Bring the guest up in a thread; its agent publishes networks after ``ip_delay``."""
        vm.generation += 1
        vm.boots += 1
        vm.halted.clear()
        generation = vm.generation
        started = time.monotonic()

        def stale() -> bool:
            return vm.generation != generation or self._stopping.is_set()

        def run() -> None:
            try:
                if not vm.faults.ssh_never:
                    self.booter.boot(vm)
            except Exception as exc:  # a broken guest stays without services, like a real one
                log.error("lab guest failed to boot", vm=vm.name, error=str(exc))
            if stale():  # halted while booting: do not leave its sshd behind
                self.booter.halt(vm)
                return
            if vm.agent == "none":
                return
            delay = vm.ip_delay - (time.monotonic() - started)
            if delay > 0 and vm.halted.wait(delay):
                return
            hold = self.faults.held(f"agent:{vm.name}")
            if hold is not None and not hold.arrive(stale, vm.halted):
                return
            with self._lock:
                if stale() or vm.power_state != "Running":
                    return
                self._publish_metrics(vm, self._agent_networks(vm))

        thread = threading.Thread(target=run, name=f"lab-boot-{vm.name}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    @staticmethod
    def _agent_networks(vm: LabVM) -> dict[str, str]:
        if vm.agent == "empty":
            return {"0/ip": "", "0/ipv6/0": ""}
        if vm.faults.ip_never:
            return {"0/ip": "169.254.77.1", "0/ipv6/0": "fe80::216:3eff:fe00:1"}
        if vm.agent == "old":
            # FreeBSD's xe-guest-utilities before its 2024 fix: every address of
            # the interface in one value, separated by spaces.
            return {"0/ip": f"{vm.address} 192.0.2.10", "1/ip": "169.254.77.1"}
        return {"0/ip": vm.address, "0/ipv4/0": vm.address, "0/ipv6/0": "fe80::216:3eff:fe00:1",
                "1/ipv4/0": "169.254.77.1"}

    def _publish_metrics(self, vm: LabVM, networks: dict[str, str]) -> None:
        if vm.guest_metrics == NULL_REF:
            metrics = Metrics(new_ref(), str(uuidlib.uuid4()), networks)
            self.metrics[metrics.ref] = metrics
            vm.guest_metrics = metrics.ref
            self._emit("vm_guest_metrics", "add", metrics.ref)
            self._emit("vm", "mod", vm.ref)
        else:
            metrics = self.metrics[vm.guest_metrics]
            metrics.networks, metrics.updated = networks, time.time()
            self._emit("vm_guest_metrics", "mod", vm.guest_metrics)

    def publish_networks(self, vm: LabVM, networks: dict[str, str]) -> None:
        """Lab side: the guest's agent reports ``networks`` now."""
        with self._lock:
            self._publish_metrics(vm, dict(networks))

    def _delete_metrics(self, vm: LabVM) -> None:
        if vm.guest_metrics != NULL_REF:
            ref, vm.guest_metrics = vm.guest_metrics, NULL_REF
            self.metrics.pop(ref, None)
            self._emit("vm_guest_metrics", "del", ref)

    def _halt_guest(self, vm: LabVM) -> None:
        """The domain is gone; the guest metrics record stays (xen-api keeps it)."""
        vm.generation += 1
        vm.halted.set()
        vm.resident_on = NULL_REF
        try:
            self.booter.halt(vm)
        except Exception as exc:  # never let a guest's death break the lab
            log.error("lab guest failed to halt", vm=vm.name, error=str(exc))

    def _set_state(self, vm: LabVM, state: str) -> None:
        vm.power_state = state
        if state in ("Running", "Paused"):
            vm.resident_on = self.master.ref
        self._emit("vm", "mod", vm.ref)

    # -- session ---------------------------------------------------------------------------

    def login_with_password(self, user: Any, password: Any, version: Any = "",
                            originator: Any = "", *, host: LabHost | None = None) -> str:
        if host is not None and host is not self.master:
            raise XapiError("HOST_IS_SLAVE", self.master.address)
        if not isinstance(user, str) or self.users.get(user) != password:
            if self.faults.failed_login_delay > 0:
                self._stopping.wait(self.faults.failed_login_delay)
            raise XapiError("SESSION_AUTHENTICATION_FAILED", user, "Authentication failure")
        with self._lock:
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

    def logout_ref(self, ref: Any) -> str:
        """``session.logout`` of a session given as argument (``session.logout`` by ref)."""
        with self._lock:
            if isinstance(ref, str) and ref in self.sessions:
                self.sessions.pop(ref)
                self.logged_out.append(ref)
            return ""

    # -- pool and hosts ------------------------------------------------------------------------

    def pool_get_all(self) -> list[str]:
        return [self.pool_ref]

    def pool_get_master(self, ref: Any) -> str:
        if ref != self.pool_ref:
            raise XapiError("HANDLE_INVALID", "pool", ref)
        return self.master.ref

    def _host(self, ref: Any) -> LabHost:
        for host in self.hosts:
            if host.ref == ref:
                return host
        raise XapiError("HANDLE_INVALID", "host", ref)

    def host_get_all(self) -> list[str]:
        return [h.ref for h in self.hosts]

    def host_get_record(self, ref: Any) -> dict[str, Any]:
        host = self._host(ref)
        return host.record(host is self.master)

    def host_get_address(self, ref: Any) -> str:
        return self._host(ref).address

    def host_get_server_certificate(self, ref: Any) -> str:
        return self._host(ref).certificate

    # -- VM reads ----------------------------------------------------------------------------

    def get_all(self) -> list[str]:
        with self._lock:
            return list(self.vms)

    def get_all_records(self) -> dict[str, Any]:
        with self._lock:
            return {ref: self._record(vm) for ref, vm in self.vms.items()}

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
            return self._record(self._vm(ref))

    def get_field(self, ref: Any, name: str) -> Any:
        with self._lock:
            return self._record(self._vm(ref))[name]

    def vif_record(self, ref: Any) -> dict[str, Any]:
        with self._lock:
            for vm in self.vms.values():
                if isinstance(ref, str) and ref in vm.vifs:
                    return {"MAC": vm.vifs[ref], "VM": vm.ref, "device": "0"}
            raise XapiError("HANDLE_INVALID", "VIF", ref)

    def metrics_record(self, ref: Any) -> dict[str, Any]:
        with self._lock:
            metrics = self.metrics.get(ref) if isinstance(ref, str) else None
            if metrics is None:
                raise XapiError("HANDLE_INVALID", "VM_guest_metrics", ref)
            return metrics.record()

    # -- tasks ---------------------------------------------------------------------------------

    def task_record(self, ref: Any) -> dict[str, Any]:
        with self._lock:
            return self._task(ref).record()

    def task_field(self, ref: Any, name: str) -> Any:
        return self.task_record(ref)[name]

    def task_get_all(self) -> list[str]:
        with self._lock:
            return [ref for ref, task in self.tasks.items() if task.visible]

    def task_cancel(self, ref: Any) -> str:
        """Ask a pending task to stop; it ends ``cancelled`` once its operation noticed."""
        with self._changed:
            self.cancelled.append(str(ref))
            task = self._task(ref)
            if task.status != "pending":
                raise XapiError("OPERATION_NOT_ALLOWED",
                                f"task {task.ref} is {task.status} and cannot be cancelled")
            task.cancel_requested.set()
            self._changed.notify_all()
            return ""

    def task_destroy(self, ref: Any) -> str:
        with self._lock:
            task = self._task(ref)
            del self.tasks[task.ref]
            self._emit("task", "del", task.ref)
            return ""

    # -- events ---------------------------------------------------------------------------------

    @staticmethod
    def _matches(event: dict[str, Any], classes: list[str]) -> bool:
        for wanted in classes:
            wanted = str(wanted)
            if wanted == "*":
                return True
            cls, _, ref = wanted.partition("/")
            if cls.lower() == event["class"] and (not ref or ref == event["ref"]):
                return True
        return False

    def _token(self) -> str:
        # xen-api ``xapi_event.ml``: "%020Ld,%020Ld" (object generation, message generation)
        return f"{self._event_id:020d},{0:020d}"

    def event_from(self, classes: Any, token: Any, timeout: Any) -> dict[str, Any]:
        if self.faults.events_unsupported:
            raise XapiError("MESSAGE_METHOD_UNKNOWN", "event.from")
        if not isinstance(classes, list):
            raise XapiError("FIELD_TYPE_ERROR", "classes")
        self.subscriptions.append([str(c) for c in classes])
        try:
            wait = max(0.0, min(float(timeout), 3600.0))
        except (TypeError, ValueError):
            raise XapiError("FIELD_TYPE_ERROR", "timeout") from None
        with self._changed:
            if token == "":
                events = []
                for ref, vm in self.vms.items():
                    events.append({"id": "0", "class": "vm", "operation": "add", "ref": ref,
                                   "snapshot": self._record(vm), "timestamp": str(time.time())})
                for ref, metrics in self.metrics.items():
                    events.append({"id": "0", "class": "vm_guest_metrics", "operation": "add",
                                   "ref": ref, "snapshot": metrics.record(),
                                   "timestamp": str(time.time())})
                return {"events": [e for e in events if self._matches(e, classes)],
                        "valid_ref_counts": {}, "token": self._token()}
            try:
                generation, _messages = str(token).split(",")
                since = int(generation)
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
            return {"events": events, "valid_ref_counts": {}, "token": self._token()}
