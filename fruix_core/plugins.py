"""Plugin discovery (stevedore entry points) feeding a pluggy PluginManager.

This is the only module that looks at entry points. Executors live in the
``fruix.executors`` namespace, guest providers in ``fruix.guest_providers``,
observers in ``fruix.observers``; the entry-point name is the name operators
use, and the name a plugin is registered under, so every error can name it.
An entry point names a class whose instances implement the hooks of
:mod:`fruix_core.hookspecs`.

A plugin is checked when it is loaded, before any result root exists: the
plugin API version it declares (``fruix_plugin_api``), and every hook
implementation against its specification (names and arguments). Each hook's
answer is checked when it comes back (:class:`FruixPluginManager`).

Debugging aids: ``FRUIX_BLOCK_PLUGINS=a,b`` hides plugins by name (they are
never imported); ``FRUIX_TRACE_HOOKS=1`` logs every hook call.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pluggy
import structlog

from fruix_core import hookspecs
from fruix_core.errors import (
    ConfigError,
    FruixError,
    PluginContractError,
    PluginLoadError,
    UnknownPluginError,
    UsageError,
    WorkAreaError,
)
from fruix_core.model import (
    BuildRequest,
    EmittedResult,
    Guest,
    GuestRequest,
    Phase,
    PhaseResult,
    PreparedEnv,
    RunEnd,
    StagedArtifacts,
)

if TYPE_CHECKING:
    from fruix_core.config import Config

log = structlog.get_logger(__name__)

EXECUTOR_NAMESPACE = "fruix.executors"
GUEST_PROVIDER_NAMESPACE = "fruix.guest_providers"
OBSERVER_NAMESPACE = "fruix.observers"
NAMESPACES = {"executor": EXECUTOR_NAMESPACE, "guest-provider": GUEST_PROVIDER_NAMESPACE,
              "observer": OBSERVER_NAMESPACE}

#: The hooks a plugin of each kind must implement.
REQUIRED_HOOKS: dict[str, tuple[str, ...]] = {
    "executor": ("fruix_prepare_env", "fruix_run_phase", "fruix_stage_artifacts",
                 "fruix_emit_promotion"),
    "guest-provider": ("fruix_acquire_guest", "fruix_release_guest"),
    "observer": (),
}

__all__ = [
    "EXECUTOR_NAMESPACE",
    "GUEST_PROVIDER_NAMESPACE",
    "OBSERVER_NAMESPACE",
    "PLUGIN_TABLES",
    "FruixPluginManager",
    "LoadedPlugin",
    "PluginInfo",
    "check_settings",
    "discover",
    "identify",
    "load",
    "load_plugin",
    "make_plugin_manager",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed plugin as ``fruix executors list`` shows it."""

    name: str
    kind: str
    version: str
    distribution: str
    description: str
    error: str | None = None
    api_version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "version": self.version,
            "distribution": self.distribution,
            "description": self.description,
            "api_version": self.api_version,
        }
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    """A plugin object with the identity the core records for it.

    ``name`` is the entry-point name; ``distribution`` and ``version`` come
    from the distribution that declares the entry point, never from the plugin.
    """

    name: str
    kind: str
    plugin: Any
    distribution: str = ""
    version: str = ""

    @property
    def label(self) -> str:
        """How errors name the plugin: kind, name, distribution and version."""
        dist = f"{self.distribution} {self.version}" if self.distribution else "no distribution"
        return f"{self.kind} plugin '{self.name}' ({dist})"


def _blocked() -> set[str]:
    return {n.strip() for n in os.environ.get("FRUIX_BLOCK_PLUGINS", "").split(",") if n.strip()}


def _dist_of(entry_point: Any) -> tuple[str, str]:
    dist = getattr(entry_point, "dist", None)
    if dist is None:
        return "", ""
    return str(dist.name), str(dist.version)


def _describe(target: Any) -> str:
    doc = (getattr(target, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _entry_points(namespace: str) -> list[EntryPoint]:
    from importlib.metadata import entry_points

    seen: dict[str, EntryPoint] = {}
    for ep in entry_points(group=namespace):
        seen.setdefault(ep.name, ep)
    return list(seen.values())


def available_names(kind: str) -> list[str]:
    """Names of the installed plugins of one kind that are not blocked (nothing imported)."""
    blocked = _blocked()
    return sorted(ep.name for ep in _entry_points(NAMESPACES[kind]) if ep.name not in blocked)


def _import_targets(namespace: str, names: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Import the named entry points only; ``(targets, failures)`` by name."""
    from stevedore import ExtensionManager, NamedExtensionManager

    failures: dict[str, str] = {}

    def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
        failures[entry_point.name] = f"{type(exc).__name__}: {exc}"
        log.warning("plugin failed to load", plugin=entry_point.name, namespace=namespace,
                    error=failures[entry_point.name])

    if not names:
        return {}, failures
    # stevedore memoises entry points per namespace for the whole process; a long-lived
    # process (tests, a daemon) must see plugins installed since, so look again.
    ExtensionManager.ENTRY_POINT_CACHE.pop(namespace, None)
    # A named manager imports only the names it is given: blocked plugins never load.
    manager = NamedExtensionManager(namespace, names=names, invoke_on_load=False,
                                    on_load_failure_callback=on_failure, name_order=True)
    return {ext.name: ext.plugin for ext in manager}, failures


def _new_pluggy() -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs.ExecutorSpec)
    pm.add_hookspecs(hookspecs.GuestProviderSpec)
    pm.add_hookspecs(hookspecs.ObserverSpec)
    return pm


def _one_line(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines)


def _implemented(plugin: Any) -> set[str]:
    found = set()
    for attr in dir(plugin):
        if attr.startswith("fruix_"):
            opts = getattr(getattr(plugin, attr, None), f"{hookspecs.PROJECT_NAME}_impl", None)
            if opts is not None and not opts.get("wrapper") and not opts.get("hookwrapper"):
                found.add(attr)
    return found


def validate(loaded: LoadedPlugin, *, require_api: bool = True) -> None:
    """Check a plugin before it is used: API version, hook names and arguments.

    :raises PluginLoadError: one line naming the plugin, its distribution and
        what is wrong.
    """
    declared = getattr(loaded.plugin, "fruix_plugin_api", None)
    offered = hookspecs.PLUGIN_API_VERSION
    if declared is None and require_api:
        raise PluginLoadError(f"{loaded.label} declares no plugin API version: set the class "
                              f"attribute fruix_plugin_api = {offered}")
    if declared is not None and declared != offered:
        raise PluginLoadError(f"{loaded.label} targets plugin API {declared!r}, but this core "
                              f"offers plugin API {offered}")
    pm = _new_pluggy()
    try:
        pm.register(loaded.plugin, name=loaded.name)
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"{loaded.label} has an invalid hook implementation: "
                              f"{_one_line(exc)}") from None
    missing = [h for h in REQUIRED_HOOKS.get(loaded.kind, ()) if h not in _implemented(
        loaded.plugin)]
    if missing:
        raise PluginLoadError(f"{loaded.label} does not implement {', '.join(missing)}")


def discover(kinds: Iterable[str] = ("executor", "guest-provider", "observer")
             ) -> list[PluginInfo]:
    """List installed plugins of the given kinds; broken or invalid ones carry an ``error``."""
    blocked = _blocked()
    infos: list[PluginInfo] = []
    for kind in kinds:
        namespace = NAMESPACES[kind]
        eps = sorted((ep for ep in _entry_points(namespace) if ep.name not in blocked),
                     key=lambda e: e.name)
        targets, failures = _import_targets(namespace, [ep.name for ep in eps])
        for ep in eps:
            dist, version = _dist_of(ep)
            if ep.name not in targets:
                infos.append(PluginInfo(ep.name, kind, version, dist, "",
                                        error=failures.get(ep.name, "failed to load")))
                continue
            target = targets[ep.name]
            api = getattr(target, "fruix_plugin_api", None)
            error: str | None = None
            try:
                validate(LoadedPlugin(ep.name, kind, target, dist, version))
            except PluginLoadError as exc:
                error = str(exc)
            infos.append(PluginInfo(ep.name, kind, version, dist, _describe(target), error=error,
                                    api_version=api if isinstance(api, int) else None))
    return infos


def installed_names(kind: str) -> list[str]:
    """Names of the installed plugins of one kind (blocked ones left out)."""
    return available_names(kind)


def load(kind: str, name: str) -> LoadedPlugin:
    """Import, check and instantiate the plugin ``name`` of ``kind``.

    Only that plugin's module is imported; blocked plugins are refused before
    anything is imported.

    :raises UnknownPluginError: no such plugin is installed (the message lists
        what is).
    :raises PluginLoadError: it is installed but fails to import, declares
        another plugin API, has invalid hook implementations, or its
        constructor fails.
    """
    namespace = NAMESPACES[kind]
    if name in _blocked():
        raise UnknownPluginError(kind, name, available_names(kind))
    entry = next((ep for ep in _entry_points(namespace) if ep.name == name), None)
    if entry is None:
        raise UnknownPluginError(kind, name, available_names(kind))
    dist, version = _dist_of(entry)
    where = f"{kind} plugin '{name}' ({dist + ' ' + version if dist else 'no distribution'})"
    targets, failures = _import_targets(namespace, [name])
    if name not in targets:
        raise PluginLoadError(f"{where} failed to load: {failures.get(name, 'not importable')}")
    target = targets[name]
    validate(LoadedPlugin(name, kind, target, dist, version))
    try:
        instance = target() if isinstance(target, type) else target
    except Exception as exc:  # a plugin's constructor is foreign code
        raise PluginLoadError(f"{where} failed to start: {type(exc).__name__}: {exc}") from None
    return LoadedPlugin(name, kind, instance, dist, version)


#: Config tables of plugins, and the plugin kind each one configures.
PLUGIN_TABLES: dict[str, str] = {"executors": "executor", "guests": "guest-provider",
                                 "observers": "observer"}


def check_settings(config: Config) -> dict[str, dict[str, dict[str, Any]]]:
    """Validate every plugin table of the config against its plugin's declared schema.

    Every ``[executors.NAME]``, ``[guests.NAME]`` and ``[observers.NAME]``
    table is checked, also those of plugins this run does not use. A plugin
    declares its keys as the class attribute ``fruix_settings`` (a mapping of
    name to :class:`~fruix_core.config.Key`) and may check values further in
    a static method ``fruix_check_settings(table, *, file)``. Only the
    modules of plugins that have a table are imported.

    :returns: table → plugin name → its values, defaults filled in.
    :raises ConfigError: naming the file and the key: a table for a plugin
        that is not installed, an unknown key, a wrong type or value.
    :raises PluginLoadError: a plugin with a table cannot be imported.
    """
    from fruix_core.config import read_section

    resolved: dict[str, dict[str, dict[str, Any]]] = {}
    for table, kind in PLUGIN_TABLES.items():
        sections: Mapping[str, Mapping[str, Any]] = config.plugin_tables(table)
        resolved[table] = {}
        blocked = _blocked()
        for name in sorted(set(sections) & blocked):
            log.warning("plugin blocked: its table is not checked", table=f"{table}.{name}")
            resolved[table][name] = dict(sections[name])
        names = [n for n in sections if n not in blocked]
        installed = available_names(kind)
        for name in names:
            if name not in installed:
                raise ConfigError(f"no {kind} '{name}' is installed (installed: "
                                  f"{', '.join(installed) or 'none'})", file=config.file,
                                  key=f"{table}.{name}")
        targets, failures = _import_targets(NAMESPACES[kind], names)
        for name in names:
            prefix = f"{table}.{name}"
            if name not in targets:
                raise PluginLoadError(f"{kind} plugin '{name}' failed to load: "
                                      f"{failures.get(name, 'not importable')}")
            target, section = targets[name], sections[name]
            schema = getattr(target, "fruix_settings", None)
            if schema is None:
                if section:
                    first = next(iter(section))
                    raise ConfigError(f"unknown key: {kind} '{name}' takes no settings",
                                      file=config.file, key=f"{prefix}.{first}")
                values: dict[str, Any] = {}
            else:
                values = read_section(section, schema, file=config.file, prefix=prefix)
            check = getattr(target, "fruix_check_settings", None)
            if callable(check):
                check(section, file=config.file)
            resolved[table][name] = values
    return resolved


def load_plugin(kind: str, name: str) -> Any:
    """The instance of the plugin ``name`` of ``kind`` (see :func:`load`)."""
    return load(kind, name).plugin


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return dict(packages_distributions())


def identify(kind: str, plugin: Any, name: str | None = None) -> LoadedPlugin:
    """A plugin object handed over directly (tests, embedding code) with its identity.

    The distribution is the one that installs the object's top-level package;
    an object no distribution installs is reported as such, and its version
    is its ``version`` attribute (``0`` without one).
    """
    if isinstance(plugin, LoadedPlugin):
        return plugin
    name = name or str(getattr(plugin, "name", "") or type(plugin).__name__)
    module = type(plugin).__module__ if not isinstance(plugin, type) else plugin.__module__
    top = module.split(".")[0]
    dists = _packages_distributions().get(top, [])
    if dists:
        from importlib.metadata import version

        return LoadedPlugin(name, kind, plugin, dists[0], version(dists[0]))
    return LoadedPlugin(name, kind, plugin, "", str(getattr(plugin, "version", "") or "0"))


def _kind_of(plugin: Any) -> str:
    implemented = _implemented(plugin)
    if "fruix_prepare_env" in implemented:
        return "executor"
    if "fruix_acquire_guest" in implemented:
        return "guest-provider"
    return "plugin"


class FruixPluginManager:
    """A pluggy manager with typed, checked wrappers around each hook call.

    Every answer is checked against the type its specification declares; a
    wrong answer, a missing one, or an exception that is not a
    :class:`~fruix_core.errors.FruixError` becomes a
    :class:`~fruix_core.errors.PluginContractError` naming the plugin, its
    distribution and the hook.
    """

    def __init__(self, pm: pluggy.PluginManager, plugins: Iterable[LoadedPlugin] = (),
                 names: dict[str, LoadedPlugin] | None = None) -> None:
        self.pm = pm
        self.plugins = list(plugins)
        self.names = dict(names or {})

    def _of_kind(self, kind: str) -> LoadedPlugin | None:
        return next((p for p in self.plugins if p.kind == kind), None)

    @property
    def executor(self) -> LoadedPlugin | None:
        return self._of_kind("executor")

    @property
    def provider(self) -> LoadedPlugin | None:
        return self._of_kind("guest-provider")

    def _call(self, hook: str, blame: LoadedPlugin | None, expected: type[T] | None,
              **kwargs: Any) -> T:
        label = blame.label if blame is not None else "no registered plugin"
        caller: Callable[..., Any] = getattr(self.pm.hook, hook)
        try:
            value = caller(**kwargs)
        except FruixError:
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk, not the plugin
                where = f": {exc.filename}" if exc.filename else ""
                raise WorkAreaError(f"{label}: {hook}: a file system is full "
                                    f"({exc.strerror}{where})") from None
            log.debug("hook raised", hook=hook, plugin=label, exc_info=True)
            raise PluginContractError(label, hook, f"raised {type(exc).__name__}: {exc}"
                                      ) from exc
        except Exception as exc:  # foreign code: name it, never let a traceback out
            log.debug("hook raised", hook=hook, plugin=label, exc_info=True)
            raise PluginContractError(label, hook, f"raised {type(exc).__name__}: {exc}"
                                      ) from exc
        if expected is not None and not isinstance(value, expected):
            got = "nothing (None)" if value is None else f"a {type(value).__name__}"
            raise PluginContractError(label, hook,
                                      f"returned {got}; it must return a {expected.__name__}")
        return cast(T, value)

    def _call_each(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of a cleanup hook, even when one of them fails.

        The first failure is raised once all were called, naming the plugin it came from.
        """
        first: FruixError | None = None
        caller = getattr(self.pm.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                continue
            item = self.names.get(impl.plugin_name)
            label = item.label if item is not None else f"plugin '{impl.plugin_name}'"
            try:
                impl.function(*[kwargs[name] for name in impl.argnames])
            except FruixError as exc:
                first = first or exc
            except Exception as exc:  # foreign code: name it, never let a traceback out
                log.debug("hook raised", hook=hook, plugin=label, exc_info=True)
                first = first or PluginContractError(
                    label, hook, f"raised {type(exc).__name__}: {exc}")
        if first is not None:
            raise first

    # -- executor --------------------------------------------------------------------

    def prepare_env(self, request: BuildRequest) -> PreparedEnv:
        env = self._call("fruix_prepare_env", self.executor, PreparedEnv, request=request)
        for attr in ("result_root", "build_root", "source_dir", "host_name"):
            if not isinstance(getattr(env, attr), str):
                raise PluginContractError(self.executor.label if self.executor else "?",
                                          "fruix_prepare_env",
                                          f"returned a PreparedEnv whose {attr} is not a string")
        return env

    def run_phase(self, request: BuildRequest, env: PreparedEnv, phase: Phase) -> PhaseResult:
        result = self._call("fruix_run_phase", self.executor, PhaseResult, request=request,
                            env=env, phase=phase)
        return self._phase_result("fruix_run_phase", result, phase)

    def _phase_result(self, hook: str, result: Any, phase: Phase) -> PhaseResult:
        label = self.executor.label if self.executor else "?"
        if not isinstance(result, PhaseResult):
            raise PluginContractError(label, hook, f"returned a {type(result).__name__}; it "
                                                   "must return a PhaseResult")
        if result.phase != phase.name or not isinstance(result.returncode, int) or \
                isinstance(result.returncode, bool):
            raise PluginContractError(
                label, hook,
                f"returned a PhaseResult for phase {result.phase!r} with return code "
                f"{result.returncode!r}; expected phase {phase.name!r} and an integer")
        return result

    def can_attach(self) -> bool:
        """Whether the executor implements the optional ``fruix_attach_phase``."""
        executor = self.executor
        return executor is not None and "fruix_attach_phase" in _implemented(executor.plugin)

    def attach_phase(self, request: BuildRequest, env: PreparedEnv,
                     phase: Phase) -> PhaseResult | None:
        """The followed phase's result, or ``None`` when it never started in the guest."""
        result: object = self._call("fruix_attach_phase", self.executor, None,
                                    request=request, env=env, phase=phase)
        return None if result is None else self._phase_result("fruix_attach_phase", result,
                                                              phase)

    def stage_artifacts(self, request: BuildRequest, env: PreparedEnv) -> StagedArtifacts:
        staged = self._call("fruix_stage_artifacts", self.executor, StagedArtifacts,
                            request=request, env=env)
        missing = [k for k in staged.kinds if k not in staged.key_files]
        if missing:
            raise PluginContractError(self.executor.label if self.executor else "?",
                                      "fruix_stage_artifacts",
                                      f"returned no key files for {', '.join(missing)}")
        return staged

    def emit_promotion(self, request: BuildRequest, env: PreparedEnv,
                       staged: StagedArtifacts) -> EmittedResult:
        emitted = self._call("fruix_emit_promotion", self.executor, EmittedResult,
                             request=request, env=env, staged=staged)
        if not isinstance(emitted.result_root, (str, Path)):
            raise PluginContractError(self.executor.label if self.executor else "?",
                                      "fruix_emit_promotion",
                                      "returned an EmittedResult whose result_root is not a path")
        return emitted

    def teardown_env(self, request: BuildRequest, env: PreparedEnv, outcome: RunEnd) -> None:
        self._call_each("fruix_teardown_env", request=request, env=env, outcome=outcome)

    # -- guest provider ------------------------------------------------------------------

    def acquire_guest(self, request: GuestRequest) -> Guest:
        return self._call("fruix_acquire_guest", self.provider, Guest, request=request)

    def release_guest(self, guest: Guest, outcome: str) -> None:
        self._call_each("fruix_release_guest", guest=guest, outcome=outcome)

    def release_configured_guest(self, request: GuestRequest) -> str:
        """The provider's one-line account of releasing its configured guest (no run).

        :raises UsageError: the provider cannot release a guest outside a run
            (it implements no ``fruix_release_configured_guest``).
        """
        provider = self.provider
        hook = "fruix_release_configured_guest"
        if provider is not None and hook not in _implemented(provider.plugin):
            raise UsageError(f"{provider.label} cannot release a guest outside a run (it "
                             f"implements no {hook}); release it with the provider's own tools")
        description = self._call(hook, provider, str, request=request)
        return " ".join(description.split()) or f"guest provider '{request.provider}' released"


def make_plugin_manager(*plugins: Any) -> FruixPluginManager:
    """Build a fresh manager with the hook specs and the given plugins.

    Nothing is discovered here: callers pass what :func:`load` returned, or
    plain plugin objects (test doubles, hook wrappers), which are identified
    with :func:`identify`. Each is registered under its name.

    :raises PluginLoadError: a plugin's hook implementations do not fit their
        specifications.
    """
    pm = _new_pluggy()
    loaded: list[LoadedPlugin] = []
    names: dict[str, LoadedPlugin] = {}
    for plugin in plugins:
        if plugin is None:
            continue
        item = plugin if isinstance(plugin, LoadedPlugin) else identify(_kind_of(plugin), plugin)
        name = item.name
        n = 1
        while pm.get_plugin(name) is not None or pm.is_blocked(name):
            n += 1
            name = f"{item.name}-{n}"
        try:
            pm.register(item.plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginLoadError(f"{item.label} has an invalid hook implementation: "
                                  f"{_one_line(exc)}") from None
        loaded.append(item)
        names[name] = item
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"invalid hook implementation: {_one_line(exc)}") from None
    if os.environ.get("FRUIX_TRACE_HOOKS"):
        def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            log.debug("hook call", hook=hook_name, impls=[i.plugin_name for i in hook_impls])

        def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
            log.debug("hook done", hook=hook_name)

        pm.add_hookcall_monitoring(before, after)
    return FruixPluginManager(pm, loaded, names)
