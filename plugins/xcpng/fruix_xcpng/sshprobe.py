"""Wait until the guest's sshd answers with the pinned host key.

Two steps, each under one deadline: a TCP connection to the SSH port, then an
SSH key exchange (paramiko, no authentication) whose server key must be the
pinned one. A guest that answers with another key is not retried: a wrong key
is an operator problem (or an attack), never a matter of patience.
"""

from __future__ import annotations

import socket
import time

import structlog

from fruix_core.api import Cancelled, CancelToken, GuestError, HostKeyError

__all__ = ["wait_for_ssh"]

log = structlog.get_logger(__name__)

_RSA_ALGORITHMS = ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")


def _fingerprint(blob: bytes) -> str:
    import base64
    import hashlib

    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _handshake(sock: socket.socket, key_type: str, timeout: float) -> tuple[str, bytes]:
    """Run the key exchange on ``sock``; return the server key's type and blob."""
    import paramiko

    transport = paramiko.Transport(sock)
    try:
        # Ask for the pinned key's type first, so a server holding several keys
        # shows the one we pinned.
        options = transport.get_security_options()
        wanted = _RSA_ALGORITHMS if key_type == "ssh-rsa" else (key_type,)
        offered = tuple(options.key_types)
        options.key_types = tuple(a for a in wanted if a in offered) + tuple(
            a for a in offered if a not in wanted)
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return key.get_name(), key.asbytes()
    finally:
        transport.close()


def wait_for_ssh(host: str, port: int, *, key_type: str, key_blob: bytes, timeout: float,
                 cancel: CancelToken | None = None, interval: float = 0.5) -> None:
    """Block until ``host:port`` completes an SSH key exchange with the pinned key.

    :raises HostKeyError: the server presented another key.
    :raises GuestError: nothing answered (TCP or SSH) within ``timeout`` seconds.
    :raises Cancelled: ``cancel`` was set meanwhile.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        if cancel is not None and cancel.cancelled:
            raise Cancelled(f"interrupted while waiting for sshd on {host}:{port}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise GuestError(f"sshd on {host}:{port} did not answer within {timeout:g} s "
                             f"(last: {last}); is sshd enabled in the guest and the port open?")
        try:
            sock = socket.create_connection((host, port), timeout=min(remaining, 10.0))
        except OSError as exc:
            last = f"TCP: {exc.strerror or exc}"
        else:
            try:
                seen_type, seen_blob = _handshake(sock, key_type, min(max(remaining, 1.0), 30.0))
            except Exception as exc:  # paramiko raises its own tree and socket errors
                last = f"SSH: {type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if seen_blob != key_blob:
                    raise HostKeyError(
                        f"{host}:{port} presented host key {seen_type} {_fingerprint(seen_blob)}"
                        f", pinned is {key_type} {_fingerprint(key_blob)}; refusing the guest")
                log.debug("sshd answered with the pinned key", host=host, port=port)
                return
            finally:
                sock.close()
        log.debug("sshd not ready", host=host, port=port, last=last)
        wait = min(interval, max(deadline - time.monotonic(), 0))
        if cancel is not None:
            cancel.wait(wait)
        else:
            time.sleep(wait)
