"""The build VM's lifecycle: find it, power it up, find its address; shut down and revert.

:func:`acquire` leaves the VM running with sshd answering the pinned key and
returns a :class:`Lease`; :func:`release` takes the lease back: a clean
shutdown under a deadline (when the VM offers one), a hard shutdown when that
fails, then ``VM.revert`` to the snapshot - or, under the ``keep`` policy,
nothing but a loud warning naming the VM and its address. Each function opens
its own XenAPI session on the pool master (following a master change) and
always logs it out: a build lasts longer than a session should.

Every VM operation runs as an ``Async.VM.*`` task with a deadline; on the
deadline or an interrupt the task is cancelled on the pool (xen-api finishes a
blocking call even when its client hangs up, and a conflicting operation waits
there for up to two hours). A call whose connection broke after it was sent is
never sent again blindly: the VM's ``current_operations`` tell whether the
pool is doing it, and its power state whether it is done.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from fruix_core.api import Cancelled, CancelToken, FruixError, GuestError
from fruix_xcpng.network import candidate_addresses
from fruix_xcpng.settings import Credentials, XcpngSettings
from fruix_xcpng.sshprobe import wait_for_ssh
from fruix_xcpng.xapi import OutcomeUnknown, XapiClient, XapiFailure

__all__ = ["Lease", "acquire", "find_snapshot", "find_vm", "release", "release_shielded",
           "release_vm", "vm_operation", "wait_for_address"]

log = structlog.get_logger(__name__)

NULL_REF = "OpaqueRef:NULL"
#: Longest single ``event.from`` wait: events wake us at once, this bounds how late
#: we notice a deadline or an interrupt.
EVENT_WAIT = 1.0
#: How often FreeBSD's xe-guest-utilities agent reports (``xe-daemon``: every 60 s).
AGENT_CADENCE = 60


@dataclass(slots=True)
class Lease:
    """What release needs to know about an acquired VM (no credentials)."""

    settings: XcpngSettings
    credentials: Credentials
    vm_ref: str
    vm_uuid: str
    vm_name: str
    snapshot_ref: str
    snapshot_uuid: str
    found_state: str
    snapshot_name: str = ""
    lease_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    address: str = ""
    released: bool = False
    #: the pool master last talked to (release starts there)
    master_url: str = ""
    #: host address -> certificate SHA-256, learned from the pool at acquire
    learned_pins: dict[str, str] = field(default_factory=dict)
    #: what release is doing now, for the terminal
    stage: str = "not started"
    #: tells the operator each step of a release (the core's ``Guest.step``)
    on_step: Callable[[str], None] | None = field(default=None, repr=False)

    def describe(self) -> str:
        return f"VM '{self.vm_name}' ({self.vm_uuid})"

    @property
    def snapshot_label(self) -> str:
        return self.snapshot_name or self.snapshot_uuid


# -- finding things -------------------------------------------------------------------


def find_vm(xapi: XapiClient, settings: XcpngSettings) -> tuple[str, dict[str, Any]]:
    """The VM's ref and record; refuses templates, snapshots and ambiguous names."""
    if settings.vm_uuid:
        try:
            ref = xapi.call("VM.get_by_uuid", settings.vm_uuid)
        except XapiFailure as exc:
            if exc.code in ("UUID_INVALID", "HANDLE_INVALID"):
                raise GuestError(f"{settings.url}: no VM has uuid {settings.vm_uuid} "
                                 f"(key guests.xcpng.vm_uuid)") from None
            raise
        record = xapi.call("VM.get_record", ref)
    else:
        refs = xapi.call("VM.get_by_name_label", settings.vm_name)
        found = []
        for ref in refs:
            record = xapi.call("VM.get_record", ref)
            if not record.get("is_a_snapshot") and not record.get("is_a_template"):
                found.append((ref, record))
        if not found:
            raise GuestError(f"{settings.url}: no VM is named '{settings.vm_name}' "
                             f"(key guests.xcpng.vm_name)")
        if len(found) > 1:
            uuids = ", ".join(sorted(r["uuid"] for _ref, r in found))
            raise GuestError(f"{settings.url}: {len(found)} VMs are named '{settings.vm_name}' "
                             f"({uuids}); set guests.xcpng.vm_uuid instead")
        ref, record = found[0]
    if record.get("is_a_template") or record.get("is_a_snapshot"):
        # xen-api: a snapshot is a template too; name it for what it is
        kind = "snapshot" if record.get("is_a_snapshot") else "template"
        raise GuestError(f"{settings.url}: {settings.vm_label} is a {kind}, not a VM")
    return ref, record


def find_snapshot(xapi: XapiClient, settings: XcpngSettings, vm_record: dict[str, Any]
                  ) -> tuple[str, str, str]:
    """The ref, uuid and name of the VM's snapshot named (or with uuid) ``settings.snapshot``."""
    wanted = settings.snapshot
    names = []
    matches = []
    for ref in vm_record.get("snapshots", []):
        record = xapi.call("VM.get_record", ref)
        names.append(record.get("name_label", ""))
        if wanted in (record.get("uuid"), record.get("name_label")):
            matches.append((ref, record["uuid"], record.get("name_label", "")))
    if not matches:
        listing = ", ".join(f"'{n}'" for n in sorted(names)) or "none"
        raise GuestError(f"{settings.url}: VM '{vm_record.get('name_label')}' has no snapshot "
                         f"'{wanted}' (key guests.xcpng.snapshot; its snapshots: {listing})")
    if len(matches) > 1:
        raise GuestError(f"{settings.url}: several snapshots of VM "
                         f"'{vm_record.get('name_label')}' are named '{wanted}'; "
                         "give the snapshot's uuid")
    return matches[0]


# -- VM operations as tasks ----------------------------------------------------------------


def vm_operation(xapi: XapiClient, method: str, *args: Any, vm_ref: str, op: str,
                 done_state: str | None, deadline: float, label: str,
                 cancel: CancelToken | None = None) -> None:
    """Run ``Async.<method>``; if the connection broke after sending, find out what happened.

    After a broken connection the pool may be doing the operation (it is then
    listed in the VM's ``current_operations`` under its task, which we wait
    for), may have done it (the VM is in ``done_state``), or never got it (then
    it is sent once more).
    """
    try:
        xapi.run_task(method, *args, deadline=deadline, label=label, cancel=cancel)
        return
    except OutcomeUnknown as exc:
        log.warning("connection broke after sending; asking the pool what it did", vm=label,
                    method=method, error=str(exc))
    for look in range(3):
        record = xapi.call("VM.get_record", vm_ref)
        if done_state is not None and record.get("power_state") == done_state:
            return
        ours = [task for task, what in dict(record.get("current_operations", {})).items()
                if what == op]
        if ours:
            xapi.run_task(method, deadline=deadline, label=label, cancel=cancel, task=ours[0])
            return
        if look < 2:  # the task may not have registered its operation yet
            pause = min(xapi.settings.poll_interval, 1.0)
            if cancel is not None:
                cancel.wait(pause)
            else:
                time.sleep(pause)
    log.warning("the pool never got the call; sending it again", vm=label, method=method)
    xapi.run_task(method, *args, deadline=deadline, label=label, cancel=cancel)


def _busy(record: dict[str, Any], label: str) -> None:
    """Refuse a VM that someone else's operation holds; touches nothing."""
    current = dict(record.get("current_operations") or {})
    if current:
        ops = ", ".join(sorted(set(current.values())))
        raise GuestError(f"{label} is busy with another operation ({ops}); another build or an "
                         "operator is using it")


# -- acquiring ----------------------------------------------------------------------------


def _check_policy(settings: XcpngSettings, state: str, label: str) -> None:
    """Refuse a VM whose power state the policy does not let us take; touches nothing."""
    if state == "Running" and settings.running != "use":
        raise GuestError(f"{label} is already Running; another build or an operator may "
                         "be using it (set guests.xcpng.running = \"use\" to take it, or "
                         "release it first)")
    if state == "Paused" and settings.paused != "unpause":
        raise GuestError(f"{label} is Paused (set guests.xcpng.paused = \"unpause\" to take it)")
    if state == "Suspended" and settings.suspended != "resume":
        raise GuestError(f"{label} is Suspended (set guests.xcpng.suspended = \"resume\" "
                         "to take it)")
    if state not in ("Halted", "Running", "Paused", "Suspended"):
        raise GuestError(f"{label} is in power state '{state}', which cannot be used")


def _power_up(xapi: XapiClient, settings: XcpngSettings, ref: str, state: str,
              label: str, cancel: CancelToken | None, step: Callable[[str], None]) -> None:
    """Bring the VM to Running (the policy was checked already)."""
    start_timeout = max(settings.timeout, settings.shutdown_timeout)
    verb = {"Halted": "booting", "Paused": "unpausing", "Suspended": "resuming"}.get(state)
    if verb:
        step(f"{verb} {label}…")
    if state == "Halted":
        log.info("starting VM", vm=label)
        vm_operation(xapi, "VM.start", ref, False, False, vm_ref=ref, op="start",
                     done_state="Running", deadline=start_timeout, label=label, cancel=cancel)
    elif state == "Running":
        log.warning("using the already running VM", vm=label)
    elif state == "Paused":
        log.info("unpausing VM", vm=label)
        vm_operation(xapi, "VM.unpause", ref, vm_ref=ref, op="unpause", done_state="Running",
                     deadline=settings.timeout, label=label, cancel=cancel)
    elif state == "Suspended":
        log.info("resuming VM", vm=label)
        vm_operation(xapi, "VM.resume", ref, False, False, vm_ref=ref, op="resume",
                     done_state="Running", deadline=start_timeout, label=label, cancel=cancel)


def _read_networks(xapi: XapiClient, ref: str, label: str) -> tuple[str, dict[str, str]]:
    """The VM's guest metrics ref and networks (``{}`` before the agent reported)."""
    state = xapi.call("VM.get_power_state", ref)
    if state != "Running":
        raise GuestError(f"{label} went {state} while waiting for its address")
    metrics = xapi.call("VM.get_guest_metrics", ref)
    if not metrics or metrics == NULL_REF:
        return NULL_REF, {}
    try:
        return metrics, dict(xapi.call("VM_guest_metrics.get_networks", metrics))
    except XapiFailure as exc:
        if exc.code == "HANDLE_INVALID":  # the record was replaced meanwhile
            return NULL_REF, {}
        raise


def wait_for_address(xapi: XapiClient, settings: XcpngSettings, ref: str, label: str,
                     cancel: CancelToken | None = None) -> str:
    """Wait for the guest agent to report a usable address; ``event.from``, else polling.

    Subscribes to the VM itself and to its own guest metrics record only (not
    to every VM's metrics in the pool).

    :raises GuestError: no usable address within ``settings.ip_timeout``.
    """
    deadline = time.monotonic() + settings.ip_timeout
    token = ""
    use_events = True
    while True:
        if cancel is not None and cancel.cancelled:
            raise Cancelled(f"interrupted while waiting for the address of {label}")
        metrics, seen = _read_networks(xapi, ref, label)
        candidates = candidate_addresses(seen, settings.device)
        if candidates:
            return candidates[0]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reported = ", ".join(f"{k}={v!r}" for k, v in sorted(seen.items())) or "nothing"
            raise GuestError(
                f"{label} reported no usable address within {settings.ip_timeout:g} s (agent "
                f"reported: {reported}). The guest agent (xe-guest-utilities; on FreeBSD "
                f"xenguest_enable=\"YES\" in rc.conf) reports about every {AGENT_CADENCE} s; "
                "raise guests.xcpng.ip_timeout, or for a guest without the agent set "
                "guests.xcpng.address")
        if use_events:
            wait = min(remaining, EVENT_WAIT)
            classes = [f"vm/{ref}"] + ([f"vm_guest_metrics/{metrics}"]
                                       if metrics != NULL_REF else [])
            try:
                answer = xapi.call("event.from", classes, token, float(wait),
                                   timeout=wait + settings.timeout)
                token = answer.get("token", token) if isinstance(answer, dict) else token
                continue
            except XapiFailure as exc:
                log.info("event.from unavailable, polling instead", vm=label, code=exc.code)
            except GuestError as exc:
                log.info("event.from failed, polling instead", vm=label, error=str(exc))
            use_events = False
        wait = min(settings.poll_interval, max(deadline - time.monotonic(), 0))
        if cancel is not None:
            cancel.wait(wait)
        else:
            time.sleep(wait)


def _no_step(_text: str) -> None:
    return None


def acquire(settings: XcpngSettings, credentials: Credentials, *, run_id: str,
            cancel: CancelToken | None = None,
            step: Callable[[str], None] | None = None) -> Lease:
    """Boot (or take) the VM, find its address, wait for its sshd; the VM is released on failure.

    ``step`` hears each slow step (``booting VM 'build' (uuid)…``, ``waiting for
    address…``, ``waiting for SSH…``), and the release steps after a failure.

    :raises GuestError: the VM cannot be found or used, or a wait timed out.
    :raises HostKeyError: the guest's sshd shows another key than the pinned one.
    :raises Cancelled: interrupted; the VM is released first.
    """
    lease: Lease | None = None
    step = step or _no_step
    try:
        with XapiClient(settings, credentials) as xapi:
            learned = xapi.learn_pool_certificates()
            ref, record = find_vm(xapi, settings)
            label = f"VM '{record.get('name_label')}' ({record.get('uuid')})"
            snapshot_ref, snapshot_uuid, snapshot_name = find_snapshot(xapi, settings, record)
            state = record.get("power_state", "")
            log.info("acquiring VM", vm=label, power_state=state, run_id=run_id)
            _busy(record, label)
            _check_policy(settings, state, label)
            prepared = Lease(settings=settings, credentials=credentials, vm_ref=ref,
                             vm_uuid=record["uuid"], vm_name=record.get("name_label", ""),
                             snapshot_ref=snapshot_ref, snapshot_uuid=snapshot_uuid,
                             snapshot_name=snapshot_name, found_state=state,
                             master_url=xapi.url, learned_pins=learned, on_step=step)
            try:
                _power_up(xapi, settings, ref, state, label, cancel, step)
            except XapiFailure as exc:
                if exc.code == "TASK_CANCELLED":
                    lease = prepared  # our own task, cancelled: clean up
                    raise
                if exc.code in ("VM_BAD_POWER_STATE", "OTHER_OPERATION_IN_PROGRESS"):
                    # Someone else got there first: the VM is theirs; hands off.
                    raise GuestError(f"{label} was taken by another operation while starting "
                                     f"({exc.code}); another build or an operator is using "
                                     "it") from None
                raise  # XAPI refused to start it: the VM is as it was
            except BaseException:
                lease = prepared  # unknown outcome (timeout, interrupt): clean up to be safe
                raise
            lease = prepared
            lease.master_url = xapi.url
            if settings.address:
                lease.address = settings.address
                log.info("using the configured address (no agent needed)", vm=label,
                         address=lease.address)
            else:
                step("waiting for address…")
                lease.address = wait_for_address(xapi, settings, ref, label, cancel)
                log.info("VM reported its address", vm=label, address=lease.address)
        step(f"waiting for SSH on {lease.address}:{settings.ssh_port}…")
        wait_for_ssh(lease.address, settings.ssh_port, key_type=settings.host_key_type,
                     key_blob=settings.host_key_blob, timeout=settings.ssh_timeout,
                     cancel=cancel, interval=min(settings.poll_interval, 1.0))
        log.info("guest ready", vm=label, address=lease.address, port=settings.ssh_port)
        return lease
    except BaseException as exc:
        if lease is not None:
            outcome = "failed" if isinstance(exc, Exception) else "interrupted"
            if isinstance(exc, Cancelled):
                outcome = "interrupted"
            try:
                release_shielded(lease, outcome)
            except FruixError as release_error:
                log.error("could not release VM after a failed acquire", vm=lease.describe(),
                          error=str(release_error))
        raise


# -- releasing ------------------------------------------------------------------------------


def _stage(lease: Lease, text: str) -> None:
    lease.stage = text
    log.info(text + "…", vm=lease.vm_uuid)
    if lease.on_step is not None:
        lease.on_step(text + "…")


def _hard_shutdown(xapi: XapiClient, lease: Lease) -> None:
    settings = lease.settings
    try:
        vm_operation(xapi, "VM.hard_shutdown", lease.vm_ref, vm_ref=lease.vm_ref,
                     op="hard_shutdown", done_state="Halted",
                     deadline=max(settings.timeout, settings.shutdown_timeout),
                     label=lease.describe())
    except XapiFailure as exc:
        if exc.code != "VM_BAD_POWER_STATE":  # halted meanwhile: fine
            raise


def _shut_down(xapi: XapiClient, lease: Lease) -> None:
    settings, ref, label = lease.settings, lease.vm_ref, lease.describe()
    record = xapi.call("VM.get_record", ref)
    state = record.get("power_state", "")
    if state == "Running":
        if "clean_shutdown" in record.get("allowed_operations", ()):
            _stage(lease, f"shutting down VM {lease.vm_name or lease.vm_uuid}")
            try:
                vm_operation(xapi, "VM.clean_shutdown", ref, vm_ref=ref, op="clean_shutdown",
                             done_state="Halted", deadline=settings.shutdown_timeout,
                             label=label)
            except XapiFailure as exc:
                if exc.code != "VM_BAD_POWER_STATE":
                    log.warning("clean shutdown failed; forcing it", vm=label, error=str(exc))
            except GuestError as exc:
                log.warning("clean shutdown took too long; forcing it", vm=label,
                            error=str(exc))
        else:
            log.info("the VM offers no clean shutdown (no guest agent?); forcing it", vm=label)
        state = xapi.call("VM.get_power_state", ref)
    if state != "Halted":
        _stage(lease, f"forcing VM {lease.vm_name or lease.vm_uuid} off")
        _hard_shutdown(xapi, lease)
        state = xapi.call("VM.get_power_state", ref)
    if state != "Halted":
        raise GuestError(f"{label} is still {state} after a hard shutdown")


def _revert(xapi: XapiClient, lease: Lease) -> None:
    settings, label = lease.settings, lease.describe()
    try:
        snapshot = xapi.call("VM.get_by_uuid", lease.snapshot_uuid)
    except XapiFailure as exc:
        if exc.code in ("UUID_INVALID", "HANDLE_INVALID"):
            raise GuestError(f"{label}: snapshot {lease.snapshot_uuid} disappeared; "
                             "the VM was shut down but not reverted") from None
        raise
    _stage(lease, f"reverting to {lease.snapshot_label}")
    vm_operation(xapi, "VM.revert", snapshot, vm_ref=lease.vm_ref, op="revert",
                 done_state=None, deadline=max(settings.timeout, settings.shutdown_timeout),
                 label=label)
    # A checkpoint (a snapshot with memory) reverts to Suspended: halt it again.
    state = xapi.call("VM.get_power_state", lease.vm_ref)
    if state != "Halted":
        log.info("the snapshot came back not halted; shutting it down", vm=label,
                 power_state=state)
        _shut_down(xapi, lease)


def release(lease: Lease, outcome: str, *, attempts: int = 3) -> None:
    """Shut the VM down and revert it, or keep it running as configured.

    Starts at the master the lease last talked to, follows a master change,
    and retries the whole sequence a few times (also at the configured URL) on
    a connection failure. Never looks at the run's cancel token: release runs
    to the end.

    :raises GuestError: the VM could not be released; the message says how to
        do it by hand.
    """
    if lease.released:
        return
    settings, label = lease.settings, lease.describe()
    keep = settings.keep == "always" or (settings.keep == "on-failure" and outcome == "failed")
    if keep:
        lease.released = True
        lease.stage = "kept"
        where = f"RUNNING at {lease.address}" if lease.address else "as it is (no address yet)"
        log.warning(f"KEEPING {label} {where} "
                    f"(keep = \"{settings.keep}\", run {outcome}); it is NOT reverted; "
                    f"when done: fruix guests release (with this run's --config), or "
                    f"xe vm-shutdown uuid={lease.vm_uuid} force=true && "
                    f"xe snapshot-revert snapshot-uuid={lease.snapshot_uuid}",
                    vm_uuid=lease.vm_uuid, address=lease.address, port=settings.ssh_port,
                    outcome=outcome, keep=settings.keep)
        return
    error: FruixError | None = None
    urls = list(dict.fromkeys(u for u in (lease.master_url, settings.url) if u))
    for attempt in range(1, attempts + 1):
        url = urls[(attempt - 1) % len(urls)]
        try:
            with XapiClient(settings, lease.credentials, url=url,
                            learned_pins=lease.learned_pins) as xapi:
                _shut_down(xapi, lease)
                _revert(xapi, lease)
                lease.master_url = xapi.url
                lease.stage = "logging out"
            lease.released = True
            lease.stage = "done"
            log.info(f"{label} was shut down and reverted to {lease.snapshot_label}",
                     vm=label, outcome=outcome, snapshot=lease.snapshot_uuid)
            return
        except XapiFailure as exc:
            error = exc
            if exc.code == "SESSION_AUTHENTICATION_FAILED":
                break
        except GuestError as exc:
            error = exc
        log.warning("releasing VM failed", vm=label, attempt=attempt, error=str(error))
        if attempt < attempts:
            time.sleep(min(settings.poll_interval, 2.0))
    raise GuestError(f"could not release {label}: {error}; by hand: xe vm-shutdown "
                     f"uuid={lease.vm_uuid} force=true && xe snapshot-revert "
                     f"snapshot-uuid={lease.snapshot_uuid}")


def release_shielded(lease: Lease, outcome: str) -> None:
    """:func:`release`, not abandoned by a single Ctrl-C (see :mod:`fruix_xcpng.shield`)."""
    from fruix_xcpng.shield import shielded

    shielded(lambda: release(lease, outcome), label=lease.describe(), stage=lambda: lease.stage,
             how_to_finish=f"xe vm-shutdown uuid={lease.vm_uuid} force=true && "
                           f"xe snapshot-revert snapshot-uuid={lease.snapshot_uuid}")


def release_vm(settings: XcpngSettings, credentials: Credentials) -> Lease:
    """Release the configured VM without a lease (a kept or stranded one): shut down, revert.

    :raises GuestError: as :func:`release`, or the VM or snapshot cannot be found.
    """
    with XapiClient(settings, credentials) as xapi:
        learned = xapi.learn_pool_certificates()
        ref, record = find_vm(xapi, settings)
        snapshot_ref, snapshot_uuid, snapshot_name = find_snapshot(xapi, settings, record)
        lease = Lease(settings=settings, credentials=credentials, vm_ref=ref,
                      vm_uuid=record["uuid"], vm_name=record.get("name_label", ""),
                      snapshot_ref=snapshot_ref, snapshot_uuid=snapshot_uuid,
                      snapshot_name=snapshot_name, found_state=record.get("power_state", ""),
                      master_url=xapi.url, learned_pins=learned)
    # keep applies to builds, never to an explicit release
    from dataclasses import replace

    lease.settings = replace(settings, keep="never")
    release_shielded(lease, "released")
    return lease
