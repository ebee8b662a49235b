"""The ``ssh`` guest provider: a static host named in the config.

It boots nothing and shuts nothing down; it turns ``[guests.ssh]`` into a
:class:`~fruix_core.model.Guest` that in-guest executors connect to::

    [guests.ssh]
    host = "builder.example.org"      # required
    port = 22
    user = "root"
    identity_file = "~/.ssh/id_ed25519"
    known_hosts = "~/.ssh/known_hosts" # or pin the key:
    host_key = "ssh-ed25519 AAAA..."
    trust_on_first_use = false         # explicit opt-in only; logs a warning
    system_root = "/"                  # tests: a directory laid out like a guest
    connect_timeout = 15

Relative paths are relative to the config file's directory. Nothing is
contacted here: connection problems (unreachable host, refused key, host key
mismatch) surface when the executor connects, each as one clear error.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from fruix_core.config import Key, read_section
from fruix_core.errors import ConfigError
from fruix_core.hookspecs import PLUGIN_API_VERSION, hookimpl
from fruix_core.model import Guest, GuestRequest

__all__ = ["SCHEMA", "SSHGuestProvider", "guest_from_settings"]

log = structlog.get_logger(__name__)

PROVIDER = "ssh"

#: The keys of ``[guests.ssh]``; docs/operator/ssh.rst documents each of them.
SCHEMA: dict[str, Key] = {
    "host": Key(str, "", "host name or address of the guest (required)"),
    "port": Key(int, 22, "SSH port"),
    "user": Key(str, "root", "user to log in as"),
    "identity_file": Key(str, "", "private key file ('' = agent and default keys)"),
    "known_hosts": Key(str, "", "known-hosts file ('' = ~/.ssh/known_hosts)"),
    "host_key": Key(str, "", "pinned host key 'ssh-ed25519 AAAA...' (wins over known_hosts)"),
    "trust_on_first_use": Key(bool, False, "accept and remember an unknown host key (warns)"),
    "system_root": Key(str, "/", "the guest's system root ('/' in production)"),
    "connect_timeout": Key((int, float), 15, "seconds for connect, banner and auth each"),
    "name": Key(str, "", "guest name used in logs ('' = the host)"),
}

_KEY_LINE = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*\Z")


def _resolve(value: str, config_file: str | None) -> str:
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and config_file:
        path = Path(config_file).resolve().parent / path
    return str(path)


def guest_from_settings(settings: Mapping[str, Any], *, config_file: str | None = None,
                        provider: str = PROVIDER) -> Guest:
    """Validate ``[guests.ssh]`` and describe the guest.

    :raises ConfigError: naming the file and the key.
    """
    prefix = f"guests.{provider}"
    values = read_section(settings, SCHEMA, file=config_file, prefix=prefix)

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(message, file=config_file, key=f"{prefix}.{key}")

    host = values["host"].strip()
    if not host:
        raise fail("host", "must name the guest's host (name or address)")
    if any(c.isspace() for c in host) or host.startswith("-"):
        raise fail("host", f"not a host name: {host!r}")
    if not 1 <= values["port"] <= 65535:
        raise fail("port", "must be between 1 and 65535")
    if not values["user"] or any(c.isspace() for c in values["user"]):
        raise fail("user", "must be a user name")
    if values["connect_timeout"] <= 0:
        raise fail("connect_timeout", "must be more than 0 seconds")
    root = values["system_root"]
    if root != "/":
        root = root.rstrip("/")
    if not root.startswith("/") or posixpath.normpath(root) != root:
        raise fail("system_root", "must be an absolute, normalised path")
    host_key = " ".join(values["host_key"].split()[:2])
    if host_key and not _KEY_LINE.match(host_key):
        raise fail("host_key", "must be '<type> <base64>' as in known_hosts, "
                               "e.g. 'ssh-ed25519 AAAA...'")
    identity = _resolve(values["identity_file"], config_file) if values["identity_file"] else None
    if identity is not None and not os.path.isfile(identity):
        raise fail("identity_file", f"file not found: {identity}")
    known_hosts = _resolve(values["known_hosts"], config_file) if values["known_hosts"] else None
    if known_hosts is not None and not host_key and not values["trust_on_first_use"] \
            and not os.path.isfile(known_hosts):
        raise fail("known_hosts", f"file not found: {known_hosts}")
    return Guest(
        name=values["name"] or host, provider=provider, host=host, port=values["port"],
        user=values["user"], identity_file=identity, known_hosts=known_hosts,
        host_key=host_key or None, trust_on_first_use=values["trust_on_first_use"],
        system_root=root, connect_timeout=float(values["connect_timeout"]),
    )


class SSHGuestProvider:
    """A static SSH host described in the config (table guests.ssh)."""

    name = PROVIDER
    fruix_plugin_api = PLUGIN_API_VERSION
    fruix_settings = SCHEMA

    @staticmethod
    def fruix_check_settings(table: Mapping[str, Any], *, file: str | None) -> None:
        """Refuse a ``[guests.ssh]`` table that cannot describe a guest."""
        guest_from_settings(table, config_file=file)

    @hookimpl
    def fruix_acquire_guest(self, request: GuestRequest) -> Guest | None:
        if request.provider != self.name:
            return None
        guest = guest_from_settings(request.settings, config_file=request.config_file)
        if guest.trust_on_first_use and not guest.host_key:
            log.warning("trust_on_first_use is on: an unknown host key will be accepted",
                        guest=guest.name)
        log.debug("guest described", guest=guest.name, host=guest.host, port=guest.port,
                  system_root=guest.system_root)
        return guest

    @hookimpl
    def fruix_release_guest(self, guest: Guest, outcome: str) -> None:
        if guest.provider != self.name:
            return
        log.debug("guest released (static host, nothing to do)", guest=guest.name,
                  outcome=outcome)
