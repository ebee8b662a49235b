"""Plugin discovery (stevedore entry points) feeding a pluggy PluginManager.

This is the only module that looks at entry points. Executors live in the
``fruix.executors`` namespace, guest providers in ``fruix.guest_providers``;
the entry-point name is the name operators use. An entry point names a class
whose instances implement the hooks of :mod:`fruix_core.hookspecs`.

Debugging aids: ``FRUIX_BLOCK_PLUGINS=a,b`` hides plugins by name;
``FRUIX_TRACE_HOOKS=1`` logs every hook call.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy
import structlog

from fruix_core import hookspecs
from fruix_core.errors import PluginLoadError, UnknownPluginError
from fruix_core.model import (
    BuildRequest,
    EmittedResult,
    Guest,
    GuestRequest,
    Phase,
    PhaseResult,
    PreparedEnv,
    StagedArtifacts,
)

log = structlog.get_logger(__name__)

EXECUTOR_NAMESPACE = "fruix.executors"
GUEST_PROVIDER_NAMESPACE = "fruix.guest_providers"
NAMESPACES = {"executor": EXECUTOR_NAMESPACE, "guest-provider": GUEST_PROVIDER_NAMESPACE}

__all__ = [
    "EXECUTOR_NAMESPACE",
    "GUEST_PROVIDER_NAMESPACE",
    "FruixPluginManager",
    "PluginInfo",
    "discover",
    "load_plugin",
    "make_plugin_manager",
]


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed plugin as ``fruix executors list`` shows it."""

    name: str
    kind: str
    version: str
    distribution: str
    description: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "distribution": self.distribution,
            "description": self.description,
        }
        if self.error is not None:
            data["error"] = self.error
        return data


def _blocked() -> set[str]:
    return {n.strip() for n in os.environ.get("FRUIX_BLOCK_PLUGINS", "").split(",") if n.strip()}


def _dist_of(entry_point: Any) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "", ""
    return dist.name, dist.version


def _describe(target: Any) -> str:
    doc = (getattr(target, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _extension_manager(namespace: str, names: Iterable[str] | None, failures: dict[str, str]):
    from stevedore import ExtensionManager, NamedExtensionManager

    def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
        failures[entry_point.name] = f"{type(exc).__name__}: {exc}"
        log.warning("plugin failed to load", plugin=entry_point.name, namespace=namespace,
                    error=failures[entry_point.name])

    # stevedore memoises entry points per namespace for the whole process; a long-lived
    # process (tests, a daemon) must see plugins installed since, so look again.
    ExtensionManager.ENTRY_POINT_CACHE.pop(namespace, None)
    if names is None:
        return ExtensionManager(namespace, invoke_on_load=False,
                                on_load_failure_callback=on_failure)
    return NamedExtensionManager(namespace, names=list(names), invoke_on_load=False,
                                 on_load_failure_callback=on_failure, name_order=True)


def _entry_points(namespace: str) -> list[Any]:
    from importlib.metadata import entry_points

    seen: dict[str, Any] = {}
    for ep in entry_points(group=namespace):
        seen.setdefault(ep.name, ep)
    return list(seen.values())


def discover(kinds: Iterable[str] = ("executor", "guest-provider")) -> list[PluginInfo]:
    """List installed plugins of the given kinds; broken ones carry an ``error``."""
    blocked = _blocked()
    infos: list[PluginInfo] = []
    for kind in kinds:
        namespace = NAMESPACES[kind]
        failures: dict[str, str] = {}
        manager = _extension_manager(namespace, None, failures)
        loaded = {ext.name: ext for ext in manager}
        for ep in sorted(_entry_points(namespace), key=lambda e: e.name):
            if ep.name in blocked:
                continue
            dist, version = _dist_of(ep)
            ext = loaded.get(ep.name)
            if ext is not None:
                infos.append(PluginInfo(ep.name, kind, version, dist, _describe(ext.plugin)))
            else:
                error = failures.get(ep.name, "failed to load")
                infos.append(PluginInfo(ep.name, kind, version, dist, "", error=error))
    return infos


def installed_names(kind: str) -> list[str]:
    """Names of the installed, loadable plugins of one kind."""
    return [info.name for info in discover([kind]) if info.error is None]


def load_plugin(kind: str, name: str) -> Any:
    """Load and instantiate the plugin ``name`` of ``kind`` (``executor``/``guest-provider``).

    :raises UnknownPluginError: no such plugin is installed (the message lists
        what is).
    :raises PluginLoadError: it is installed but fails to import.
    """
    namespace = NAMESPACES[kind]
    if name in _blocked():
        raise UnknownPluginError(kind, name, [n for n in installed_names(kind)])
    failures: dict[str, str] = {}
    manager = _extension_manager(namespace, [name], failures)
    if name in failures:
        raise PluginLoadError(f"{kind} plugin '{name}' failed to load: {failures[name]}")
    extensions = [ext for ext in manager if ext.name == name]
    if not extensions:
        raise UnknownPluginError(kind, name, installed_names(kind))
    target = extensions[0].plugin
    try:
        instance = target() if isinstance(target, type) else target
    except Exception as exc:  # a plugin's constructor is foreign code
        raise PluginLoadError(f"{kind} plugin '{name}' failed to start: {exc}") from exc
    return instance


def plugin_version(kind: str, name: str) -> str:
    """The distribution version of an installed plugin ('' when unknown)."""
    for ep in _entry_points(NAMESPACES[kind]):
        if ep.name == name:
            return _dist_of(ep)[1]
    return ""


class FruixPluginManager:
    """A pluggy manager with typed wrappers around each hook call."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm

    # -- executor --------------------------------------------------------------------

    def prepare_env(self, request: BuildRequest) -> PreparedEnv:
        return self._require(self.pm.hook.fruix_prepare_env(request=request), "fruix_prepare_env")

    def run_phase(self, request: BuildRequest, env: PreparedEnv, phase: Phase) -> PhaseResult:
        return self._require(self.pm.hook.fruix_run_phase(request=request, env=env, phase=phase),
                             "fruix_run_phase")

    def stage_artifacts(self, request: BuildRequest, env: PreparedEnv) -> StagedArtifacts:
        return self._require(self.pm.hook.fruix_stage_artifacts(request=request, env=env),
                             "fruix_stage_artifacts")

    def emit_promotion(self, request: BuildRequest, env: PreparedEnv,
                       staged: StagedArtifacts) -> EmittedResult:
        return self._require(
            self.pm.hook.fruix_emit_promotion(request=request, env=env, staged=staged),
            "fruix_emit_promotion")

    # -- guest provider ------------------------------------------------------------------

    def acquire_guest(self, request: GuestRequest) -> Guest:
        return self._require(self.pm.hook.fruix_acquire_guest(request=request),
                             "fruix_acquire_guest")

    def release_guest(self, guest: Guest, outcome: str) -> None:
        self.pm.hook.fruix_release_guest(guest=guest, outcome=outcome)

    @staticmethod
    def _require(value: Any, hook: str) -> Any:
        if value is None:
            raise PluginLoadError(f"no registered plugin implements {hook}")
        return value


def make_plugin_manager(*plugins: Any) -> FruixPluginManager:
    """Build a fresh manager with the hook specs and the given plugin objects.

    Nothing is discovered here: callers pass the executor (and guest provider)
    they loaded with :func:`load_plugin`, or test doubles.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs.ExecutorSpec)
    pm.add_hookspecs(hookspecs.GuestProviderSpec)
    for plugin in plugins:
        if plugin is not None:
            pm.register(plugin)
    pm.check_pending()
    if os.environ.get("FRUIX_TRACE_HOOKS"):
        def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            log.debug("hook call", hook=hook_name, impls=[i.plugin_name for i in hook_impls])

        def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            log.debug("hook done", hook=hook_name)

        pm.add_hookcall_monitoring(before, after)
    return FruixPluginManager(pm)
