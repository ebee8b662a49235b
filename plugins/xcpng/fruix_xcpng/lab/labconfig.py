"""The lab's own config file (``fruix-xapi-lab --config lab.toml``).

::

    [lab]
    listen = "127.0.0.1"          # XML-RPC endpoint address
    port = 0                      # 0: a free port
    tls = false                   # HTTPS with a generated self-signed certificate
    workdir = "xapi-lab"          # keys, guest roots, snapshots (relative to this file)
    username_env = "FRUIX_XCPNG_USERNAME"   # the accepted login comes from the
    password_env = "FRUIX_XCPNG_PASSWORD"   # environment, never from this file
    session_ttl = 0               # seconds before sessions expire (0: never)
    events = true                 # false: event.from is unknown, clients must poll
    profile = "fast"              # "slow": agents report after 60 s, like FreeBSD's
    hosts = 1                     # pool hosts: 127.0.0.1 (master), 127.0.1.1, ... same port
    cert_style = "8.3"            # "8.2": RSA, DNS names only; "8.3": with the IP address
    api_style = "8.3"             # parameter shape of OTHER_OPERATION_IN_PROGRESS
    failed_login_delay = 5        # seconds, as XAPI
    conflict_wait = 7200          # seconds a conflicting operation waits server-side
    shutdown_limit = 1200         # seconds XAPI waits for a guest to shut down

    [[vms]]
    name = "fruix-build"
    uuid = ""                     # '' = generated
    address = ""                  # '' = 127.0.0.2, 127.0.0.3, ... in order
    ssh_port = 0                  # 0: a free port
    source = ""                   # source tree of the guest's source store ('' = sample base)
    power_state = "Halted"
    snapshots = ["clean"]
    ip_delay = -1                 # seconds until the agent reports (-1: the profile's,
                                  # 1 s fast, 60 s slow)
    agent = "modern"              # "modern", "old" (space-separated), "empty", "none"
    checkpoints = []              # snapshots with memory (revert to Suspended)
    ip_never = false              # faults
    clean_shutdown_hangs = false
    start_fails = ""
    ssh_never = false
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fruix_core.api import ConfigError, Key, read_section, read_toml

__all__ = ["LAB_SCHEMA", "PROFILES", "VM_SCHEMA", "LabConfig", "load_lab_config"]

#: profile -> the agent's delay when a VM does not set ``ip_delay``: "slow" is
#: FreeBSD's xe-guest-utilities, which reports once a minute.
PROFILES = {"fast": 1.0, "slow": 60.0}

LAB_SCHEMA: dict[str, Key] = {
    "listen": Key(str, "127.0.0.1", "XML-RPC endpoint address"),
    "port": Key(int, 0, "its port (0: a free one)"),
    "tls": Key(bool, False, "serve HTTPS with a self-signed certificate"),
    "workdir": Key(str, "xapi-lab", "keys, guest roots and snapshots"),
    "username_env": Key(str, "FRUIX_XCPNG_USERNAME", "environment variable with the user"),
    "password_env": Key(str, "FRUIX_XCPNG_PASSWORD", "environment variable with the password"),
    "session_ttl": Key((int, float), 0, "seconds before a session expires (0: never)"),
    "events": Key(bool, True, "answer event.from (false: clients must poll)"),
    "profile": Key(str, "fast", "timings: fast, or slow (agents report after 60 s)"),
    "hosts": Key(int, 1, "hosts in the pool (the first is the master)"),
    "cert_style": Key(str, "8.3", "certificate style: 8.2 (DNS names only) or 8.3"),
    "api_style": Key(str, "8.3", "OTHER_OPERATION_IN_PROGRESS parameters: 8.2 or 8.3"),
    "failed_login_delay": Key((int, float), 5, "seconds a failed login waits"),
    "conflict_wait": Key((int, float), 7200, "seconds a conflicting operation waits"),
    "shutdown_limit": Key((int, float), 1200, "seconds a clean shutdown may take"),
}

VM_SCHEMA: dict[str, Key] = {
    "name": Key(str, "", "name label"),
    "uuid": Key(str, "", "uuid ('' = generated)"),
    "address": Key(str, "", "loopback address the agent reports ('' = 127.0.0.N)"),
    "ssh_port": Key(int, 0, "sshd port (0: a free one)"),
    "source": Key(str, "", "source tree of the guest's source store ('' = sample base)"),
    "power_state": Key(str, "Halted", "initial power state"),
    "snapshots": Key(list, ["clean"], "snapshots taken at start, in order"),
    "ip_delay": Key((int, float), -1, "seconds from start to the published address "
                    "(-1: the profile's)"),
    "ip_never": Key(bool, False, "fault: only link-local addresses are ever reported"),
    "clean_shutdown_hangs": Key(bool, False, "fault: clean shutdown never completes"),
    "start_fails": Key(str, "", "fault: VM.start fails with this error code"),
    "ssh_never": Key(bool, False, "fault: the guest's sshd never starts"),
    "agent": Key(str, "modern", "guest agent: modern, old, empty or none"),
    "checkpoints": Key(list, [], "snapshots with memory, taken at start"),
}


@dataclass(frozen=True, slots=True)
class LabConfig:
    lab: dict[str, Any]
    vms: list[dict[str, Any]] = field(default_factory=list)
    file: str | None = None


def load_lab_config(path: str | os.PathLike[str] | None) -> LabConfig:
    """Read and validate a lab config; no file gives one VM named ``fruix-build``.

    :raises ConfigError: naming the file and the key.
    """
    data: dict[str, Any] = {}
    file: str | None = None
    anchor = Path.cwd()
    if path is not None:
        file = str(path)
        data = read_toml(path)
        anchor = Path(path).resolve().parent
    for table in data:
        if table not in ("lab", "vms"):
            raise ConfigError("unknown table (known: lab, vms)", file=file, key=table)
    lab = read_section(data.get("lab", {}), LAB_SCHEMA, file=file, prefix="lab")
    lab["workdir"] = str(anchor / os.path.expanduser(lab["workdir"]))
    if not 1 <= lab["hosts"] <= 16:
        raise ConfigError("must be 1 to 16", file=file, key="lab.hosts")
    if lab["profile"] not in PROFILES:
        raise ConfigError("must be \"fast\" or \"slow\"", file=file, key="lab.profile")
    for key in ("cert_style", "api_style"):
        if lab[key] not in ("8.2", "8.3"):
            raise ConfigError("must be \"8.2\" or \"8.3\"", file=file, key=f"lab.{key}")
    raw_vms = data.get("vms", [{"name": "fruix-build"}])
    if not isinstance(raw_vms, list) or not raw_vms:
        raise ConfigError("expected one or more [[vms]] tables", file=file, key="vms")
    vms = []
    names: set[str] = set()
    for index, raw in enumerate(raw_vms):
        prefix = f"vms[{index}]"
        vm = read_section(raw, VM_SCHEMA, file=file, prefix=prefix)
        if not vm["name"] or vm["name"] in names or "/" in vm["name"]:
            raise ConfigError("needs a unique name without '/'", file=file, key=f"{prefix}.name")
        names.add(vm["name"])
        if vm["power_state"] not in ("Halted", "Running", "Paused", "Suspended"):
            raise ConfigError("must be Halted, Running, Paused or Suspended", file=file,
                              key=f"{prefix}.power_state")
        for key in ("snapshots", "checkpoints"):
            if not all(isinstance(s, str) and s for s in vm[key]):
                raise ConfigError("must be a list of names", file=file, key=f"{prefix}.{key}")
        if vm["agent"] not in ("modern", "old", "empty", "none"):
            raise ConfigError("must be modern, old, empty or none", file=file,
                              key=f"{prefix}.agent")
        if vm["ip_delay"] < 0:
            vm["ip_delay"] = PROFILES[lab["profile"]]
        if vm["source"]:
            vm["source"] = str(anchor / os.path.expanduser(vm["source"]))
        vms.append(vm)
    return LabConfig(lab=lab, vms=vms, file=file)


def lab_users(config: LabConfig, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The login the lab accepts, from the environment variables the config names."""
    environ = os.environ if environ is None else environ
    user = environ.get(config.lab["username_env"], "")
    password = environ.get(config.lab["password_env"])
    if not user or password is None:
        raise ConfigError(f"set {config.lab['username_env']} and {config.lab['password_env']} "
                          "to the login the lab should accept", file=config.file,
                          key="lab.username_env")
    return {user: password}
