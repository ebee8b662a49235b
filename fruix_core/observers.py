"""Observers: plugins that hear about runs without building (``fruix.observers``).

The core sends each :class:`~fruix_core.model.RunEvent` to every observer the
configuration enables (``[build] observers = ["command"]``) through the
:func:`~fruix_core.hookspecs.ObserverSpec.fruix_observe` hook. An observer's
error is logged and never changes the run.

Shipped observer: ``command`` (:class:`CommandObserver`) runs a configured
command at the end of each run with the final event as JSON on its standard
input -- the place for notifications (mail, chat) and metrics. Its settings
are ``[observers.command]``:

``command``
    the command line (words, as a shell would split them; no shell runs it).
``events``
    which event kinds run it (default ``["run-finished", "run-failed"]``).
``timeout``
    seconds the command may take (default 30).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from fruix_core.config import Key
from fruix_core.errors import ConfigError
from fruix_core.hookspecs import PLUGIN_API_VERSION, hookimpl
from fruix_core.model import OBSERVED_KINDS, RunEvent

if TYPE_CHECKING:
    from fruix_core.plugins import FruixPluginManager

log = structlog.get_logger(__name__)

__all__ = ["CommandObserver", "notify"]


def notify(pm: FruixPluginManager, event: RunEvent) -> None:
    """Send ``event`` to every registered observer; their errors are only logged."""
    for impl in reversed(pm.pm.hook.fruix_observe.get_hookimpls()):
        try:
            impl.function(event)
        except Exception as exc:  # an observer never changes the run
            log.warning("observer failed", observer=impl.plugin_name, event_kind=event.kind,
                        error=f"{type(exc).__name__}: {exc}")


EVENT_KINDS = OBSERVED_KINDS


class CommandObserver:
    """Runs a configured command with each run's final event as JSON on stdin."""

    name = "command"
    fruix_plugin_api = PLUGIN_API_VERSION
    fruix_settings: dict[str, Key] = {
        "command": Key(str, "", "command line run for each event (no shell); '' = nothing"),
        "events": Key(list, ["run-finished", "run-failed"], "event kinds that run it"),
        "timeout": Key((int, float), 30, "seconds the command may take"),
    }

    @staticmethod
    def fruix_check_settings(table: Mapping[str, Any], *, file: str | None) -> None:
        """Refuse an ``[observers.command]`` table whose command or events make no sense."""
        prefix = "observers.command"
        try:
            shlex.split(str(table.get("command", "")))
        except ValueError as exc:
            raise ConfigError(f"not a command line: {exc}", file=file,
                              key=f"{prefix}.command") from None
        for kind in table.get("events", []):
            if kind not in EVENT_KINDS:
                raise ConfigError(f"unknown event kind {kind!r} (known: "
                                  f"{', '.join(EVENT_KINDS)})", file=file, key=f"{prefix}.events")
        if table.get("timeout", 30) <= 0:
            raise ConfigError("must be more than 0 seconds", file=file, key=f"{prefix}.timeout")

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Take the observer's validated ``[observers.command]`` table."""
        self.settings = dict(settings)

    @hookimpl
    def fruix_observe(self, event: RunEvent) -> None:
        command = str(self.settings.get("command") or "")
        events = self.settings.get("events") or ["run-finished", "run-failed"]
        if not command or event.kind not in events:
            return
        argv = shlex.split(command)
        timeout = float(self.settings.get("timeout") or 30)
        try:
            proc = subprocess.run(argv, input=json.dumps(event.as_dict(), sort_keys=True),
                                  text=True, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("observer command failed", command=argv[0], error=str(exc))
            return
        if proc.returncode != 0:
            log.warning("observer command failed", command=argv[0], status=proc.returncode,
                        stderr=proc.stderr.strip()[-400:])
