"""A real OpenSSH ``sshd`` on loopback, for testing SSH transports and guests.

:class:`SshServer` starts ``/usr/sbin/sshd`` in the foreground (``-D -e -f
CONFIG``) as the current user, with its own generated Ed25519 host key, an
Ed25519 client key authorised to log in, its own config and a free high port.
Nothing on the machine's own sshd setup is used or changed. A "guest" in tests
is a system root directory (see :mod:`fruix_core.testkit.guest`) reached
through this server: commands run on this machine, paths are prefixed by
:attr:`fruix_core.model.Guest.system_root`.

It never skips: when ``sshd`` is missing the fixture fails and says that
``.ci/run`` installs Debian's ``openssh-server``.

Pytest fixtures (in :mod:`fruix_core.testkit.fixtures`):

``fruix_sshd``
    a started :class:`SshServer` for one test (stopped afterwards);
``fruix_sshd_shared``
    one started server for the whole session (do not kill it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from fruix_core.model import Guest

__all__ = [
    "SSHD",
    "SshServer",
    "SshdMissingError",
    "free_port",
]

#: The OpenSSH server binary the kit runs.
SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
START_TIMEOUT = 15.0


class SshdMissingError(RuntimeError):
    """OpenSSH's sshd (or ssh-keygen) is not installed."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the kernel's choice of a high port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _proc_children() -> dict[int, list[int]]:
    """Parent pid → child pids, read from ``/proc`` (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    tree = _proc_children()
    out: list[int] = []
    todo = list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(tree.get(child, []))
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None


class SshServer:
    """One OpenSSH server on loopback with generated keys and its own config.

    :param workdir: where keys, config, ``known_hosts`` and ``sshd.log`` go
        (created if needed).
    :param listen: address to listen on (``127.0.0.1`` or ``::1``).
    :param port: TCP port; ``None`` picks a free high port.
    :param system_root: default system root of the guests it describes.
    """

    def __init__(self, workdir: Path, *, listen: str = "127.0.0.1", port: int | None = None,
                 system_root: Path | None = None, base_system: Path | None = None,
                 build_user: int | None = None) -> None:
        self.workdir = Path(workdir)
        #: A FreeBSD-shaped base (:func:`~fruix_core.testkit.guest.make_base_system`):
        #: when set, every command runs on it with tcsh as the login shell.
        self.base_system = base_system
        #: With ``base_system``: the uid guest commands run as (an unprivileged builder).
        self.build_user = build_user
        self.login_script = self.workdir / "guest-login"
        self.host = listen
        self._fixed_port = port
        self.port = port or 0
        self.system_root = system_root
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host_key_file = self.workdir / "ssh_host_ed25519_key"
        self.client_key = self.workdir / "id_ed25519"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.known_hosts = self.workdir / "known_hosts"
        self.config_file = self.workdir / "sshd_config"
        self.log_file = self.workdir / "sshd.log"
        self.pid_file = self.workdir / "sshd.pid"
        self.host_key_line = ""
        self.process: subprocess.Popen[bytes] | None = None
        self._orphans: set[int] = set()

    # -- keys and config -------------------------------------------------------------

    @staticmethod
    def _require_tools() -> None:
        missing = [t for t in (SSHD,) if not os.access(t, os.X_OK)]
        if shutil.which(SSH_KEYGEN) is None:
            missing.append(SSH_KEYGEN)
        if missing:
            raise SshdMissingError(
                f"{', '.join(missing)} not found: the SSH tests need OpenSSH's server "
                "(Debian package openssh-server; .ci/run installs it)")

    def _keygen(self, path: Path, comment: str) -> None:
        if path.exists():
            return
        subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(path)], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def known_hosts_name(self) -> str:
        """The host name as OpenSSH writes it in ``known_hosts`` (``[host]:port``)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._keygen(self.host_key_file, "fruix-testkit-host")
        self._keygen(self.client_key, "fruix-testkit-client")
        public = (self.client_key.with_suffix(".pub")).read_text(encoding="ascii").strip()
        self.authorized_keys.write_text(public + "\n", encoding="ascii")
        key_type, key_b64 = (self.host_key_file.with_suffix(".pub")
                             .read_text(encoding="ascii").split()[:2])
        self.host_key_line = f"{key_type} {key_b64}"
        self.known_hosts.write_text(f"{self.known_hosts_name()} {self.host_key_line}\n",
                                    encoding="ascii")
        config = [
            f"ListenAddress {self._address()}",
            f"HostKey {self.host_key_file}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            f"AllowUsers {self.user}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitUserEnvironment no",
            "UseDNS no",
            "PrintMotd no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "MaxSessions 64",
            "MaxStartups 64:30:128",
            "LogLevel INFO",
            "Subsystem sftp internal-sftp",
            # bash (Debian builds it with SSH_SOURCE_BASHRC) reads ~/.bashrc for every
            # command sshd runs unless it is nested: a developer's rc file (pyenv, conda)
            # then slows or stalls each command. SHLVL=1 makes the login shell nested.
            "SetEnv SHLVL=1",
        ]
        if self.base_system is not None:
            config.append(f"ForceCommand {self._write_login_script()}")
        self.config_file.write_text("\n".join(config) + "\n", encoding="ascii")

    def _write_login_script(self) -> Path:
        """The guest's login: tcsh reads the command, on the base system (see guest.py)."""
        import shlex

        from fruix_core.testkit.guest import base_system_command

        assert self.base_system is not None
        words = base_system_command(self.base_system, ["/bin/tcsh", "-c"],
                                    user=self.build_user)
        line = " ".join(shlex.quote(w) for w in words)
        self.login_script.write_text(
            "#!/bin/sh\n"
            "# The test guest's login shell is tcsh, on a FreeBSD-shaped base system.\n"
            'if [ -z "${SSH_ORIGINAL_COMMAND-}" ]; then SSH_ORIGINAL_COMMAND=true; fi\n'
            f'exec {line} "$SSH_ORIGINAL_COMMAND"\n', encoding="ascii")
        os.chmod(self.login_script, 0o755)
        return self.login_script

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> SshServer:
        """Generate keys and config, start sshd and wait until it answers with a banner."""
        self._require_tools()
        if os.geteuid() == 0:
            # sshd refuses to start as root without its privilege separation directory.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        last_error = ""
        for _attempt in range(5):
            self.port = self._fixed_port or free_port(self.host)
            self._write_files()
            log = open(self.log_file, "ab")  # noqa: SIM115 - owned by the process
            try:
                self.process = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(self.config_file)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                    preexec_fn=_die_with_parent)
            finally:
                log.close()
            if self._wait_ready():
                return self
            last_error = self.log_file.read_text(errors="replace")[-2000:]
            self._terminate_listener()
            if self._fixed_port:
                break
        raise RuntimeError(f"sshd did not start on {self._address()}:\n{last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with socket.socket(family, socket.SOCK_STREAM) as sock:
                    sock.settimeout(2.0)
                    sock.connect((self.host, self.port))
                    if sock.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def session_pids(self) -> list[int]:
        """Pids of the per-connection sshd processes (not the commands they run)."""
        if self.process is None:
            return []
        return [p for p in _descendants(self.process.pid) if _comm(p).startswith("sshd")]

    def command_pids(self) -> list[int]:
        """Pids of the commands run through this server (descendants that are not sshd)."""
        if self.process is None:
            return []
        return [p for p in _descendants(self.process.pid) if not _comm(p).startswith("sshd")]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill sshd abruptly, listener and connections, as a crashing guest would.

        The commands it ran are left alone (they are orphaned like on a real
        guest) but remembered, so :meth:`stop` still sweeps them.
        """
        if self.process is None:
            return
        descendants = _descendants(self.process.pid)
        for pid in descendants:
            if _comm(pid).startswith("sshd"):
                _signal(pid, sig)
            else:
                pgid = _pgid(pid)
                self._orphans.add(pgid if pgid else pid)
        _signal(self.process.pid, sig)
        self.process.wait()

    def _terminate_listener(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def stop(self) -> None:
        """Stop sshd, its connections and every process group its sessions started."""
        if self.process is None:
            return
        groups = set(self._orphans)
        if self.process.poll() is None:
            for pid in _descendants(self.process.pid):
                pgid = _pgid(pid)
                if pgid and pgid != os.getpgrp():
                    groups.add(pgid)
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._terminate_listener()
        self._orphans.clear()

    def __enter__(self) -> SshServer:
        return self.start() if not self.running else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- descriptions ----------------------------------------------------------------

    def guest(self, name: str = "testkit-guest", provider: str = "ssh",
              system_root: Path | str | None = None, *, pin_host_key: bool = False) -> Guest:
        """A :class:`~fruix_core.model.Guest` reaching this server.

        :param pin_host_key: pin :attr:`host_key_line` instead of pointing at
            :attr:`known_hosts`.
        """
        root = system_root if system_root is not None else self.system_root
        return Guest(
            name=name, provider=provider, host=self.host, port=self.port, user=self.user,
            identity_file=str(self.client_key),
            known_hosts=None if pin_host_key else str(self.known_hosts),
            host_key=self.host_key_line if pin_host_key else None,
            system_root=str(root) if root is not None else "/",
            connect_timeout=10.0,
        )

    def ssh_command(self) -> list[str]:
        """An OpenSSH client command line logging in to this server (for comparisons)."""
        return ["ssh", "-q", "-p", str(self.port), "-i", str(self.client_key),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-F", "/dev/null",
                f"{self.user}@{self.host}"]


def _die_with_parent() -> None:
    """In the child, before exec (Linux): tie sshd to the test process and its commands to sshd.

    sshd gets SIGTERM when the test process dies, and becomes a child
    subreaper, so commands orphaned by a dropped session stay its descendants
    and :meth:`SshServer.stop` still finds them.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
