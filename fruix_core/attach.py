"""``fruix native-build attach``: take up a guest run whose host process went away.

A run in a guest goes on when the host that drives it is killed or loses its
connection for good: the guest's phase runs detached, and the host result
root is left ``running`` with a dead pid (stale) or ``failed <phase>``. At
the start of every in-guest run the core records in the host result root's
``metadata`` how to reach the guest again (:func:`guest_record`: address,
user, the pinned host key or known-hosts file, the key file's path, never a
secret; the guest's result root is ``result_root``). :func:`attach_build`
reads it back and continues the run where it was::

    refuse a live run (its pid is alive), a run with nothing to attach, or an
        executor without ``fruix_attach_phase``
    connect with the recorded host-key check        prepare-env (``attaching``)
    follow the phase that was running               ``fruix_attach_phase``
    run the remaining phases, stage, emit           as ``--resume`` would
    import, provenance, metadata, ok, latest        the runner's own steps
    promote                                         unless ``--no-promote``

A run whose host went away after its phases (while staging, emitting or
importing) is imported as it is when the guest's result root says ``ok``.

The guest provider is not asked again: a provider would boot or revert a VM,
and the guest must stay as the run left it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fruix_core.config import Config
from fruix_core.errors import Cancelled, UsageError
from fruix_core.model import (
    CancelToken,
    EmittedResult,
    Guest,
    PreparedEnv,
    RunEnd,
    RunEvent,
)
from fruix_core.profile import phases_from
from fruix_core.resultroot import ResultRoot, resolve_run
from fruix_core.runner import (
    RunOutcome,
    _conclude,
    _fail,
    _failed_event,
    _now,
    _PhaseLogs,
    _plugins,
    _promoted,
    _request,
    _Run,
    _source_dir,
)

__all__ = ["IMPORT", "AttachPoint", "attach_build", "attach_point", "guest_from_record",
           "guest_record"]

#: The attach point of a run whose phases all ended: only its import is left.
IMPORT = "import"
#: Stages after the phases: a run that stopped there is imported if the guest says ``ok``.
_AFTER_PHASES = ("stage", "emit", IMPORT, "teardown", "release-guest")

#: Metadata keys of the guest connection, and the :class:`Guest` field each one holds.
_GUEST_FIELDS = (("guest_name", "name"), ("guest_provider", "provider"), ("guest_host", "host"),
                 ("guest_port", "port"), ("guest_user", "user"),
                 ("guest_identity_file", "identity_file"), ("guest_known_hosts", "known_hosts"),
                 ("guest_host_key", "host_key"), ("guest_system_root", "system_root"),
                 ("guest_connect_timeout", "connect_timeout"))


def guest_record(guest: Guest) -> dict[str, object]:
    """The ``metadata`` lines that let ``attach`` reach ``guest`` again (no secrets).

    ``details`` (a provider's own data) is left out: it may hold anything.
    """
    values = {key: getattr(guest, attr) for key, attr in _GUEST_FIELDS}
    return {key: value for key, value in values.items() if value not in (None, "")}


def guest_from_record(metadata: Mapping[str, str]) -> Guest | None:
    """The guest :func:`guest_record` described, or ``None`` when the run had none.

    Trust on first use is never granted again: the host key must be the one
    pinned or in the known-hosts file, as when the run started.
    """
    if not metadata.get("guest_host"):
        return None
    values: dict[str, Any] = {attr: metadata[key] for key, attr in _GUEST_FIELDS
                              if key in metadata}
    try:
        values["port"] = int(values.get("port", 22))
        values["connect_timeout"] = float(values.get("connect_timeout", 15.0))
    except ValueError as exc:
        raise UsageError(f"the run's recorded guest is unreadable: {exc}") from None
    values.setdefault("name", values["host"])
    values.setdefault("provider", "")
    return Guest(**values, trust_on_first_use=False)


@dataclass(frozen=True, slots=True)
class AttachPoint:
    """Where an unfinished run is taken up: its result root, guest, executor and phase."""

    root: ResultRoot
    guest: Guest
    executor: str
    phase: str
    metadata: dict[str, str]


def attach_point(config: Config, run_id: str) -> AttachPoint | None:
    """The run to attach to, or ``None`` when it already finished ``ok``.

    :raises RunNotFoundError: no such run.
    :raises UsageError: the run is live, ran on no guest, or stopped after its phases.
    """
    root = resolve_run(config.results, run_id)
    status = root.status()
    name = root.run_id
    if status.state == "ok":
        return None
    if status.state == "running" and not status.stale:
        raise UsageError(f"run {name} is live (pid {status.pid} on {status.host or '?'}); "
                         "attach only to a run whose host process is gone")
    if status.state not in ("running", "failed"):
        raise UsageError(f"run {name} has no readable status; nothing to attach to")
    metadata = root.read_metadata()
    executor = metadata.get("executor") or ""
    guest = guest_from_record(metadata)
    if guest is None:
        raise UsageError(f"run {name} did not run in a guest (executor '{executor or '?'}'); "
                         f"continue it with: fruix native-build run --resume {name}")
    known = [p.name for p in phases_from(None)]
    if status.state == "failed":
        phase = status.phase or ""
    else:
        started = [p for p in known if f"phase_{p}_started" in metadata]
        phase = started[-1] if started else known[0]
        if started and all(f"phase_{p}_finished" in metadata for p in known):
            phase = IMPORT
    if phase in _AFTER_PHASES:
        phase = IMPORT
    elif phase not in known:
        raise UsageError(f"run {name} stopped at {phase or 'an unknown stage'}, not in a "
                         f"phase; continue it with: fruix native-build run --resume {name}")
    return AttachPoint(root, guest, executor, phase, metadata)


def attach_build(
    config: Config,
    point: AttachPoint,
    *,
    promote: bool | None = None,
    cancel: CancelToken | None = None,
    on_output: Callable[[str, str], None] | None = None,
    executor_plugin: Any = None,
    extra_plugins: tuple[Any, ...] = (),
    progress: Callable[[Any], None] | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
) -> RunOutcome:
    """Follow the run of ``point`` to its end in the guest, then import and promote it.

    :raises UsageError: the executor cannot attach (no ``fruix_attach_phase``).
    :raises BuildFailed: the phase (or a later one) failed in the guest; the
        status says ``failed <phase>``.
    :raises Cancelled: Ctrl-C / SIGTERM (the guest's phase is stopped).
    :raises FruixError: the guest is unreachable, its host key changed, ...
    """
    cancel = cancel or CancelToken()
    do_promote = config.promote if promote is None else promote
    pm, loaded = _plugins(config, point.executor, "", executor_plugin, None, extra_plugins)
    root = point.root
    if point.phase != IMPORT and not pm.can_attach():
        raise UsageError(f"executor '{loaded.name}' cannot follow a phase it did not start "
                         "(no fruix_attach_phase); continue the run with: fruix native-build "
                         f"run --resume {root.run_id}")
    root.set_running()  # this process carries the run now
    logs = _PhaseLogs(root, on_output, cancel)
    request = _request(config, root, loaded, _source_dir(config), point.phase, cancel, logs,
                       guest=point.guest, attaching=True)
    run = _Run(config, pm, loaded, root, request, logs, point.guest.name, on_event)
    run.metadata.update(point.metadata)
    run.stamp({"attached": _now(), "attached_at": point.phase})
    run.bound.info("attaching", guest=point.guest.name, phase=point.phase)
    run.event("run-started", guest=point.guest.name, log=str(root.logs),
              count=len(request.phases))
    run.stage = point.phase  # a failure before the phase keeps the run attachable there
    try:
        if point.phase == IMPORT:
            _conclude(run, None, None, _finished_in_guest(run, point), _nothing)
            return _promoted(run, do_promote, progress)
        def same_result_root(env: PreparedEnv) -> None:
            recorded = point.metadata.get("result_root")
            if recorded and env.result_root != recorded:
                raise UsageError(f"run {root.run_id}: its guest result root was {recorded}, but "
                                 f"the executor's settings now give {env.result_root}; attach "
                                 f"with the settings the run started with")

        env, staged, emitted = run.build_in(lambda: pm.prepare_env(request), same_result_root)
        _conclude(run, env, staged, emitted, _nothing)
    except (KeyboardInterrupt, SystemExit):
        failure = Cancelled("interrupted")
        _fail(run, failure)
        _failed_event(run, failure)
        raise failure from None
    except BaseException as exc:
        _fail(run, exc)
        _failed_event(run, exc)
        raise
    return _promoted(run, do_promote, progress)


def _nothing(end: RunEnd) -> None:
    """No guest provider was asked, so there is no guest to release."""


def _finished_in_guest(run: _Run, point: AttachPoint) -> EmittedResult:
    """The guest's result root of a run whose phases ended, if the guest says it is ``ok``.

    :raises UsageError: the guest's status is not ``ok`` (its staging did not finish).
    """
    from fruix_core.transport.ssh import connect

    remote = point.metadata.get("result_root") or ""
    session = connect(point.guest)
    try:
        status = session.read_file(posixpath.join(remote, "status")).decode(
            "utf-8", "replace").strip()
    finally:
        session.close()
    if status != "ok":
        raise UsageError(f"run {point.root.run_id} stopped after its phases, and the guest's "
                         f"result root {remote} says '{status}', not ok; continue it with: "
                         f"fruix native-build run --resume {point.root.run_id}")
    return EmittedResult(result_root=remote, in_guest=True)
