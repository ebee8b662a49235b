"""A local XAPI lab: XenAPI's wire protocol over HTTP(S), with real sshd guests.

For plugin authors (tests drive the real ``XenAPI.Session`` against it) and for
operators rehearsing a ``[guests.xcpng]`` config (``fruix-xapi-lab``)::

    with XapiLab(tmp_path, users={"builder": "s3cret"}) as lab:
        vm = lab.add_vm("fruix-build")          # Halted, with snapshot "clean"
        settings = lab.provider_settings("fruix-build")
        ...

Each VM has its own loopback address (127.0.0.2, 127.0.0.3, ...), a guest
system root laid out like a Fruix guest (the bundled sample base as its source
store) and, while running, an OpenSSH sshd on that address. Snapshots copy the
system root; ``VM.revert`` restores it. Faults: :class:`VmFaults` per VM,
:class:`LabFaults` for the whole lab, :meth:`XapiLab.expire_sessions`, and
:meth:`XapiLab.drop_ssh` to kill a guest's sshd mid-run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from fruix_xcpng.lab.state import (
    GuestBooter,
    LabFaults,
    LabSession,
    LabVM,
    NullBooter,
    VmFaults,
    XapiError,
    XapiState,
)

__all__ = [
    "GuestBooter",
    "LabFaults",
    "LabSession",
    "LabVM",
    "NullBooter",
    "VmFaults",
    "XapiError",
    "XapiLab",
]

log = structlog.get_logger(__name__)


class XapiLab:
    """The lab: XAPI state, its HTTP(S) endpoint and the VMs' guests.

    :param workdir: keys, guest roots, snapshots and the TLS certificate go here.
    :param users: user name → password accepted at login.
    :param host: listen address of the XML-RPC endpoint.
    :param port: its port (0: a free one).
    :param tls: serve HTTPS with a generated self-signed certificate.
    :param booter: ``"sshd"`` (real guests), ``"none"`` (XAPI side only) or a
        :class:`GuestBooter`.
    """

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0, tls: bool = False,
                 booter: str | GuestBooter = "sshd", faults: LabFaults | None = None):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.tls = tls
        self.certificate: Any = None
        if booter == "sshd":
            from fruix_xcpng.lab.guests import SshdBooter

            self.booter: GuestBooter = SshdBooter(self.workdir / "keys")
        elif booter == "none":
            self.booter = NullBooter()
        elif isinstance(booter, str):
            raise ValueError(f"unknown booter {booter!r} (sshd, none)")
        else:
            self.booter = booter
        self.state = XapiState(users=dict(users or {}), booter=self.booter,
                               snapshot_dir=self.workdir / "snapshots", faults=faults)
        self._server: Any = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> XapiLab:
        from fruix_xcpng.lab.server import XapiHttpServer

        context = None
        if self.tls:
            from fruix_xcpng.lab.tls import make_certificate

            self.certificate = make_certificate(self.workdir / "tls", self.host)
            context = self.certificate.server_context()
        self._server = XapiHttpServer(self.state, self.host, self.port, tls=context)
        self.port = self._server.port
        self._server.start()
        log.info("xapi lab listening", url=self.url)
        return self

    def stop(self) -> None:
        """Stop the endpoint and every guest."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.state.shutdown()
        close = getattr(self.booter, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> XapiLab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}/"

    @property
    def faults(self) -> LabFaults:
        return self.state.faults

    # -- VMs ---------------------------------------------------------------------------------

    def add_vm(self, name: str, *, uuid: str | None = None, address: str | None = None,
               ssh_port: int | None = None, root: Path | None = None,
               source: Path | None = None, power_state: str = "Halted",
               snapshots: Iterable[str] = ("clean",), ip_delay: float = 0.2,
               faults: VmFaults | None = None) -> LabVM:
        """Add a VM, its guest system root and its snapshots (taken in order, halted).

        :param root: an existing system root to use; default: a fresh one under
            the work directory holding ``source`` (default: the sample base).
        """
        real_guests = not isinstance(self.booter, NullBooter)
        count = sum(1 for v in self.state.vms.values() if not v.is_a_snapshot)
        address = address or f"127.0.0.{2 + count}"
        if ssh_port is None:
            if real_guests:
                from fruix_core.testkit.sshd import free_port

                ssh_port = free_port(address)
            else:
                ssh_port = 22
        if root is None:
            root = self.workdir / "vms" / name / "root"
            if not root.exists():
                if real_guests:
                    from fruix_core.testkit.guest import make_guest_root
                    from fruix_xcpng.lab.guests import sample_source_dir

                    make_guest_root(root, source or sample_source_dir(), host_name=name)
                else:
                    root.mkdir(parents=True)
        vm = LabVM(name=name, address=address, ssh_port=ssh_port, root=Path(root),
                   ip_delay=ip_delay, faults=faults or VmFaults())
        if uuid:
            vm.uuid = uuid
        prepare = getattr(self.booter, "prepare", None)
        if prepare is not None:
            prepare(vm)
        self.state.add_vm(vm)
        for label in snapshots:
            self.state.snapshot(vm.ref, label)
        if power_state == "Running":
            self.state.start(vm.ref, False, False)
        elif power_state == "Paused":
            self.state.start(vm.ref, True, False)
        elif power_state == "Suspended":
            self.state.start(vm.ref, False, False)
            self.state.suspend(vm.ref)
        elif power_state != "Halted":
            raise ValueError(f"unknown power state {power_state!r}")
        return vm

    def vm(self, name: str) -> LabVM:
        return self.state.vm_by_name(name)

    def snapshot_of(self, name: str, label: str = "clean") -> LabVM:
        vm = self.vm(name)
        for ref in vm.snapshots:
            snap = self.state.vms[ref]
            if snap.name == label:
                return snap
        raise KeyError(label)

    def host_key(self, name: str) -> str:
        """The host key line to pin for VM ``name``."""
        return str(self.booter.host_key_line(self.vm(name)))  # type: ignore[attr-defined]

    def client_key(self, name: str) -> Path:
        return Path(self.booter.client_key(self.vm(name)))  # type: ignore[attr-defined]

    def ssh_user(self, name: str) -> str:
        user = getattr(self.booter, "user", None)
        return str(user(self.vm(name))) if user is not None else "root"

    def drop_ssh(self, name: str) -> None:
        """Kill VM ``name``'s sshd and its connections abruptly (a network drop)."""
        self.booter.server(self.vm(name)).kill()  # type: ignore[attr-defined]

    # -- sessions ---------------------------------------------------------------------------

    def live_sessions(self) -> list[LabSession]:
        """Sessions logged in and neither logged out nor expired."""
        return self.state.live_sessions()

    def expire_sessions(self) -> int:
        return self.state.expire_sessions()

    # -- descriptions -------------------------------------------------------------------------

    def provider_settings(self, name: str, **overrides: Any) -> dict[str, Any]:
        """A ``[guests.xcpng]`` table reaching VM ``name`` through this lab."""
        vm = self.vm(name)
        settings: dict[str, Any] = {
            "url": self.url,
            "vm_uuid": vm.uuid,
            "snapshot": "clean",
            "ssh_port": vm.ssh_port,
            "system_root": str(vm.root),
        }
        if not isinstance(self.booter, NullBooter):
            settings.update(host_key=self.host_key(name), identity_file=str(self.client_key(name)),
                            ssh_user=self.ssh_user(name))
        if self.tls and self.certificate is not None:
            settings["pinned_cert_sha256"] = self.certificate.sha256
        settings.update(overrides)
        return settings

    def describe(self) -> dict[str, Any]:
        """The lab as ``fruix-xapi-lab`` prints it (no login: neither user nor password)."""
        vms = []
        for vm in self.state.vms.values():
            if vm.is_a_snapshot:
                continue
            entry: dict[str, Any] = {
                "name": vm.name, "uuid": vm.uuid, "power_state": vm.power_state,
                "address": vm.address, "ssh_port": vm.ssh_port, "system_root": str(vm.root),
                "snapshots": [self.state.vms[r].name for r in vm.snapshots],
            }
            if not isinstance(self.booter, NullBooter):
                entry.update(host_key=self.host_key(vm.name),
                             identity_file=str(self.client_key(vm.name)))
            vms.append(entry)
        data: dict[str, Any] = {"url": self.url, "vms": vms}
        if self.certificate is not None:
            data["certificate"] = {"file": str(self.certificate.cert_file),
                                   "sha256": self.certificate.sha256}
        return data
