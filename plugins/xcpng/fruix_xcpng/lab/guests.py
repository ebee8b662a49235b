"""Lab guests that are real: an OpenSSH sshd per running VM, on the VM's own address.

Each VM gets a key directory under the lab's work directory, holding its host
key (stable across boots, like the keys on a real VM's disk) and a client key
authorised to log in. Keys are generated when the VM is added, so the lab can
print the host key to pin before the VM ever boots.

:class:`SshdBooter` uses the core's test kit (:mod:`fruix_core.testkit.sshd`),
which runs ``/usr/sbin/sshd`` as the current user. Every sshd is started from
one long-lived worker thread: the kit asks the kernel to stop sshd when its
parent dies (``PR_SET_PDEATHSIG``), and on Linux that means the *thread* that
started it, so a short-lived boot thread would take its guest down with it.
"""

from __future__ import annotations

import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import structlog

from fruix_xcpng.lab.state import LabVM

__all__ = ["SshdBooter", "sample_source_dir"]

log = structlog.get_logger(__name__)


def sample_source_dir() -> Path:
    """The core's bundled sample base (the source store of lab guests)."""
    try:
        from fruix_core.api import sample_base_path

        return Path(sample_base_path())
    except ImportError:
        import fruix_core

        return Path(fruix_core.__file__).parent / "sample_base"


class SshdBooter:
    """Boots a VM by starting an sshd on ``vm.address:vm.ssh_port``; halts by stopping it."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self._servers: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lab-guests")

    def _server(self, vm: LabVM) -> Any:
        from fruix_core.testkit.sshd import SshServer

        with self._guard:
            server = self._servers.get(vm.uuid)
            if server is None:
                server = SshServer(self.workdir / vm.name, listen=vm.address, port=vm.ssh_port,
                                   system_root=vm.root)
                self._servers[vm.uuid] = server
                self._locks[vm.uuid] = threading.Lock()
            return server

    def prepare(self, vm: LabVM) -> None:
        """Generate the VM's host and client keys now (idempotent)."""
        server = self._server(vm)
        server.workdir.mkdir(parents=True, exist_ok=True)
        for path, comment in ((server.host_key_file, "fruix-lab-host"),
                              (server.client_key, "fruix-lab-client")):
            if not Path(path).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                "-f", str(path)], check=True, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def host_key_line(self, vm: LabVM) -> str:
        """``"ssh-ed25519 AAAA..."``: what an operator pins for this VM."""
        self.prepare(vm)
        pub = Path(self._server(vm).host_key_file).with_suffix(".pub")
        return " ".join(pub.read_text(encoding="ascii").split()[:2])

    def client_key(self, vm: LabVM) -> Path:
        """The private key authorised to log in to this VM's guest."""
        self.prepare(vm)
        return Path(self._server(vm).client_key)

    def user(self, vm: LabVM) -> str:
        return str(self._server(vm).user)

    def server(self, vm: LabVM) -> Any:
        """The VM's :class:`~fruix_core.testkit.sshd.SshServer` (to kill it, in tests)."""
        return self._server(vm)

    def boot(self, vm: LabVM) -> None:
        self._worker.submit(self._boot, vm).result()

    def halt(self, vm: LabVM) -> None:
        self._worker.submit(self._halt, vm).result()

    def close(self) -> None:
        """Stop the worker thread (after every guest was halted)."""
        self._worker.shutdown(wait=True)

    def _boot(self, vm: LabVM) -> None:
        server = self._server(vm)
        with self._locks[vm.uuid]:
            if not server.running:
                server.start()
                log.debug("lab guest up", vm=vm.name, address=vm.address, port=vm.ssh_port)

    def _halt(self, vm: LabVM) -> None:
        server = self._server(vm)
        with self._locks[vm.uuid]:
            server.stop()
            server.process = None
            log.debug("lab guest down", vm=vm.name)
