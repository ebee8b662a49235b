"""Run commands in a guest over SSH (paramiko), with host keys always verified.

Connecting (:func:`connect`):

* the host key is checked against the key pinned in the guest's config
  (``Guest.host_key``, which survives snapshot reverts) or a known-hosts file
  (``Guest.known_hosts``, else ``~/.ssh/known_hosts``); an unknown key is
  refused (paramiko's reject policy); a changed key is always refused.
  Trust on first use happens only when ``Guest.trust_on_first_use`` is set,
  and logs a warning with the fingerprint it accepted;
* connect, banner and authentication timeouts come from
  ``Guest.connect_timeout``; Ed25519 user and host keys work;
* keepalives are sent while a command is silent, and a peer that stops
  answering them is declared lost; a silent command is never timed out.

Running (:meth:`SSHSession.run`, the :class:`~fruix_core.transport.CommandRunner`
contract): the remote command is always ``exec /bin/sh -c '<script>'`` (root's
login shell may be csh), the sanitised environment is spelled out in the
command line with ``env -i K=V ...`` (never sent with AcceptEnv), and the
script first prints a marker line with its process group id. sshd makes the
session's shell a session leader, and the ``exec`` chain keeps its pid, so
``$$`` *is* the process group of everything the command starts; cancel and
timeout kill that group through a second channel. Output (stdout and stderr
merged) is read continuously, so a full window never deadlocks, and the exit
status is read after EOF. Output still held open :data:`LINGER_SECONDS` after
the command exited (a daemonised child) gets its group swept, as the local
runner does.
"""

from __future__ import annotations

import collections
import re
import shlex
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from fruix_core.errors import (
    AuthenticationError,
    ConnectionLostError,
    HostKeyError,
    TransportError,
)
from fruix_core.model import CancelToken, Guest
from fruix_core.transport import CommandOutcome, LineSink

if TYPE_CHECKING:  # paramiko is imported lazily: `fruix --help` must not pay for it.
    import paramiko

__all__ = [
    "KEEPALIVE_INTERVAL",
    "SSHSession",
    "connect",
    "fingerprint",
    "remote_command",
    "shell_script",
]

log = structlog.get_logger(__name__)

#: Seconds of silence after which a keepalive probe is sent.
KEEPALIVE_INTERVAL = 15.0
#: Unanswered probes after which the peer is declared lost.
KEEPALIVE_COUNT_MAX = 4
#: Seconds between SIGTERM and SIGKILL of a remote process group.
GRACE_SECONDS = 3.0
TAIL_LINES = 20
#: Channel window and packet size for bulk reads (tar streams). With paramiko's
#: defaults (2 MiB, 32 KiB) a loopback tar stream ran at a quarter of OpenSSH's speed;
#: 128 KiB packets match it (see benchmarks/ssh_import).
BULK_WINDOW = 16 * 1024 * 1024
BULK_PACKET = 128 * 1024
PGID_MARKER = "@@fruix-pgid@@"
#: Longest line passed on as one; longer output is cut into pieces of this size.
MAX_LINE = 1 << 20
#: Seconds the output may stay open after the command exited before its group is swept.
LINGER_SECONDS = 5.0
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
#: Preferred ciphers: AEAD first (one pass, no separate MAC), then paramiko's defaults.
_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
            "aes128-ctr", "aes192-ctr", "aes256-ctr")


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a key."""
    return str(key.fingerprint)


# -- command lines ------------------------------------------------------------------------


def shell_script(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | None = None) -> str:
    """A one-line POSIX sh script running ``argv`` in exactly ``env`` (``env -i``)."""
    words: list[str] = []
    if env is not None:
        words.extend(["env", "-i"])
        for name, value in sorted(env.items()):
            if not _ENV_NAME.match(name):
                raise TransportError(f"invalid environment variable name {name!r}")
            if "\n" in value or "\0" in value:
                raise TransportError(f"environment variable {name} holds a newline")
            words.append(f"{name}={value}")
    for word in argv:
        if "\n" in word or "\0" in word:
            raise TransportError(f"command word holds a newline: {word[:40]!r}")
    words.extend(argv)
    command = " ".join(shlex.quote(w) for w in words)
    if cwd is not None:
        command = f"cd {shlex.quote(cwd)} && {command}"
    return command


def remote_command(script: str, *, report_pgid: bool = True) -> str:
    """The exact string sent to sshd: ``exec /bin/sh -c '<script>'``.

    The script is kept on one line (csh refuses newlines inside quotes). With
    ``report_pgid`` its first output line is ``@@fruix-pgid@@ <pgid>``; stderr
    is merged into stdout; the command runs as a child so that its exit status
    (128+N when killed by signal N) reaches us as an exit status.
    """
    if "\n" in script:
        raise TransportError("remote scripts must be one line")
    prefix = f'echo "{PGID_MARKER} $$"; ' if report_pgid else ""
    wrapped = f"exec 2>&1; {prefix}{script}"
    return "exec /bin/sh -c " + shlex.quote(wrapped)


# -- host keys ----------------------------------------------------------------------------


def _host_names(guest: Guest) -> list[str]:
    return [guest.host] if guest.port == 22 else [f"[{guest.host}]:{guest.port}"]


def _parse_pinned(line: str, guest: Guest) -> paramiko.PKey:
    import paramiko

    parts = line.split()
    if len(parts) < 2:
        raise HostKeyError(f"guest {guest.name}: pinned host key must be "
                           f"'<type> <base64>', got {line[:40]!r}")
    try:
        return paramiko.PKey.from_type_string(parts[0], _b64decode(parts[1]))
    except Exception as exc:  # paramiko raises several unrelated types here
        raise HostKeyError(f"guest {guest.name}: pinned host key is not valid: {exc}") from None


def _b64decode(text: str) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise HostKeyError(f"pinned host key is not base64: {exc}") from None


def _policy(guest: Guest, source: str) -> Any:
    """Reject unknown keys, or (explicit opt-in only) accept and remember them."""
    import paramiko

    class Refuse(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise HostKeyError(
                f"host key of {hostname} is unknown ({key.get_name()} {fingerprint(key)}; "
                f"checked {source}); pin it in the guest config (host_key) or add it to "
                "known_hosts")

    class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            log.warning("accepting unknown host key (trust_on_first_use)", host=hostname,
                        key_type=key.get_name(), fingerprint=fingerprint(key))
            client.get_host_keys().add(hostname, key.get_name(), key)
            if guest.known_hosts:
                try:
                    with open(guest.known_hosts, "a", encoding="ascii") as handle:
                        handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                except OSError as exc:
                    log.warning("cannot remember host key", file=guest.known_hosts,
                                error=str(exc))

    return TrustOnFirstUse() if guest.trust_on_first_use else Refuse()


# -- sessions -----------------------------------------------------------------------------


def connect(guest: Guest, *, keepalive: float = KEEPALIVE_INTERVAL) -> SSHSession:
    """Open an authenticated SSH session to ``guest``.

    :raises HostKeyError: the host key is unknown (and TOFU is off) or changed.
    :raises AuthenticationError: the guest refused our key.
    :raises TransportError: the guest is unreachable or did not speak SSH in time.
    """
    import paramiko

    where = f"{guest.user}@{guest.host}:{guest.port}"
    client = paramiko.SSHClient()
    if guest.host_key:
        key = _parse_pinned(guest.host_key, guest)
        for name in _host_names(guest):
            client.get_host_keys().add(name, key.get_name(), key)
        source = "the pinned host_key"
    else:
        path = guest.known_hosts or "~/.ssh/known_hosts"
        try:
            if guest.known_hosts:
                client.get_host_keys().load(guest.known_hosts)
            else:
                client.load_system_host_keys()
        except FileNotFoundError:
            if not guest.trust_on_first_use:
                raise HostKeyError(f"known-hosts file not found: {path}") from None
        except (OSError, paramiko.SSHException) as exc:
            raise HostKeyError(f"cannot read known-hosts file {path}: {exc}") from None
        source = path
    client.set_missing_host_key_policy(_policy(guest, source))

    def transport_factory(sock: Any, **kwargs: Any) -> paramiko.Transport:
        transport = paramiko.Transport(sock, **kwargs)
        options = transport.get_security_options()
        available = set(options.ciphers)
        options.ciphers = tuple(c for c in _CIPHERS if c in available) + tuple(
            c for c in options.ciphers if c not in _CIPHERS)
        return transport

    timeout = guest.connect_timeout
    kwargs: dict[str, Any] = {
        "hostname": guest.host, "port": guest.port, "username": guest.user,
        "timeout": timeout, "banner_timeout": timeout, "auth_timeout": timeout,
        "channel_timeout": timeout, "compress": False,
        "transport_factory": transport_factory,
    }
    if guest.identity_file:
        kwargs.update(key_filename=guest.identity_file, look_for_keys=False, allow_agent=False)
    started = time.monotonic()
    try:
        client.connect(**kwargs)
    except HostKeyError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostKeyError(
            f"host key of {guest.host}:{guest.port} does not match ({source}): expected "
            f"{fingerprint(exc.expected_key)}, got {exc.key.get_name()} "
            f"{fingerprint(exc.key)}; refusing to connect (possible impersonation)") from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise AuthenticationError(
            f"{where}: identity file {guest.identity_file} is encrypted; "
            "use an unencrypted key or an agent") from None
    except paramiko.AuthenticationException:
        client.close()
        what = f"identity file {guest.identity_file}" if guest.identity_file else "our keys"
        raise AuthenticationError(f"{where}: authentication refused ({what})") from None
    except FileNotFoundError as exc:
        client.close()
        raise AuthenticationError(f"{where}: identity file not found: {exc.filename}") from None
    except TimeoutError:
        client.close()
        raise TransportError(f"{where}: unreachable (timed out after {timeout:g} s)") from None
    except paramiko.SSHException as exc:
        client.close()
        raise TransportError(f"{where}: SSH handshake failed: {exc}") from None
    except OSError as exc:
        client.close()
        reason = exc.strerror or str(exc)
        raise TransportError(f"{where}: unreachable ({reason})") from None
    transport = client.get_transport()
    assert transport is not None
    transport.set_keepalive(int(max(1, keepalive)))
    log.debug("ssh connected", guest=guest.name, host=guest.host, port=guest.port,
              seconds=round(time.monotonic() - started, 3),
              cipher=transport.remote_cipher)  # type: ignore[attr-defined]  # no stub
    return SSHSession(guest, client, keepalive=keepalive)


class SSHSession:
    """One authenticated connection to a guest: run commands, read and write files.

    Thread-safe for opening channels; each :meth:`run` uses its own channel.
    Use :func:`connect` to make one; close it (or use it as a context manager).
    """

    def __init__(self, guest: Guest, client: paramiko.SSHClient, *,
                 keepalive: float = KEEPALIVE_INTERVAL) -> None:
        self.guest = guest
        self.client = client
        self.keepalive = keepalive
        self._closed = False

    # -- plumbing ----------------------------------------------------------------------

    @property
    def where(self) -> str:
        return f"{self.guest.user}@{self.guest.host}:{self.guest.port}"

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectionLostError(f"{self.where}: connection lost")
        return transport

    @property
    def active(self) -> bool:
        transport = self.client.get_transport()
        return bool(transport is not None and transport.is_active())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.close()

    def __enter__(self) -> SSHSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_channel(self, command: str, *, bulk: bool = False) -> paramiko.Channel:
        """Start ``command`` (already a full remote command line) on a new channel.

        :param bulk: use a large window and packets, for streams (trees, build output).
        """
        import paramiko

        try:
            transport = self.transport
            if bulk:
                channel = transport.open_session(window_size=BULK_WINDOW,
                                                 max_packet_size=BULK_PACKET,
                                                 timeout=self.guest.connect_timeout)
            else:
                channel = transport.open_session(timeout=self.guest.connect_timeout)
            channel.set_combine_stderr(True)
            channel.exec_command(command)
        except ConnectionLostError:
            raise
        except (paramiko.SSHException, EOFError, OSError) as exc:
            if not self.active:
                raise ConnectionLostError(f"{self.where}: connection lost ({exc})") from None
            raise TransportError(f"{self.where}: cannot start a command: {exc}") from None
        return channel

    def probe(self, timeout: float) -> bool:
        """Whether the peer answers a keepalive request within ``timeout`` seconds."""
        done = threading.Event()

        def ask() -> None:
            try:
                self.transport.global_request("keepalive@openssh.com", wait=True)
            except Exception:  # noqa: BLE001 - a dead transport answers nothing
                return
            done.set()

        threading.Thread(target=ask, name="fruix-ssh-probe", daemon=True).start()
        return done.wait(timeout)

    # -- CommandRunner -------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: str | None = None,
        on_line: LineSink | None = None,
        timeout: float | None = None,
        cancel: CancelToken | None = None,
    ) -> CommandOutcome:
        """Run ``argv`` in the guest in exactly ``env``; see the module docstring.

        :raises ConnectionLostError: the connection dropped before the exit status came.
        """
        return self.run_script(shell_script(argv, env=env, cwd=cwd), on_line=on_line,
                               timeout=timeout, cancel=cancel)

    def run_script(self, script: str, *, on_line: LineSink | None = None,
                   timeout: float | None = None, cancel: CancelToken | None = None,
                   stdin: bytes | None = None) -> CommandOutcome:
        """Run a one-line sh script (see :func:`shell_script`) like :meth:`run`."""
        started = time.monotonic()
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        channel = self.open_channel(remote_command(script), bulk=True)
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
        channel.settimeout(0.2)
        pgid: int | None = None
        pending = b""
        timed_out = cancelled = False
        last_traffic = time.monotonic()

        def emit(raw: bytes) -> None:
            nonlocal pgid
            line = raw.decode("utf-8", "replace")
            if pgid is None and line.startswith(PGID_MARKER):
                try:
                    pgid = int(line.split()[1])
                except (IndexError, ValueError):
                    pass
                return
            tail.append(line)
            if on_line is not None:
                on_line(line)

        try:
            while True:
                try:
                    data = channel.recv(65536)
                except TimeoutError:
                    data = None
                if data == b"":
                    # EOF; the exit status may still be on its way (or the command may
                    # have closed its output and go on): keep honouring cancel/timeout.
                    if self._await_exit(channel, started, timeout, cancel):
                        break
                    timed_out = timeout is not None and not (cancel and cancel.cancelled)
                    cancelled = not timed_out
                    self._stop_group(pgid, channel)
                    break
                if data:
                    last_traffic = time.monotonic()
                    pending += data
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        emit(raw)
                    if len(pending) > MAX_LINE:
                        emit(pending)
                        pending = b""
                    continue
                if cancel is not None and cancel.cancelled:
                    cancelled = True
                elif timeout is not None and time.monotonic() - started > timeout:
                    timed_out = True
                if timed_out or cancelled:
                    self._stop_group(pgid, channel)
                    break
                if not self.active:
                    break
                if channel.exit_status_ready() and \
                        time.monotonic() - last_traffic > LINGER_SECONDS:
                    # The command exited but something it started still holds the
                    # output open: sweep its group, as the local runner does.
                    self._stop_group(pgid, channel, grace=0.5)
                    break
                last_traffic = self.check_alive(last_traffic)
        except BaseException:
            # Ctrl-C or a failing sink: never leave the remote group running.
            if self.active:
                try:
                    self._stop_group(pgid, channel, grace=0.5)
                except Exception as exc:  # noqa: BLE001 - the original error matters more
                    log.warning("cannot stop remote command", error=str(exc))
            channel.close()
            raise
        if pending:
            emit(pending)
        status = self.exit_status(channel, wait=10.0)
        channel.close()
        if timed_out or cancelled:
            # The wrapper was killed with its group: report the signal we sent.
            status = -15 if status in (None, 255) else status
        elif status is None:
            raise ConnectionLostError(f"{self.where}: connection lost before the command finished")
        return CommandOutcome(returncode=status, duration=time.monotonic() - started,
                              last_lines=tuple(tail), timed_out=timed_out, cancelled=cancelled)

    def _await_exit(self, channel: paramiko.Channel, started: float, timeout: float | None,
                    cancel: CancelToken | None) -> bool:
        """After EOF, wait for the exit status; ``False`` when cancel or timeout came first."""
        while not channel.exit_status_ready() and self.active:
            if cancel is not None and cancel.cancelled:
                return False
            if timeout is not None and time.monotonic() - started > timeout:
                return False
            channel.status_event.wait(0.2)
        return True

    def exit_status(self, channel: paramiko.Channel, wait: float | None) -> int | None:
        """The exit status after EOF; ``None`` when the connection dropped first."""
        deadline = None if wait is None else time.monotonic() + wait
        while not channel.exit_status_ready():
            if not self.active and not channel.exit_status_ready():
                return None
            if deadline is not None and time.monotonic() > deadline:
                return None
            channel.status_event.wait(0.1)
        status = channel.exit_status
        if status == -1:
            # Closed without an exit-status message: the connection dropped, or the
            # wrapper itself was killed by a signal (paramiko ignores exit-signal).
            return None if not self.active else 255
        return int(status)

    def _stop_group(self, pgid: int | None, channel: paramiko.Channel,
                    grace: float = GRACE_SECONDS) -> None:
        """SIGTERM the remote process group, wait up to ``grace`` s, then SIGKILL it."""
        if pgid is None or pgid <= 1:
            channel.close()  # sshd hangs up on the session: SIGHUP reaches the command
            return
        self.kill_group(pgid, grace=grace)

    def kill_group(self, pgid: int, *, grace: float = GRACE_SECONDS) -> None:
        """Kill a remote process group over a second channel (TERM, grace, KILL)."""
        if pgid <= 1:
            raise TransportError(f"refusing to signal process group {pgid}")
        rounds = max(1, int(grace / 0.1))
        script = (f"kill -s TERM -- -{pgid} 2>/dev/null; i=0; "
                  f"while kill -s 0 -- -{pgid} 2>/dev/null && [ $i -lt {rounds} ]; "
                  f"do sleep 0.1; i=$((i+1)); done; "
                  f"kill -s KILL -- -{pgid} 2>/dev/null; exit 0")
        channel = self.open_channel(remote_command(script, report_pgid=False))
        channel.shutdown_write()
        self._drain(channel, limit=1 << 16)
        channel.close()
        log.debug("remote process group stopped", guest=self.guest.name, pgid=pgid)

    # -- small commands ------------------------------------------------------------------

    def check_alive(self, last_traffic: float) -> float:
        """After ``keepalive`` s of silence, probe the peer; returns the new "last heard" time.

        A silent command is fine; a silent peer is not.

        :raises ConnectionLostError: the peer answered none of the probes.
        """
        if time.monotonic() - last_traffic <= self.keepalive:
            return last_traffic
        if not self.probe(self.keepalive * KEEPALIVE_COUNT_MAX):
            self.close()
            raise ConnectionLostError(f"{self.where}: connection lost (no answer to keepalives)")
        return time.monotonic()

    def _drain(self, channel: paramiko.Channel, *, limit: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        channel.settimeout(0.5)
        last_traffic = time.monotonic()
        while True:
            try:
                data = channel.recv(65536)
            except TimeoutError:
                if not self.active:
                    return b"".join(chunks)
                last_traffic = self.check_alive(last_traffic)
                continue
            except (OSError, EOFError):
                data = b""
            if not data:
                return b"".join(chunks)
            last_traffic = time.monotonic()
            size += len(data)
            if size <= limit:
                chunks.append(data)

    def check_output(self, script: str, *, stdin: bytes | None = None,
                     limit: int = 1 << 20, what: str | None = None) -> bytes:
        """Run a short script and return its output (stderr merged).

        :raises TransportError: it exited non-zero (the message quotes its output).
        :raises ConnectionLostError: the connection dropped.
        """
        channel = self.open_channel(remote_command(script, report_pgid=False))
        try:
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            output = self._drain(channel, limit=limit)
            status = self.exit_status(channel, wait=None)
        except (OSError, EOFError) as exc:
            raise ConnectionLostError(f"{self.where}: connection lost ({exc})") from None
        finally:
            channel.close()
        if status is None:
            raise ConnectionLostError(f"{self.where}: connection lost during {what or script}")
        if status != 0:
            text = output.decode("utf-8", "replace").strip()[-500:]
            raise TransportError(f"{self.where}: {what or script[:60]} failed "
                                 f"(exit status {status}){': ' + text if text else ''}")
        return output

    def write_file(self, path: str, data: bytes, *, mode: str = "644") -> None:
        """Write ``data`` to the guest's ``path`` atomically (temporary file + rename)."""
        tmp = f"{path}.tmp-fruix"
        q, qt = shlex.quote(path), shlex.quote(tmp)
        self.check_output(f"cat > {qt} && chmod {mode} {qt} && mv -f {qt} {q}", stdin=data,
                          what=f"writing {path}")

    def read_file(self, path: str, *, limit: int = 1 << 20) -> bytes:
        """The bytes of the guest's ``path`` (at most ``limit``)."""
        return self.check_output(f"cat {shlex.quote(path)}", limit=limit, what=f"reading {path}")

    def host_name(self) -> str:
        """The guest's host name (``uname -n``)."""
        return self.check_output("uname -n", what="uname -n").decode().strip()
