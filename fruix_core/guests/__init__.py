"""Guest providers shipped with the core, and what in-guest executors share about guests."""

from __future__ import annotations

from fruix_core.errors import UsageError
from fruix_core.model import BuildRequest, Guest

__all__ = ["require_guest"]


def require_guest(request: BuildRequest, executor: str) -> Guest:
    """The run's guest, or a usage error saying how to name a guest provider."""
    if request.guest is None:
        raise UsageError(f"executor '{executor}' builds in a guest: name a guest provider "
                         "(--guest ssh, or [build] guest in the config)")
    return request.guest
