"""The lab's objects: hosts, sessions, tasks, VMs, guest metrics, and XAPI's error.

Plain records; :class:`~fruix_xapi_lab.state.XapiState` owns them and turns
them into XAPI's records (``record()``) for the wire.
"""

from __future__ import annotations

import threading
import time
import uuid as uuidlib
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fruix_xapi_lab.faults import VmFaults

__all__ = [
    "AGENTS",
    "ALLOWED_STATES",
    "NULL_REF",
    "GuestBooter",
    "LabHost",
    "LabSession",
    "LabTask",
    "LabVM",
    "Metrics",
    "NullBooter",
    "XapiError",
    "new_ref",
    "xapi_time",
]

NULL_REF = "OpaqueRef:NULL"
POWER_STATES = ("Halted", "Running", "Paused", "Suspended")
#: What a guest's agent reports: "modern" (one address per key), "old" (the
#: FreeBSD shell agent before 2024: several addresses in one value, separated by
#: spaces), "empty" (keys without values), "none" (no agent at all).
AGENTS = ("modern", "old", "empty", "none")

#: operation -> power states it is allowed in (xen-api ``xapi_vm_lifecycle.ml``,
#: ``allowed_power_states``)
ALLOWED_STATES: dict[str, tuple[str, ...]] = {
    "start": ("Halted",),
    "clean_shutdown": ("Running",),
    "hard_shutdown": ("Paused", "Suspended", "Running"),
    "pause": ("Running",),
    "unpause": ("Paused",),
    "suspend": ("Running",),
    "resume": ("Suspended",),
    "snapshot": POWER_STATES,
    "checkpoint": ("Paused", "Suspended", "Running"),
    "revert": POWER_STATES,
}
#: operations a snapshot allows (``check_snapshot``)
SNAPSHOT_OPERATIONS = ("revert", "hard_shutdown")
#: a hard shutdown cancels these (``message_forwarding.ml``, ``VM.hard_shutdown``)
CANCELLED_BY_HARD_SHUTDOWN = ("clean_shutdown", "clean_reboot", "hard_reboot")


class XapiError(Exception):
    """A XAPI failure: ``ErrorDescription`` = ``[code, *params]``."""

    def __init__(self, code: str, *params: Any):
        self.code = code
        self.description = [code, *(str(p) for p in params)]
        super().__init__(" ".join(self.description))


def new_ref() -> str:
    return f"OpaqueRef:{uuidlib.uuid4()}"


def _mac() -> str:
    """A MAC address in Xen's locally administered range (00:16:3e is Xen's OUI)."""
    tail = uuidlib.uuid4().bytes[:3]
    return "00:16:3e:" + ":".join(f"{b:02x}" for b in tail)


def xapi_time(seconds: float) -> xmlrpc.client.DateTime:
    """A ``dateTime`` value as XAPI sends it (``20240131T12:00:00Z``)."""
    return xmlrpc.client.DateTime(time.strftime("%Y%m%dT%H:%M:%SZ", time.gmtime(seconds)))


@dataclass
class LabHost:
    """One host of the pool: its address is what ``HOST_IS_SLAVE`` names."""

    name: str
    address: str
    hostname: str = ""
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    ref: str = field(default_factory=new_ref)
    #: PEM of the host's TLS certificate (``host.get_server_certificate``)
    certificate: str = ""

    def record(self, master: bool) -> dict[str, Any]:
        return {"uuid": self.uuid, "name_label": self.name, "hostname": self.hostname or self.name,
                "address": self.address, "enabled": True, "is_master": master}


@dataclass
class LabSession:
    ref: str
    uuid: str
    user: str
    originator: str
    created: float


@dataclass
class LabTask:
    """An XAPI task: every VM operation has one; ``Async.*`` calls return it."""

    name_label: str
    session: str
    vm: str = NULL_REF
    ref: str = field(default_factory=new_ref)
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    status: str = "pending"
    result: str = ""
    error_info: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    finished: float = 0.0
    visible: bool = True
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelling(self) -> bool:
        return self.cancel_requested.is_set()

    def record(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "name_label": self.name_label, "name_description": "",
                "status": self.status, "progress": 1.0 if self.status != "pending" else 0.0,
                "created": xapi_time(self.created), "finished": xapi_time(self.finished),
                "result": self.result, "error_info": list(self.error_info),
                "allowed_operations": ["cancel"] if self.status == "pending" else [],
                "current_operations": {}, "other_config": {}}


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
    #: seconds from start until the agent publishes its networks
    ip_delay: float = 0.2
    agent: str = "modern"
    faults: VmFaults = field(default_factory=VmFaults)
    is_a_snapshot: bool = False
    #: a checkpoint (snapshot with memory) reverts to Suspended
    is_a_checkpoint: bool = False
    snapshot_of: str = NULL_REF
    snapshots: list[str] = field(default_factory=list)
    #: VIF ref -> MAC address (a revert replaces the VIFs by copies of the snapshot's)
    vifs: dict[str, str] = field(default_factory=lambda: {new_ref(): _mac()})
    guest_metrics: str = NULL_REF
    snapshot_time: float = 0.0
    resident_on: str = NULL_REF
    #: task ref -> operation, as XAPI lists them
    current_operations: dict[str, str] = field(default_factory=dict)
    #: bumped on every boot and halt, so a stale boot thread knows it is stale
    generation: int = 0
    boots: int = 0
    reverts: int = 0
    #: set whenever the guest halts (wakes a stale agent thread)
    halted: threading.Event = field(default_factory=threading.Event)


@dataclass
class Metrics:
    ref: str
    uuid: str
    networks: dict[str, str]
    updated: float = field(default_factory=time.time)

    def record(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "networks": dict(self.networks), "os_version": {},
                "PV_drivers_detected": True, "other": {"feature-shutdown": "1"},
                "last_updated": xapi_time(self.updated), "live": True}


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
