"""A local XAPI lab: a pool speaking XenAPI's wire protocol, with real sshd guests.

Its own distribution, ``fruix-xapi-lab``, kept out of the ``fruix-guest-xcpng``
runtime wheel. For plugin authors (tests drive the real ``XenAPI.Session``
against it) and for operators rehearsing a ``[guests.xcpng]`` config
(command ``fruix-xapi-lab``)::

    with XapiLab(tmp_path, users={"builder": "s3cret"}, hosts=2) as lab:
        vm = lab.add_vm("fruix-build")          # Halted, with snapshot "clean"
        settings = lab.provider_settings("fruix-build")
        lab.change_master("xcp-host2")          # the first host now says HOST_IS_SLAVE
        ...

The pool has one or more hosts, each with its own XML-RPC endpoint on its own
loopback address (127.0.0.1, 127.0.1.1, ...) and the same port; the first is
the master. Each VM has its own loopback address (127.0.0.2, 127.0.0.3, ...),
a guest system root laid out like a Fruix guest (the bundled sample base as
its source store) and, while running, an OpenSSH sshd on that address.
Snapshots copy the system root; ``VM.revert`` restores it. Faults are named
points (:mod:`fruix_xapi_lab.faults`): hold an operation server-side, run a
callback at a call, drop a connection after a call; plus :class:`VmFaults`
per VM, :meth:`XapiLab.expire_sessions` and :meth:`XapiLab.drop_ssh`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from fruix_xapi_lab.faults import Hold, LabFaults, VmFaults
from fruix_xapi_lab.state import (
    AGENTS,
    GuestBooter,
    LabHost,
    LabSession,
    LabTask,
    LabVM,
    NullBooter,
    XapiError,
    XapiState,
)

__all__ = [
    "AGENTS",
    "GuestBooter",
    "Hold",
    "LabFaults",
    "LabHost",
    "LabTask",
    "LabSession",
    "LabVM",
    "NullBooter",
    "VmFaults",
    "XapiError",
    "XapiLab",
    "__version__",
]

__version__ = "0.1.0"

log = structlog.get_logger(__name__)


class XapiLab:
    """The lab: the pool's state, one HTTP(S) endpoint per host, and the VMs' guests.

    :param workdir: keys, guest roots, snapshots and the TLS certificates go here.
    :param users: user name → password accepted at login.
    :param host: listen address of the first host (the master).
    :param port: the port every host listens on (0: a free one).
    :param tls: serve HTTPS with generated self-signed certificates.
    :param cert_style: ``"8.2"`` (RSA, DNS names only) or ``"8.3"`` (with the IP).
    :param hosts: how many hosts the pool has.
    :param booter: ``"sshd"`` (real guests), ``"none"`` (XAPI side only) or a
        :class:`GuestBooter`.
    """

    def __init__(self, workdir: Path, *, users: Mapping[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0, tls: bool = False,
                 cert_style: str = "8.3", hosts: int = 1,
                 booter: str | GuestBooter = "sshd", faults: LabFaults | None = None):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.tls = tls
        self.cert_style = cert_style
        self.certificates: dict[str, Any] = {}
        if booter == "sshd":
            from fruix_xapi_lab.guests import SshdBooter

            self.booter: GuestBooter = SshdBooter(self.workdir / "keys")
        elif booter == "none":
            self.booter = NullBooter()
        elif isinstance(booter, str):
            raise ValueError(f"unknown booter {booter!r} (sshd, none)")
        else:
            self.booter = booter
        if hosts < 1:
            raise ValueError("a pool has at least one host")
        pool = [LabHost("xcp-host1", host, hostname="localhost")]
        pool += [LabHost(f"xcp-host{n}", f"127.0.1.{n - 1}", hostname=f"xcp-host{n}.lab")
                 for n in range(2, hosts + 1)]
        self.state = XapiState(users=dict(users or {}), booter=self.booter,
                               snapshot_dir=self.workdir / "snapshots", faults=faults,
                               hosts=pool)
        self._servers: dict[str, Any] = {}

    # -- lifecycle ------------------------------------------------------------------------

    def _context(self, host: LabHost) -> Any:
        if not self.tls:
            return None
        from fruix_xapi_lab.tls import make_certificate

        certificate = make_certificate(self.workdir / "tls" / host.name, host.address,
                                       hostname=host.hostname, style=self.cert_style)
        self.certificates[host.name] = certificate
        host.certificate = certificate.pem
        return certificate.server_context()

    def start(self) -> XapiLab:
        from fruix_xapi_lab.server import XapiHttpServer

        hosts = self.state.hosts
        for attempt in range(8):
            servers: dict[str, Any] = {}
            try:
                first = XapiHttpServer(self.state, hosts[0].address, self.port,
                                       tls=self._context(hosts[0]), lab_host=hosts[0])
                servers[hosts[0].name] = first
                for member in hosts[1:]:
                    servers[member.name] = XapiHttpServer(
                        self.state, member.address, first.port, tls=self._context(member),
                        lab_host=member)
            except OSError:
                for server in servers.values():
                    server.server_close()
                if self.port or attempt == 7 or not servers:
                    raise
                continue  # the port was free on the first address only: try another
            break
        self._servers = servers
        self.port = first.port
        for server in servers.values():
            server.start()
        log.info("xapi lab listening", url=self.url, hosts=len(hosts))
        return self

    def stop(self) -> None:
        """Stop every endpoint and every guest."""
        for server in self._servers.values():
            server.close()
        self._servers = {}
        self.state.shutdown()
        close = getattr(self.booter, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> XapiLab:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def certificate(self) -> Any:
        """The first host's certificate (``None`` without TLS)."""
        return self.certificates.get(self.state.hosts[0].name)

    def url_of(self, host_name: str) -> str:
        """The URL of host ``host_name``'s endpoint."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.state.host(host_name).address}:{self.port}/"

    @property
    def url(self) -> str:
        """The first host's URL (the master until :meth:`change_master`)."""
        return self.url_of(self.state.hosts[0].name)

    @property
    def hosts(self) -> list[LabHost]:
        return list(self.state.hosts)

    @property
    def master(self) -> LabHost:
        return self.state.master

    def change_master(self, host_name: str) -> None:
        """Make ``host_name`` the pool master; the others answer ``HOST_IS_SLAVE``."""
        self.state.designate_master(self.state.host(host_name))

    def host_gone(self, host_name: str) -> None:
        """Host ``host_name`` goes away: its endpoint stops and its connections drop."""
        server = self._servers.pop(host_name, None)
        if server is not None:
            server.close()

    @property
    def faults(self) -> LabFaults:
        return self.state.faults

    # -- VMs ---------------------------------------------------------------------------------

    def add_vm(self, name: str, *, uuid: str | None = None, address: str | None = None,
               ssh_port: int | None = None, root: Path | None = None,
               source: Path | None = None, power_state: str = "Halted",
               snapshots: Iterable[str] = ("clean",), checkpoints: Iterable[str] = (),
               ip_delay: float = 0.2, agent: str = "modern",
               faults: VmFaults | None = None) -> LabVM:
        """Add a VM, its guest system root and its snapshots (taken in order, halted).

        :param root: an existing system root to use; default: a fresh one under
            the work directory holding ``source`` (default: the sample base).
        :param agent: what the guest agent reports (:data:`AGENTS`).
        :param checkpoints: snapshots with memory, taken after ``snapshots``
            while the VM runs; reverting to one leaves the VM Suspended.
        """
        if agent not in AGENTS:
            raise ValueError(f"unknown agent {agent!r} ({', '.join(AGENTS)})")
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
                    from fruix_xapi_lab.guests import sample_source_dir

                    make_guest_root(root, source or sample_source_dir(), host_name=name)
                else:
                    root.mkdir(parents=True)
        vm = LabVM(name=name, address=address, ssh_port=ssh_port, root=Path(root),
                   ip_delay=ip_delay, agent=agent, faults=faults or VmFaults())
        if uuid:
            vm.uuid = uuid
        prepare = getattr(self.booter, "prepare", None)
        if prepare is not None:
            prepare(vm)
        self.state.add_vm(vm)
        for label in snapshots:
            self.state.call("snapshot", vm.ref, label)
        checkpoints = list(checkpoints)
        if checkpoints:
            self.state.call("start", vm.ref, True, False)
            for label in checkpoints:
                self.state.call("checkpoint", vm.ref, label)
            self.state.call("hard_shutdown", vm.ref)
        if power_state == "Running":
            self.state.call("start", vm.ref, False, False)
        elif power_state == "Paused":
            self.state.call("start", vm.ref, True, False)
        elif power_state == "Suspended":
            self.state.call("start", vm.ref, False, False)
            self.state.call("suspend", vm.ref)
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
        snapshot = self.state.vms[vm.snapshots[0]].name if vm.snapshots else "clean"
        settings: dict[str, Any] = {
            "url": self.url,
            "vm_uuid": vm.uuid,
            "snapshot": snapshot,
            "ssh_port": vm.ssh_port,
            "system_root": str(vm.root),
        }
        if not isinstance(self.booter, NullBooter):
            settings.update(host_key=self.host_key(name), identity_file=str(self.client_key(name)),
                            ssh_user=self.ssh_user(name))
        if self.tls and self.certificates:
            pins = [self.certificates[h.name].sha256 for h in self.state.hosts]
            settings["pinned_cert_sha256"] = pins[0] if len(pins) == 1 else pins
        settings.update(overrides)
        return settings

    def fruix_config(self, name: str, **overrides: Any) -> str:
        """A complete ``fruix.toml`` that builds in VM ``name`` through this lab, as is.

        ``host-initiated`` executor, the ``xcpng`` guest provider, the store,
        results and build root under the lab's work directory. The login stays
        in the environment (the same variables the lab reads).
        """
        import json

        def toml(value: Any) -> str:
            if isinstance(value, bool):
                return "true" if value else "false"
            if isinstance(value, (int, float)):
                return str(value)
            return json.dumps(value)

        rehearsal = self.workdir / "rehearsal"
        lines = [f"# fruix.toml for VM {name} of the XAPI lab at {self.url}",
                 "# (login: the FRUIX_XCPNG_USERNAME / FRUIX_XCPNG_PASSWORD the lab got)",
                 "[build]", 'executor = "host-initiated"', 'guest = "xcpng"', "jobs = 2",
                 'make = "bmake"', "", "[paths]",
                 f"store = {toml(str(rehearsal / 'store'))}",
                 f"results = {toml(str(rehearsal / 'results'))}",
                 f"build_root = {toml(str(rehearsal / 'build'))}", "", "[guests.xcpng]"]
        lines += [f"{key} = {toml(value)}"
                  for key, value in self.provider_settings(name, **overrides).items()]
        return "\n".join(lines) + "\n"

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
        hosts = []
        for host in self.state.hosts:
            entry = {"name": host.name, "address": host.address, "url": self.url_of(host.name),
                     "master": host is self.state.master}
            certificate = self.certificates.get(host.name)
            if certificate is not None:
                entry["certificate"] = {"file": str(certificate.cert_file),
                                        "sha256": certificate.sha256}
            hosts.append(entry)
        data: dict[str, Any] = {"url": self.url, "hosts": hosts, "vms": vms}
        if self.certificate is not None:
            data["certificate"] = {"file": str(self.certificate.cert_file),
                                   "sha256": self.certificate.sha256}
        return data
