"""``fruix config check``: the validation a run does, and the configuration it resolves to."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from fruix_core.cli.jsonout import emit
from fruix_core.config import Config, load_config
from fruix_core.errors import ExitCode
from fruix_core.plugins import check_settings

__all__ = ["check_command", "resolved_configuration"]


def resolved_configuration(config: Config) -> dict[str, Any]:
    """Every table of ``config`` with its effective values (defaults filled in).

    Runs exactly the validation ``fruix native-build run`` runs before it
    creates a result root: the core's tables, then every plugin table
    against its plugin's schema.
    """
    plugin_tables = check_settings(config)
    return {
        "build": {
            "executor": config.executor, "guest": config.guest, "jobs": config.jobs,
            "source": str(config.source) if config.source is not None else "",
            "make": config.make, "phase_timeout": config.phase_timeout or 0,
            "promote": config.promote, "observers": list(config.observers),
        },
        "base": {"name": config.base.name, "version": config.base.version,
                 "arch": config.base.arch, "kernconf": config.base.kernconf},
        "paths": {"base": str(config.base_dir), "store": str(config.store),
                  "results": str(config.results), "build_root": str(config.build_root),
                  "min_free": "auto" if config.min_free is None else config.min_free},
        **plugin_tables,
    }


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a TOML basic string


def _lines(name: str, table: Mapping[str, Any]) -> list[str]:
    out = [f"[{name}]"]
    out += [f"{key} = {_toml(value)}" for key, value in table.items()]
    return [*out, ""]


def check_command(args: argparse.Namespace) -> int:
    """Validate the configuration; print it resolved (TOML, or JSON with ``--json``)."""
    config = load_config(args.config)
    resolved = resolved_configuration(config)
    if args.json:
        emit("fruix.config-check/1",
             {"file": config.file, "valid": True, "configuration": resolved})
        return int(ExitCode.OK)
    print(f"# {config.file or 'no config file: the defaults'}: valid")
    lines: list[str] = []
    for name in ("build", "base", "paths"):
        lines += _lines(name, resolved[name])
    for table in ("executors", "guests", "observers"):
        for plugin, values in resolved[table].items():
            lines += _lines(f"{table}.{json.dumps(plugin) if '.' in plugin else plugin}",
                            values)
    print("\n".join(lines).rstrip())
    return int(ExitCode.OK)
