"""VM operations as xen-api runs them (``message_forwarding.ml``, ``with_vm_operation``).

An operation waits *on the server* while another one holds the VM
(``helpers.ml`` ``retry``: up to :attr:`LabFaults.conflict_wait`), then fails
``OTHER_OPERATION_IN_PROGRESS``; it is listed in the VM's
``current_operations`` under its task while it runs; it passes its named fault
point (``"VM.start"``, ...) where a test may hold it; it keeps running when the
client hangs up; only a task cancel (a hard shutdown cancels a clean one)
stops it. :class:`VmOperations` is a part of
:class:`~fruix_xapi_lab.state.XapiState`.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid as uuidlib
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from fruix_xapi_lab.faults import LabFaults
from fruix_xapi_lab.objects import (
    ALLOWED_STATES,
    CANCELLED_BY_HARD_SHUTDOWN,
    SNAPSHOT_OPERATIONS,
    LabHost,
    LabTask,
    LabVM,
    Metrics,
    XapiError,
    new_ref,
)

__all__ = ["VmOperations"]

log = structlog.get_logger(__name__)


class VmOperations:
    """The VM lifecycle calls and the task machinery of the lab's pool."""

    faults: LabFaults
    vms: dict[str, LabVM]
    metrics: dict[str, Metrics]
    tasks: dict[str, LabTask]
    waiting: dict[str, str]
    master: LabHost
    snapshot_dir: Path | None
    _lock: threading.RLock
    _changed: threading.Condition
    _stopping: threading.Event
    _threads: list[threading.Thread]

    if TYPE_CHECKING:
        def _emit(self, cls: str, operation: str, ref: str) -> None: ...
        def _vm(self, ref: Any) -> LabVM: ...
        def _delete_metrics(self, vm: LabVM) -> None: ...
        def _halt_guest(self, vm: LabVM) -> None: ...
        def _set_state(self, vm: LabVM, state: str) -> None: ...
        def _boot_guest(self, vm: LabVM) -> None: ...

    # -- operations (``with_vm_operation``) ---------------------------------------------

    def _conflict(self, vm: LabVM, op: str, task: LabTask | None) -> XapiError | None:
        current = [(ref, o) for ref, o in vm.current_operations.items()
                   if task is None or ref != task.ref]
        if not current:
            return None
        # xen-api ``is_allowed_concurrently``: only a hard shutdown may join others.
        if op == "hard_shutdown" and all(o != "hard_shutdown" for _ref, o in current):
            return None
        ops = [o for _ref, o in current]
        refs = [ref for ref, _o in current]
        shown_ops = ops[0] if len(ops) == 1 else "{" + ",".join(ops) + "}"
        if self.faults.api_style == "8.2":
            return XapiError("OTHER_OPERATION_IN_PROGRESS", f"VM.{shown_ops}", vm.ref)
        shown_refs = refs[0] if len(refs) == 1 else "{" + ",".join(refs) + "}"
        return XapiError("OTHER_OPERATION_IN_PROGRESS", "VM", vm.ref, shown_ops, shown_refs)

    def _operation_error(self, vm: LabVM, op: str, task: LabTask | None) -> XapiError | None:
        if vm.is_a_snapshot and op not in SNAPSHOT_OPERATIONS:
            return XapiError("VM_IS_SNAPSHOT", vm.ref, op)
        conflict = self._conflict(vm, op, task)
        if conflict is not None:
            return conflict
        allowed = ALLOWED_STATES[op]
        if vm.power_state not in allowed:
            return XapiError("VM_BAD_POWER_STATE", vm.ref,
                             ", ".join(s.lower() for s in allowed), vm.power_state.lower())
        if op == "clean_shutdown" and vm.agent == "none":
            return XapiError("VM_LACKS_FEATURE", vm.ref)
        return None

    def _check_cancel(self, task: LabTask) -> None:
        if task.cancelling or self._stopping.is_set():
            raise XapiError("TASK_CANCELLED", task.ref)

    def _operate(self, vm: LabVM, op: str, task: LabTask, body: Callable[[], Any]) -> Any:
        """Wait out conflicts (server-side), check, register ``op``, run ``body``, unregister."""
        started = time.monotonic()
        task.vm = vm.ref
        with self._changed:
            try:
                while True:
                    self._check_cancel(task)
                    error = self._operation_error(vm, op, task)
                    if error is None:
                        break
                    remaining = started + self.faults.conflict_wait - time.monotonic()
                    if error.code != "OTHER_OPERATION_IN_PROGRESS" or remaining <= 0:
                        raise error
                    if task.ref not in self.waiting:
                        self.waiting[task.ref] = op
                        self._changed.notify_all()
                    self._changed.wait(min(remaining, 0.05))
            finally:
                self.waiting.pop(task.ref, None)
            vm.current_operations[task.ref] = op
            self._emit("vm", "mod", vm.ref)
        try:
            self.faults.fire(f"VM.{op}")
            self._hold(f"VM.{op}", task)
            return body()
        finally:
            with self._changed:
                vm.current_operations.pop(task.ref, None)
                self._emit("vm", "mod", vm.ref)

    def _hold(self, point: str, task: LabTask) -> None:
        hold = self.faults.held(point)
        if hold is not None and not hold.arrive(lambda: task.cancelling, task.cancel_requested):
            raise XapiError("TASK_CANCELLED", task.ref)

    def new_task(self, name: str, session: str, *, visible: bool) -> LabTask:
        with self._lock:
            task = LabTask(name_label=name, session=session, visible=visible)
            self.tasks[task.ref] = task
            if visible:
                self._emit("task", "add", task.ref)
            return task

    def finish_task(self, task: LabTask, value: Any = None, error: XapiError | None = None
                    ) -> None:
        with self._changed:
            task.finished = time.time()
            if error is None:
                task.status = "success"
                task.result = "" if value in (None, "") else \
                    f"<value>{xmlrpc.client.escape(str(value))}</value>"
            elif error.code == "TASK_CANCELLED":
                task.status, task.error_info = "cancelled", ["TASK_CANCELLED", task.ref]
            else:
                task.status, task.error_info = "failure", list(error.description)
            task.done.set()
            if task.visible:
                self._emit("task", "mod", task.ref)
            else:
                self.tasks.pop(task.ref, None)

    def spawn(self, task: LabTask, work: Callable[[], Any]) -> None:
        """Run ``work`` for an ``Async.*`` call in a thread of its own."""

        def run() -> None:
            try:
                value = work()
            except XapiError as exc:
                self.finish_task(task, error=exc)
            except Exception as exc:  # a lab bug still ends the task, as XAPI's would
                log.exception("lab task failed", task=task.name_label)
                self.finish_task(task, error=XapiError("INTERNAL_ERROR", str(exc)))
            else:
                self.finish_task(task, value)

        thread = threading.Thread(target=run, name=f"lab-task-{task.name_label}", daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    # -- VM lifecycle ----------------------------------------------------------------------------

    def start(self, task: LabTask, ref: Any, start_paused: Any = False, force: Any = False
              ) -> str:
        vm = self._vm(ref)

        def body() -> str:
            with self._lock:
                if vm.faults.start_fails:
                    raise XapiError(vm.faults.start_fails, vm.ref)
                # xen-api ``xapi_vm.ml`` start: stale guest metrics are deleted first.
                self._delete_metrics(vm)
                self._check_cancel(task)
                self._set_state(vm, "Paused" if start_paused else "Running")
                if not start_paused:
                    self._boot_guest(vm)
            return ""

        return str(self._operate(vm, "start", task, body))

    def clean_shutdown(self, task: LabTask, ref: Any) -> str:
        vm = self._vm(ref)

        def body() -> str:
            if vm.faults.clean_shutdown_hangs:
                # The guest ignores the request: XAPI waits up to its limit, unless
                # a task cancel (a hard shutdown cancels it too) ends the wait.
                if task.cancel_requested.wait(self.faults.shutdown_limit):
                    raise XapiError("TASK_CANCELLED", task.ref)
                raise XapiError("VM_SHUTDOWN_TIMEOUT", vm.ref, f"{self.faults.shutdown_limit:g}")
            with self._lock:
                self._check_cancel(task)
                self._halt_guest(vm)
                self._set_state(vm, "Halted")
            return ""

        return str(self._operate(vm, "clean_shutdown", task, body))

    def hard_shutdown(self, task: LabTask, ref: Any) -> str:
        vm = self._vm(ref)

        def body() -> str:
            with self._changed:
                for other_ref, op in vm.current_operations.items():
                    other = self.tasks.get(other_ref)
                    if op in CANCELLED_BY_HARD_SHUTDOWN and other is not None:
                        other.cancel_requested.set()
                self._changed.notify_all()
                if vm.power_state != "Halted":
                    self._halt_guest(vm)
                    self._set_state(vm, "Halted")
            return ""

        return str(self._operate(vm, "hard_shutdown", task, body))

    def _simple(self, task: LabTask, ref: Any, op: str, after: str, boot: bool = False,
                halt: bool = False) -> str:
        vm = self._vm(ref)

        def body() -> str:
            with self._lock:
                if halt:
                    self._halt_guest(vm)
                self._set_state(vm, after)
                if boot:
                    self._boot_guest(vm)
            return ""

        return str(self._operate(vm, op, task, body))

    def pause(self, task: LabTask, ref: Any) -> str:
        return self._simple(task, ref, "pause", "Paused")

    def unpause(self, task: LabTask, ref: Any) -> str:
        vm = self._vm(ref)
        return self._simple(task, ref, "unpause", "Running",
                            boot=vm.halted.is_set() or vm.boots == 0)

    def suspend(self, task: LabTask, ref: Any) -> str:
        return self._simple(task, ref, "suspend", "Suspended", halt=True)

    def resume(self, task: LabTask, ref: Any, start_paused: Any = False, force: Any = False
               ) -> str:
        return self._simple(task, ref, "resume", "Running", boot=True)

    # -- snapshots ------------------------------------------------------------------------------

    def _snapshot_root(self, snap: LabVM) -> Path:
        if self.snapshot_dir is None:
            raise XapiError("INTERNAL_ERROR", "the lab has no snapshot directory")
        return self.snapshot_dir / snap.uuid

    def _copy_metrics(self, source: LabVM, target: LabVM) -> None:
        self._delete_metrics(target)
        metrics = self.metrics.get(source.guest_metrics)
        if metrics is not None:
            copy = Metrics(new_ref(), str(uuidlib.uuid4()), dict(metrics.networks),
                            metrics.updated)
            self.metrics[copy.ref] = copy
            target.guest_metrics = copy.ref
            self._emit("vm_guest_metrics", "add", copy.ref)

    def snapshot(self, task: LabTask, ref: Any, name: Any, checkpoint: bool = False) -> str:
        vm = self._vm(ref)

        def body() -> str:
            with self._lock:
                snap = LabVM(name=str(name), power_state="Suspended" if checkpoint else "Halted",
                             is_a_snapshot=True, is_a_checkpoint=checkpoint, snapshot_of=vm.ref,
                             address=vm.address, ssh_port=vm.ssh_port, agent=vm.agent,
                             snapshot_time=time.time(),
                             vifs={new_ref(): mac for mac in vm.vifs.values()})
                if vm.root is not None:
                    copy = self._snapshot_root(snap)
                    shutil.copytree(vm.root, copy, symlinks=True)
                    snap.root = copy
                self.vms[snap.ref] = snap
                self._copy_metrics(vm, snap)
                vm.snapshots.append(snap.ref)
                self._emit("vm", "add", snap.ref)
                self._emit("vm", "mod", vm.ref)
                return snap.ref

        return str(self._operate(vm, "checkpoint" if checkpoint else "snapshot", task, body))

    def checkpoint(self, task: LabTask, ref: Any, name: Any) -> str:
        return self.snapshot(task, ref, name, checkpoint=True)

    def revert(self, task: LabTask, snapshot_ref: Any) -> str:
        snap = self._vm(snapshot_ref)
        if not snap.is_a_snapshot:
            # xen-api ``xapi_vm_lifecycle.ml``: ``only_revert_snapshot``, no parameters
            raise XapiError("REVERT_ONLY_ALLOWED_ON_SNAPSHOT")
        vm = self._vm(snap.snapshot_of)

        def body() -> str:
            with self._lock:
                self._check_cancel(task)
                if vm.power_state != "Halted":
                    self._halt_guest(vm)
                if vm.root is not None and snap.root is not None:
                    # The disks are replaced by copies of the snapshot's.
                    scratch = vm.root.with_name(vm.root.name + ".reverting")
                    shutil.rmtree(scratch, ignore_errors=True)
                    shutil.copytree(snap.root, scratch, symlinks=True)
                    shutil.rmtree(vm.root)
                    scratch.rename(vm.root)
                self._copy_metrics(snap, vm)
                # the VM's VIFs are destroyed and recreated from the snapshot's (same MACs)
                vm.vifs = {new_ref(): mac for mac in snap.vifs.values()}
                vm.reverts += 1
                self._set_state(vm, "Suspended" if snap.is_a_checkpoint else "Halted")
            return ""

        return str(self._operate(vm, "revert", task, body))
