"""The build VM's lifecycle: find it, power it up, find its address; shut down and revert.

:func:`acquire` leaves the VM running with sshd answering the pinned key and
returns a :class:`Lease`; :func:`release` takes the lease back: a clean
shutdown under a deadline, a hard shutdown when that fails, then ``VM.revert``
to the snapshot (which leaves the VM halted) - or, under the ``keep`` policy,
nothing but a loud warning naming the VM and its address. Each function opens
its own XenAPI session and always logs it out: a build lasts longer than a
session should.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog

from fruix_core.api import Cancelled, CancelToken, FruixError, GuestError
from fruix_xcpng.network import candidate_addresses
from fruix_xcpng.settings import Credentials, XcpngSettings
from fruix_xcpng.sshprobe import wait_for_ssh
from fruix_xcpng.xapi import XapiClient, XapiFailure

__all__ = ["Lease", "acquire", "find_snapshot", "find_vm", "release", "wait_for_address"]

log = structlog.get_logger(__name__)

NULL_REF = "OpaqueRef:NULL"
#: Longest single ``event.from`` wait: events wake us at once, this bounds how late
#: we notice a deadline or an interrupt.
EVENT_WAIT = 1.0
#: Seconds to wait for XAPI to report Halted after a shutdown call returned.
HALT_SETTLE = 10.0


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
    lease_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    address: str = ""
    released: bool = False

    def describe(self) -> str:
        return f"VM '{self.vm_name}' ({self.vm_uuid})"


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
        kind = "template" if record.get("is_a_template") else "snapshot"
        raise GuestError(f"{settings.url}: {settings.vm_label} is a {kind}, not a VM")
    return ref, record


def find_snapshot(xapi: XapiClient, settings: XcpngSettings, vm_record: dict[str, Any]
                  ) -> tuple[str, str]:
    """The ref and uuid of the VM's snapshot named (or with uuid) ``settings.snapshot``."""
    wanted = settings.snapshot
    names = []
    matches = []
    for ref in vm_record.get("snapshots", []):
        record = xapi.call("VM.get_record", ref)
        names.append(record.get("name_label", ""))
        if wanted in (record.get("uuid"), record.get("name_label")):
            matches.append((ref, record["uuid"]))
    if not matches:
        listing = ", ".join(f"'{n}'" for n in sorted(names)) or "none"
        raise GuestError(f"{settings.url}: VM '{vm_record.get('name_label')}' has no snapshot "
                         f"'{wanted}' (key guests.xcpng.snapshot; its snapshots: {listing})")
    if len(matches) > 1:
        raise GuestError(f"{settings.url}: several snapshots of VM "
                         f"'{vm_record.get('name_label')}' are named '{wanted}'; "
                         "give the snapshot's uuid")
    return matches[0]


# -- acquiring ----------------------------------------------------------------------------


def _check_policy(settings: XcpngSettings, state: str, label: str) -> None:
    """Refuse a VM whose power state the policy does not let us take; touches nothing."""
    if state == "Running" and settings.running != "use":
        raise GuestError(f"{label} is already Running; another build or an operator may "
                         "be using it (set guests.xcpng.running = \"use\" to take it)")
    if state == "Paused" and settings.paused != "unpause":
        raise GuestError(f"{label} is Paused (set guests.xcpng.paused = \"unpause\" to take it)")
    if state == "Suspended" and settings.suspended != "resume":
        raise GuestError(f"{label} is Suspended (set guests.xcpng.suspended = \"resume\" "
                         "to take it)")
    if state not in ("Halted", "Running", "Paused", "Suspended"):
        raise GuestError(f"{label} is in power state '{state}', which cannot be used")


def _power_up(xapi: XapiClient, settings: XcpngSettings, ref: str, state: str,
              label: str) -> None:
    """Bring the VM to Running (the policy was checked already)."""
    start_timeout = max(settings.timeout, settings.shutdown_timeout)
    if state == "Halted":
        log.info("starting VM", vm=label)
        xapi.call("VM.start", ref, False, False, timeout=start_timeout)
    elif state == "Running":
        log.warning("using the already running VM", vm=label)
    elif state == "Paused":
        log.info("unpausing VM", vm=label)
        xapi.call("VM.unpause", ref)
    elif state == "Suspended":
        log.info("resuming VM", vm=label)
        xapi.call("VM.resume", ref, False, False, timeout=start_timeout)


def _read_networks(xapi: XapiClient, ref: str, label: str) -> dict[str, str]:
    state = xapi.call("VM.get_power_state", ref)
    if state != "Running":
        raise GuestError(f"{label} went {state} while waiting for its address")
    metrics = xapi.call("VM.get_guest_metrics", ref)
    if not metrics or metrics == NULL_REF:
        return {}
    try:
        return dict(xapi.call("VM_guest_metrics.get_networks", metrics))
    except XapiFailure as exc:
        if exc.code == "HANDLE_INVALID":  # the agent restarted and replaced its record
            return {}
        raise


def wait_for_address(xapi: XapiClient, settings: XcpngSettings, ref: str, label: str,
                     cancel: CancelToken | None = None) -> str:
    """Wait for the guest agent to report a usable address; ``event.from``, else polling.

    :raises GuestError: no usable address within ``settings.ip_timeout``.
    """
    deadline = time.monotonic() + settings.ip_timeout
    token = ""
    use_events = True
    seen: dict[str, str] = {}
    while True:
        if cancel is not None and cancel.cancelled:
            raise Cancelled(f"interrupted while waiting for the address of {label}")
        seen = _read_networks(xapi, ref, label)
        candidates = candidate_addresses(seen, settings.device)
        if candidates:
            return candidates[0]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reported = ", ".join(f"{k}={v}" for k, v in sorted(seen.items())) or "nothing"
            raise GuestError(f"{label} reported no usable address within "
                             f"{settings.ip_timeout:g} s (agent reported: {reported}); is "
                             "xe-guest-utilities installed and running in the guest?")
        if use_events:
            wait = min(remaining, EVENT_WAIT)
            try:
                answer = xapi.call("event.from", ["vm/" + ref, "vm_guest_metrics"], token,
                                   float(wait), timeout=wait + settings.timeout)
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


def acquire(settings: XcpngSettings, credentials: Credentials, *, run_id: str,
            cancel: CancelToken | None = None) -> Lease:
    """Boot (or take) the VM, wait for its address and its sshd; the VM is released on failure.

    :raises GuestError: the VM cannot be found or used, or a wait timed out.
    :raises HostKeyError: the guest's sshd shows another key than the pinned one.
    :raises Cancelled: interrupted; the VM is released first.
    """
    lease: Lease | None = None
    try:
        with XapiClient(settings, credentials) as xapi:
            ref, record = find_vm(xapi, settings)
            label = f"VM '{record.get('name_label')}' ({record.get('uuid')})"
            snapshot_ref, snapshot_uuid = find_snapshot(xapi, settings, record)
            state = record.get("power_state", "")
            log.info("acquiring VM", vm=label, power_state=state, run_id=run_id)
            _check_policy(settings, state, label)
            prepared = Lease(settings=settings, credentials=credentials, vm_ref=ref,
                             vm_uuid=record["uuid"], vm_name=record.get("name_label", ""),
                             snapshot_ref=snapshot_ref, snapshot_uuid=snapshot_uuid,
                             found_state=state)
            try:
                _power_up(xapi, settings, ref, state, label)
            except XapiFailure:
                # XAPI refused: the VM is as it was, maybe another run's; hands off.
                raise
            except BaseException:
                lease = prepared  # unknown outcome (timeout, interrupt): clean up to be safe
                raise
            lease = prepared
            lease.address = wait_for_address(xapi, settings, ref, label, cancel)
        log.info("VM reported its address", vm=label, address=lease.address)
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
                release(lease, outcome)
            except FruixError as release_error:
                log.error("could not release VM after a failed acquire", vm=lease.describe(),
                          error=str(release_error))
        raise


# -- releasing ------------------------------------------------------------------------------


def _wait_halted(xapi: XapiClient, ref: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = str(xapi.call("VM.get_power_state", ref))
        if state == "Halted" or time.monotonic() >= deadline:
            return state
        time.sleep(0.2)


def _hard_shutdown(xapi: XapiClient, lease: Lease) -> None:
    """``VM.hard_shutdown``, retried while the abandoned clean shutdown still holds the VM."""
    deadline = time.monotonic() + HALT_SETTLE
    while True:
        try:
            xapi.call("VM.hard_shutdown", lease.vm_ref, timeout=lease.settings.shutdown_timeout)
            return
        except XapiFailure as exc:
            if exc.code == "VM_BAD_POWER_STATE":  # halted meanwhile
                return
            if exc.code != "OTHER_OPERATION_IN_PROGRESS" or time.monotonic() >= deadline:
                raise
        time.sleep(0.5)


def _shut_down(xapi: XapiClient, lease: Lease) -> None:
    settings, ref, label = lease.settings, lease.vm_ref, lease.describe()
    state = xapi.call("VM.get_power_state", ref)
    if state == "Running":
        log.info("shutting VM down", vm=label, deadline=settings.shutdown_timeout)
        try:
            xapi.call("VM.clean_shutdown", ref, timeout=settings.shutdown_timeout)
        except GuestError as exc:
            log.warning("clean shutdown failed or took too long; forcing it", vm=label,
                        error=str(exc))
            state = xapi.call("VM.get_power_state", ref)
        else:
            state = _wait_halted(xapi, ref, HALT_SETTLE)
    if state != "Halted":
        log.info("hard shutdown", vm=label, power_state=state)
        _hard_shutdown(xapi, lease)
        state = _wait_halted(xapi, ref, HALT_SETTLE)
    if state != "Halted":
        raise GuestError(f"{label} is still {state} after a hard shutdown")


def _revert(xapi: XapiClient, lease: Lease) -> None:
    label = lease.describe()
    try:
        snapshot = xapi.call("VM.get_by_uuid", lease.snapshot_uuid)
    except XapiFailure as exc:
        if exc.code in ("UUID_INVALID", "HANDLE_INVALID"):
            raise GuestError(f"{label}: snapshot {lease.snapshot_uuid} disappeared; "
                             "the VM was shut down but not reverted") from None
        raise
    log.info("reverting VM", vm=label, snapshot=lease.snapshot_uuid)
    xapi.call("VM.revert", snapshot, timeout=max(lease.settings.timeout,
                                                 lease.settings.shutdown_timeout))
    # A snapshot taken with memory would come back running: halt it again.
    if xapi.call("VM.get_power_state", lease.vm_ref) != "Halted":
        _shut_down(xapi, lease)


def release(lease: Lease, outcome: str, *, attempts: int = 3) -> None:
    """Shut the VM down and revert it, or keep it running as configured.

    Retries the whole sequence a few times on a connection failure.

    :raises GuestError: the VM could not be released; the message says how to
        do it by hand.
    """
    if lease.released:
        return
    settings, label = lease.settings, lease.describe()
    keep = settings.keep == "always" or (settings.keep == "on-failure" and outcome == "failed")
    if keep:
        lease.released = True
        where = f"RUNNING at {lease.address}" if lease.address else "as it is (no address yet)"
        log.warning(f"KEEPING {label} {where} "
                    f"(keep = \"{settings.keep}\", run {outcome}); it is NOT reverted; "
                    f"when done: xe vm-shutdown uuid={lease.vm_uuid} force=true && "
                    f"xe snapshot-revert snapshot-uuid={lease.snapshot_uuid}",
                    vm_uuid=lease.vm_uuid, address=lease.address, port=settings.ssh_port,
                    outcome=outcome, keep=settings.keep)
        return
    error: FruixError | None = None
    for attempt in range(1, attempts + 1):
        try:
            with XapiClient(settings, lease.credentials) as xapi:
                _shut_down(xapi, lease)
                _revert(xapi, lease)
            lease.released = True
            log.info("VM released: halted and reverted", vm=label, outcome=outcome,
                     snapshot=lease.snapshot_uuid)
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
