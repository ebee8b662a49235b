"""Guest providers shipped with the core, and what in-guest executors share about guests."""

from __future__ import annotations

from fruix_core.errors import UsageError
from fruix_core.model import BuildRequest, Guest

__all__ = ["no_guest_message", "require_guest"]


def no_guest_message(executor: str) -> str:
    """What to tell an operator who runs an in-guest executor without a guest provider."""
    return (f"executor '{executor}' builds in a guest: name a guest provider "
            "(--guest ssh, or [build] guest in the config)")


def require_guest(request: BuildRequest, executor: str) -> Guest:
    """The run's guest, or a usage error saying how to name a guest provider."""
    if request.guest is None:
        raise UsageError(no_guest_message(executor))
    return request.guest
