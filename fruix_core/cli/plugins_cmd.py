"""``fruix executors list``."""

from __future__ import annotations

import json

from fruix_core.errors import ExitCode
from fruix_core.plugins import discover

__all__ = ["list_command"]


def list_command(*, as_json: bool) -> int:
    """Print installed plugins; broken or invalid ones are reported with why, not fatal."""
    infos = discover()
    if as_json:
        print(json.dumps([info.as_dict() for info in infos], indent=2))
        return int(ExitCode.OK)
    if not infos:
        print("no executors or guest providers installed")
        return int(ExitCode.OK)
    width = max(len(i.name) for i in infos)
    for info in infos:
        if info.error:
            print(f"{info.name:<{width}}  {info.kind:<14}  BROKEN: {info.error}")
        else:
            print(f"{info.name:<{width}}  {info.kind:<14}  {info.distribution} {info.version}"
                  f"  (plugin API {info.api_version})  {info.description}")
    return int(ExitCode.OK)
