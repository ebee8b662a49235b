"""``fruix-xapi-lab``: run the local XAPI lab until Ctrl-C / SIGTERM.

Prints the endpoint's URL and each VM (uuid, address, SSH port, host key to
pin, client key), plus a ``[guests.xcpng]`` table that reaches the first VM,
writes a complete ``fruix.toml`` for that VM into the work directory, then
serves. ``fruix-xapi-lab --print-config`` (same ``--config`` / ``--workdir``)
prints that file from another terminal while the lab serves. The login it
accepts comes from the environment (``FRUIX_XCPNG_USERNAME`` /
``FRUIX_XCPNG_PASSWORD`` unless the config names other variables), the same
variables the provider reads by default.

Exit codes: 0 after a clean stop, 2 for a bad config or usage, 3 when the lab
cannot start (address in use, sshd missing, ...) or, for ``--print-config``,
no lab serves from that work directory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fruix_core.api import ConfigError

__all__ = ["build_lab", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fruix-xapi-lab",
        description="Local XAPI lab: XenAPI over HTTP(S) with real sshd guests, to test the "
                    "xcpng guest provider and rehearse a [guests.xcpng] config.")
    parser.add_argument("--config", metavar="FILE", help="lab config (TOML); default: one VM "
                        "named fruix-build")
    parser.add_argument("--listen", metavar="ADDR", help="endpoint address (overrides config)")
    parser.add_argument("--port", type=int, metavar="N", help="endpoint port (0: free)")
    parser.add_argument("--tls", action="store_true", default=None,
                        help="serve HTTPS with a generated self-signed certificate")
    parser.add_argument("--workdir", metavar="DIR", help="keys, guest roots and snapshots")
    parser.add_argument("--json", action="store_true", help="print the description as one "
                        "JSON document")
    parser.add_argument("--print-config", action="store_true",
                        help="print the complete fruix.toml of the lab serving from this work "
                        "directory, and exit")
    parser.add_argument("--log-format", choices=("console", "json"), default="console",
                        help="log lines on stderr: console or JSON lines")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning"),
                        help="log level (debug shows every call)")
    return parser


def build_lab(args: argparse.Namespace) -> Any:
    """The lab described by the config file and the command-line overrides (not started)."""
    from fruix_xcpng.lab import LabFaults, VmFaults, XapiLab
    from fruix_xcpng.lab.labconfig import lab_users, load_lab_config

    config = load_lab_config(args.config)
    lab_cfg = config.lab
    faults = LabFaults(session_ttl=float(lab_cfg["session_ttl"]),
                       events_unsupported=not lab_cfg["events"],
                       failed_login_delay=float(lab_cfg["failed_login_delay"]),
                       conflict_wait=float(lab_cfg["conflict_wait"]),
                       shutdown_limit=float(lab_cfg["shutdown_limit"]),
                       api_style=lab_cfg["api_style"])
    lab = XapiLab(Path(args.workdir or lab_cfg["workdir"]), users=lab_users(config),
                  host=args.listen or lab_cfg["listen"],
                  port=args.port if args.port is not None else lab_cfg["port"],
                  tls=args.tls if args.tls is not None else lab_cfg["tls"], faults=faults,
                  hosts=lab_cfg["hosts"], cert_style=lab_cfg["cert_style"])
    for vm in config.vms:
        lab.add_vm(vm["name"], uuid=vm["uuid"] or None, address=vm["address"] or None,
                   ssh_port=vm["ssh_port"] or None,
                   source=Path(vm["source"]) if vm["source"] else None,
                   power_state=vm["power_state"], snapshots=vm["snapshots"],
                   checkpoints=vm["checkpoints"], ip_delay=float(vm["ip_delay"]),
                   agent=vm["agent"],
                   faults=VmFaults(ip_never=vm["ip_never"],
                                   clean_shutdown_hangs=vm["clean_shutdown_hangs"],
                                   start_fails=vm["start_fails"], ssh_never=vm["ssh_never"]))
    return lab


def _toml_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() \
        if isinstance(value, bool) else str(value)


def _human(description: dict[str, Any], settings: dict[str, Any]) -> str:
    lines = [f"XAPI lab listening on {description['url']}"]
    for host in description["hosts"]:
        role = "master" if host["master"] else "member"
        lines.append(f"  host {host['name']}  {host['url']}  ({role})")
        if "certificate" in host:
            cert = host["certificate"]
            lines.append(f"    certificate {cert['file']}  sha256 {cert['sha256']}")
    lines.append("  login: the user and password given in the environment")
    for vm in description["vms"]:
        lines.append(f"VM {vm['name']}  uuid {vm['uuid']}  {vm['power_state']}")
        lines.append(f"  address {vm['address']}  ssh port {vm['ssh_port']}  snapshots "
                     f"{', '.join(vm['snapshots']) or 'none'}")
        if "host_key" in vm:
            lines.append(f"  host key {vm['host_key']}")
            lines.append(f"  identity file {vm['identity_file']}")
        lines.append(f"  system root {vm['system_root']}")
    lines.append("")
    lines.append(f"# [guests.xcpng] for VM {description['vms'][0]['name']}:")
    lines.append("[guests.xcpng]")
    lines.extend(f"{key} = {_toml_value(value)}" for key, value in settings.items())
    lines.append("")
    lines.append(f"A complete fruix.toml for VM {description['vms'][0]['name']}: "
                 f"{description['fruix_config']}")
    lines.append("  (or: fruix-xapi-lab --print-config with the same --config / --workdir)")
    lines.append("")
    lines.append("Serving; Ctrl-C or SIGTERM stops the lab and every guest.")
    return "\n".join(lines)


CONFIG_NAME = "fruix.toml"


def _print_config(args: argparse.Namespace) -> int:
    from fruix_xcpng.lab.labconfig import load_lab_config

    try:
        workdir = Path(args.workdir or load_lab_config(args.config).lab["workdir"])
    except ConfigError as exc:
        print(f"fruix-xapi-lab: {exc}", file=sys.stderr)
        return 2
    path = workdir.resolve() / CONFIG_NAME
    try:
        sys.stdout.write(path.read_text(encoding="utf-8"))
    except OSError:
        print(f"fruix-xapi-lab: no lab serves from {workdir} ({path} is missing); start "
              "fruix-xapi-lab with the same --config / --workdir first", file=sys.stderr)
        return 3
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fruix-xapi-lab``."""
    from fruix_core.api import configure_logging

    args = _parser().parse_args(argv)
    if args.print_config:
        return _print_config(args)
    configure_logging(args.log_format, args.log_level)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    lab = None
    try:
        try:
            lab = build_lab(args)
            lab.start()
        except ConfigError as exc:
            print(f"fruix-xapi-lab: {exc}", file=sys.stderr)
            return 2
        except (OSError, RuntimeError, ValueError) as exc:
            print(f"fruix-xapi-lab: cannot start the lab: {exc}", file=sys.stderr)
            return 3
        description = lab.describe()
        first = description["vms"][0]["name"]
        settings = lab.provider_settings(first)
        written = lab.workdir / CONFIG_NAME
        written.write_text(lab.fruix_config(first), encoding="utf-8")
        description["fruix_config"] = str(written)
        if args.json:
            print(json.dumps({**description, "guests_xcpng": settings}), flush=True)
        else:
            print(_human(description, settings), flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        if lab is not None:
            lab.stop()
            (lab.workdir / CONFIG_NAME).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
