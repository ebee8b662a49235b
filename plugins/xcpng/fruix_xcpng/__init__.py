"""XCP-ng guest provider: boot the build VM over XenAPI, hand it over, always take it back.

Config lives in ``[guests.xcpng]`` (see :mod:`fruix_xcpng.settings` and
docs/operator/xcpng.rst). Importing this package is cheap: the ``XenAPI`` SDK
and paramiko are imported only when a guest is acquired.

A local XAPI lab to test against and to rehearse a config is a distribution
of its own (``fruix-xapi-lab``, :mod:`fruix_xapi_lab`), not part of this one.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from fruix_core.api import PLUGIN_API_VERSION, Guest, GuestError, GuestRequest, hookimpl
from fruix_xcpng import settings as _settings

if TYPE_CHECKING:
    from fruix_xcpng.lifecycle import Lease

__all__ = ["PROVIDER_NAME", "XcpngGuestProvider", "__version__"]

__version__ = "0.1.0"
PROVIDER_NAME = "xcpng"

log = structlog.get_logger(__name__)


class XcpngGuestProvider:
    """Build VMs on an XCP-ng pool (XenAPI): start, find the address, shut down and revert."""

    fruix_plugin_api = PLUGIN_API_VERSION
    fruix_settings = _settings.SCHEMA

    @staticmethod
    def fruix_check_settings(table: Mapping[str, Any], *, file: str | None) -> None:
        """Refuse a ``[guests.xcpng]`` table that ``parse_settings`` refuses."""
        _settings.parse_settings(table, file=file)

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    @hookimpl
    def fruix_acquire_guest(self, request: GuestRequest) -> Guest | None:
        """Start (or take) the configured VM and return it once sshd shows the pinned key."""
        if request.provider != PROVIDER_NAME:
            return None
        from fruix_xcpng.lifecycle import acquire
        from fruix_xcpng.settings import load_credentials, parse_settings

        settings = parse_settings(request.settings, file=request.config_file)
        credentials = load_credentials(settings)
        lease = acquire(settings, credentials, run_id=request.run_id, cancel=request.cancel,
                        step=request.step)
        with self._lock:
            self._leases[lease.lease_id] = lease
        return Guest(
            name=lease.vm_name or lease.vm_uuid,
            provider=PROVIDER_NAME,
            host=lease.address,
            port=settings.ssh_port,
            user=settings.ssh_user,
            identity_file=settings.identity_file or None,
            host_key=settings.host_key,
            system_root=settings.system_root,
            connect_timeout=settings.connect_timeout,
            details={
                "lease": lease.lease_id,
                "vm_uuid": lease.vm_uuid,
                "vm_name": lease.vm_name,
                "snapshot_uuid": lease.snapshot_uuid,
                "pool": settings.url,
                "power_state_found": lease.found_state,
                "keep": settings.keep,
            },
        )

    @hookimpl
    def fruix_release_guest(self, guest: Guest, outcome: str) -> None:
        """Shut the VM down and revert it to the snapshot (or keep it, as configured)."""
        if guest.provider != PROVIDER_NAME:
            return
        from fruix_xcpng.lifecycle import release_shielded

        lease_id = str(guest.details.get("lease", ""))
        with self._lock:
            lease = self._leases.get(lease_id)
        if lease is None:
            raise GuestError(f"no lease for VM {guest.details.get('vm_uuid', guest.name)} in "
                             "this process; shut it down and revert it by hand")
        lease.on_step = guest.step  # the core shows each step (shutting down, reverting)
        try:
            # Once begun, release is not abandoned by one more Ctrl-C (see shield).
            release_shielded(lease, outcome)
        finally:
            if lease.released:
                with self._lock:
                    self._leases.pop(lease_id, None)

    @hookimpl
    def fruix_release_configured_guest(self, request: GuestRequest) -> str | None:
        """Shut the configured VM down and revert it, as a run's release does (``keep`` aside)."""
        if request.provider != PROVIDER_NAME:
            return None
        from fruix_xcpng.lifecycle import release_vm
        from fruix_xcpng.settings import load_credentials, parse_settings

        settings = parse_settings(request.settings, file=request.config_file)
        lease = release_vm(settings, load_credentials(settings))
        return f"{lease.describe()}: halted and reverted to {lease.snapshot_label}"
