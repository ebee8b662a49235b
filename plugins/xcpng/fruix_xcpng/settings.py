"""The ``[guests.xcpng]`` config table: schema, validation and credentials.

Every key has a documented default except the three that identify the
machine: ``url``, the VM (``vm_uuid`` or ``vm_name``) and ``snapshot``, plus the
pinned SSH host key (``host_key`` or ``host_key_file``). Credentials never live
in this table: they come from environment variables or from a private file, and
are held in a :class:`Secret` whose ``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fruix_core.api import ConfigError, Key, read_section

__all__ = [
    "KEEP_POLICIES",
    "SCHEMA",
    "Credentials",
    "Secret",
    "XcpngSettings",
    "load_credentials",
    "parse_settings",
]

PREFIX = "guests.xcpng"
KEEP_POLICIES = ("never", "on-failure", "always")

#: The keys of ``[guests.xcpng]``; docs/operator/xcpng.rst documents each one.
SCHEMA: dict[str, Key] = {
    "url": Key(str, "", "a pool host's URL, https://HOST (the master is followed; http:// "
                        "only for a lab)"),
    "vm_uuid": Key(str, "", "the build VM by uuid"),
    "vm_name": Key(str, "", "the build VM by name label (must be unique)"),
    "snapshot": Key(str, "", "snapshot (name label or uuid) reverted to after each build"),
    "username_env": Key(str, "FRUIX_XCPNG_USERNAME", "environment variable with the user"),
    "password_env": Key(str, "FRUIX_XCPNG_PASSWORD", "environment variable with the password"),
    "credentials_file": Key(str, "", "private TOML file with username/password (mode 0600)"),
    "ca_file": Key(str, "", "CA bundle (or the hosts' certificates) the pool's certificates "
                            "verify against"),
    "pinned_cert_sha256": Key((str, list), "", "SHA-256 fingerprint(s) of the pool hosts' "
                              "certificates, one per host"),
    "tls_server_names": Key((str, list), "", "DNS names a certificate may carry when a host is "
                            "reached by IP address (with ca_file)"),
    "insecure": Key(bool, False, "skip TLS verification (never by default)"),
    "timeout": Key((int, float), 30, "socket timeout of every XenAPI call, seconds"),
    "originator": Key(str, "fruix-native-build", "originator reported at login"),
    "running": Key(str, "refuse", "a VM found Running: 'use' it or 'refuse'"),
    "paused": Key(str, "refuse", "a VM found Paused: 'unpause' it or 'refuse'"),
    "suspended": Key(str, "refuse", "a VM found Suspended: 'resume' it or 'refuse'"),
    "ip_timeout": Key((int, float), 300, "seconds to wait for the guest agent's address"),
    "address": Key(str, "", "the guest's address, for guests without an agent "
                            "('' = ask the agent)"),
    "ssh_timeout": Key((int, float), 120, "seconds to wait for sshd with the pinned key"),
    "shutdown_timeout": Key((int, float), 120, "seconds a clean shutdown may take"),
    "poll_interval": Key((int, float), 2, "seconds between polls when events are unavailable"),
    "device": Key((str, int), "", "preferred network device number ('' = any)"),
    "keep": Key(str, "never", "leave the VM running: 'never', 'on-failure' or 'always'"),
    "ssh_port": Key(int, 22, "sshd port in the guest"),
    "ssh_user": Key(str, "root", "user the executor logs in as"),
    "identity_file": Key(str, "", "private key for the guest ('' = agent/default keys)"),
    "host_key": Key(str, "", "the guest's pinned host key, 'ssh-ed25519 AAAA...'"),
    "host_key_file": Key(str, "", "file holding the pinned host key (a .pub file)"),
    "connect_timeout": Key((int, float), 15, "SSH connect timeout handed to the executor"),
    "system_root": Key(str, "/", "the guest's system root ('/' in production)"),
}


class Secret:
    """A credential: compares and logs as ``***``, reveals only on request."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The pool login; both parts are secrets (the user name narrows an attack too)."""

    username: Secret
    password: Secret

    def scrub(self, text: str) -> str:
        """``text`` with every credential replaced by ``***``."""
        for secret in (self.password, self.username):
            value = secret.reveal()
            if value:
                text = text.replace(value, "***")
        return text


@dataclass(frozen=True, slots=True)
class XcpngSettings:
    """The validated ``[guests.xcpng]`` table."""

    url: str
    vm_uuid: str
    vm_name: str
    snapshot: str
    username_env: str
    password_env: str
    credentials_file: str
    ca_file: str
    pinned_cert_sha256: tuple[str, ...]
    tls_server_names: tuple[str, ...]
    insecure: bool
    timeout: float
    originator: str
    running: str
    paused: str
    suspended: str
    ip_timeout: float
    address: str
    ssh_timeout: float
    shutdown_timeout: float
    poll_interval: float
    device: str
    keep: str
    ssh_port: int
    ssh_user: str
    identity_file: str
    host_key: str
    connect_timeout: float
    system_root: str
    file: str | None = None

    @property
    def vm_label(self) -> str:
        """How the VM is named in messages."""
        return f"uuid {self.vm_uuid}" if self.vm_uuid else f"name '{self.vm_name}'"

    @property
    def host_key_type(self) -> str:
        return self.host_key.split()[0]

    @property
    def host_key_blob(self) -> bytes:
        return base64.b64decode(self.host_key.split()[1])


def _choice(values: dict[str, Any], name: str, allowed: tuple[str, ...], file: str | None) -> None:
    if values[name] not in allowed:
        listing = ", ".join(f"'{a}'" for a in allowed)
        raise ConfigError(f"must be one of {listing}", file=file, key=f"{PREFIX}.{name}")


def _positive(values: dict[str, Any], name: str, file: str | None) -> float:
    value = float(values[name])
    if value <= 0:
        raise ConfigError("must be a positive number of seconds", file=file, key=f"{PREFIX}.{name}")
    return value


def _resolve(value: str, file: str | None) -> str:
    if not value:
        return ""
    path = Path(os.path.expanduser(value))
    if not path.is_absolute() and file is not None:
        path = Path(file).resolve().parent / path
    return str(path)


def parse_host_key(text: str, *, file: str | None, key: str) -> str:
    """Normalise a pinned host key to ``"TYPE BASE64"``; refuse anything else."""
    fields = text.split()
    # A known_hosts line starts with host patterns; a .pub line ends with a comment.
    for index, field_ in enumerate(fields[:-1]):
        if field_.startswith(("ssh-", "ecdsa-", "sk-")):
            fields = fields[index:]
            break
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise ConfigError("expected a public key line such as 'ssh-ed25519 AAAA...'",
                          file=file, key=key)
    try:
        blob = base64.b64decode(fields[1], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("the key is not valid base64", file=file, key=key) from None
    # The blob starts with its own type name: catch a type/blob mix-up early.
    if len(blob) < 4 or blob[4:4 + int.from_bytes(blob[:4], "big")] != fields[0].encode():
        raise ConfigError(f"the key data is not a {fields[0]} key", file=file, key=key)
    return f"{fields[0]} {fields[1]}"


def _pins(value: str | list[Any], file: str | None) -> tuple[str, ...]:
    key = f"{PREFIX}.pinned_cert_sha256"
    items = [value] if isinstance(value, str) else value
    pins = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError("must be a string or a list of strings", file=file, key=key)
        pin = item.replace(":", "").strip().lower()
        if pin.startswith("sha256"):
            pin = pin[6:]
        if not pin:
            continue
        if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
            raise ConfigError("must be 64 hex digits (colons allowed)", file=file, key=key)
        pins.append(pin)
    return tuple(dict.fromkeys(pins))


def _names(value: str | list[Any], file: str | None) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    names = []
    for item in items:
        if not isinstance(item, str) or (item.strip() and not _host_like(item.strip())):
            raise ConfigError("must be a DNS name or a list of them", file=file,
                              key=f"{PREFIX}.tls_server_names")
        if item.strip():
            names.append(item.strip().lower())
    return tuple(names)


def _host_like(text: str) -> bool:
    import ipaddress
    import re

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9-]{1,63})*\.?",
                            text) is not None
    return True


def parse_settings(section: Mapping[str, Any], *, file: str | None = None) -> XcpngSettings:
    """Validate ``[guests.xcpng]``.

    :raises ConfigError: naming the file and the ``guests.xcpng.KEY``; a
        message never repeats a value that could be a credential.
    """
    values = read_section(section, SCHEMA, file=file, prefix=PREFIX)

    url = values["url"].strip()
    if not url:
        raise ConfigError("must name the pool master, e.g. https://xcp-master.example",
                          file=file, key=f"{PREFIX}.url")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # Never echo the URL back: it holds what looks like a credential.
        raise ConfigError("must not carry user:password; use username_env/password_env "
                          "or credentials_file", file=file, key=f"{PREFIX}.url")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("must be an http:// or https:// URL with a host",
                          file=file, key=f"{PREFIX}.url")

    if bool(values["vm_uuid"]) == bool(values["vm_name"]):
        raise ConfigError("set exactly one of vm_uuid and vm_name", file=file,
                          key=f"{PREFIX}.vm_uuid" if values["vm_uuid"] else f"{PREFIX}.vm_name")
    if not values["snapshot"]:
        raise ConfigError("must name the snapshot the VM is reverted to after each build",
                          file=file, key=f"{PREFIX}.snapshot")

    _choice(values, "running", ("use", "refuse"), file)
    _choice(values, "paused", ("unpause", "refuse"), file)
    _choice(values, "suspended", ("resume", "refuse"), file)
    _choice(values, "keep", KEEP_POLICIES, file)
    timeouts = {name: _positive(values, name, file) for name in
                ("timeout", "ip_timeout", "ssh_timeout", "shutdown_timeout", "poll_interval",
                 "connect_timeout")}

    pins = _pins(values["pinned_cert_sha256"], file)
    pin = bool(pins)
    server_names = _names(values["tls_server_names"], file)
    ca_file = _resolve(values["ca_file"], file)
    if ca_file and not os.path.isfile(ca_file):
        raise ConfigError("file not found", file=file, key=f"{PREFIX}.ca_file")
    if values["insecure"] and (pin or ca_file):
        raise ConfigError("insecure cannot be combined with ca_file or pinned_cert_sha256",
                          file=file, key=f"{PREFIX}.insecure")
    if parts.scheme == "http" and (pin or ca_file):
        raise ConfigError("TLS settings need an https:// URL", file=file, key=f"{PREFIX}.url")
    if server_names and not ca_file:
        raise ConfigError("only applies with ca_file", file=file,
                          key=f"{PREFIX}.tls_server_names")
    address = values["address"].strip()
    if address and not _host_like(address):
        raise ConfigError("must be an IP address or a host name", file=file,
                          key=f"{PREFIX}.address")

    if not 0 < values["ssh_port"] < 65536:
        raise ConfigError("must be a TCP port", file=file, key=f"{PREFIX}.ssh_port")
    if values["host_key"] and values["host_key_file"]:
        raise ConfigError("set host_key or host_key_file, not both", file=file,
                          key=f"{PREFIX}.host_key_file")
    if values["host_key_file"]:
        path = _resolve(values["host_key_file"], file)
        try:
            raw = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", file=file,
                              key=f"{PREFIX}.host_key_file") from None
        host_key = parse_host_key(raw, file=file, key=f"{PREFIX}.host_key_file")
    elif values["host_key"]:
        host_key = parse_host_key(values["host_key"], file=file, key=f"{PREFIX}.host_key")
    else:
        raise ConfigError("the guest's SSH host key must be pinned (host_key or host_key_file)",
                          file=file, key=f"{PREFIX}.host_key")

    device = str(values["device"]).strip()
    if device.startswith("eth"):
        device = device[3:]
    if device and not device.isdigit():
        raise ConfigError("must be a device number such as 0 (or eth0)", file=file,
                          key=f"{PREFIX}.device")
    if not values["originator"].strip():
        raise ConfigError("must not be empty", file=file, key=f"{PREFIX}.originator")

    return XcpngSettings(
        url=url,
        vm_uuid=values["vm_uuid"],
        vm_name=values["vm_name"],
        snapshot=values["snapshot"],
        username_env=values["username_env"],
        password_env=values["password_env"],
        credentials_file=_resolve(values["credentials_file"], file),
        ca_file=ca_file,
        pinned_cert_sha256=pins,
        tls_server_names=server_names,
        address=address,
        insecure=values["insecure"],
        originator=values["originator"],
        running=values["running"],
        paused=values["paused"],
        suspended=values["suspended"],
        device=device,
        keep=values["keep"],
        ssh_port=values["ssh_port"],
        ssh_user=values["ssh_user"],
        identity_file=_resolve(values["identity_file"], file),
        host_key=host_key,
        system_root=values["system_root"] or "/",
        file=file,
        **timeouts,
    )


def load_credentials(settings: XcpngSettings,
                     environ: Mapping[str, str] | None = None) -> Credentials:
    """Read the pool login from ``credentials_file``, else from the environment.

    :raises ConfigError: naming where the credentials were expected, never
        what they are.
    """
    environ = os.environ if environ is None else environ
    file = settings.file
    if settings.credentials_file:
        path = settings.credentials_file
        key = f"{PREFIX}.credentials_file"
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", file=file, key=key) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path} is readable by others; chmod 600 it", file=file, key=key)
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except tomllib.TOMLDecodeError:
            # The decoder's message may quote a line of the file: keep it out.
            raise ConfigError(f"{path} is not valid TOML", file=file, key=key) from None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}", file=file, key=key) from None
        user, password = data.get("username"), data.get("password")
        if not isinstance(user, str) or not user or not isinstance(password, str):
            raise ConfigError(f"{path} must hold string keys 'username' and 'password'",
                              file=file, key=key)
        return Credentials(Secret(user), Secret(password))
    user = environ.get(settings.username_env, "")
    password = environ.get(settings.password_env)
    if not user:
        raise ConfigError(f"environment variable {settings.username_env} is not set",
                          file=file, key=f"{PREFIX}.username_env")
    if password is None:
        raise ConfigError(f"environment variable {settings.password_env} is not set",
                          file=file, key=f"{PREFIX}.password_env")
    return Credentials(Secret(user), Secret(password))
