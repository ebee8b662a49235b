"""One run, end to end. The core owns the run; executors only build.

::

    load and check the plugins                  before anything is written
    preflight: combination, resume, space       fruix_core.preflight; nothing written
    reserve run id, create the host result root   status: running
    acquire guest                               provider hook
    prepare-env, run-phase x N, stage-artifacts, emit-promotion   executor hooks
    teardown-env                                always, once per prepared env
    import the guest's result root              in-guest executors; one core path
    check provenance, stamp metadata
    release guest                               always, also on failure / Ctrl-C
    status ok, swap latest
    promote into the store                      the core's engine

Everything around the executor's hooks is the runner's: every status
transition (``running``, ``failed <stage>``, ``ok``), the phase logs (the
executor hands lines to :meth:`~fruix_core.model.BuildRequest.output`; the
runner writes ``logs/<phase>.log``), the failure records with the stage that
really failed, the metadata (executor entry-point name, distribution and
version, core version, start and end of the run and of each phase),
``latest``, the import of an in-guest result root and the provenance checks.
Observers (``fruix.observers``) hear the run and phase events; the progress
display (``on_event``) hears every step, guest, teardown, import and promotion too.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import posixpath
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from fruix_core.__about__ import __version__ as CORE_VERSION
from fruix_core.config import Config
from fruix_core.environment import ENVIRONMENT_POLICY, sanitised_environment
from fruix_core.errors import (
    BuildFailed,
    Cancelled,
    FruixError,
    PluginContractError,
    ProvenanceError,
    UsageError,
    WorkAreaError,
)
from fruix_core.model import (
    OBSERVED_KINDS,
    BuildRequest,
    CancelToken,
    EmittedResult,
    Guest,
    GuestRequest,
    PreparedEnv,
    RunEnd,
    RunEvent,
    StagedArtifacts,
)
from fruix_core.plugins import FruixPluginManager, LoadedPlugin, identify, load, validate
from fruix_core.profile import phases_from, read_make_configuration
from fruix_core.resultroot import (
    ResultRoot,
    build_metadata,
    new_run_id,
    resolve_run,
    swap_latest,
)
from fruix_core.runrecord import iso_time

log = structlog.get_logger(__name__)

__all__ = ["RunOutcome", "plan_build", "run_build"]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What ``fruix native-build run`` reports.

    ``status`` is the result root's status as the run left it (``ok``).
    """

    run_id: str
    executor: str
    status: str
    result_root: Path
    store: Path
    guest: str = ""
    bundle: Path | None = None
    artifacts: dict[str, Path] | None = None
    executor_version: str = ""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id, "executor": self.executor,
            "executor_version": self.executor_version, "status": self.status,
            "result_root": str(self.result_root), "store": str(self.store),
        }
        if self.guest:
            data["guest"] = self.guest
        if self.bundle is not None:
            data["bundle"] = str(self.bundle)
            data["artifacts"] = {k: str(v) for k, v in (self.artifacts or {}).items()}
        return data


def _source_dir(config: Config) -> Path:
    if config.source is not None:
        return config.source
    from fruix_core.sample import sample_base_path

    return sample_base_path()


def _now() -> str:
    return str(iso_time(_dt.datetime.now(_dt.UTC)))


def _resume_point(config: Config, run_id: str, executor: str) -> tuple[ResultRoot, str]:
    root = resolve_run(config.results, run_id)
    status = root.status()
    if status.state == "ok":
        raise UsageError(f"run {root.run_id} already finished; nothing to resume")
    if status.state == "running" and not status.stale:
        raise UsageError(f"run {root.run_id} is still running (pid {status.pid})")
    recorded = root.read_metadata().get("executor")
    if recorded and recorded != executor:
        raise UsageError(f"run {root.run_id} was made by executor '{recorded}', not '{executor}'")
    phase = status.phase if status.state == "failed" and status.phase else None
    known = [p.name for p in phases_from(None)]
    if phase not in known:
        phase = known[0]
    return root, phase


@contextmanager
def _writing(what: str) -> Iterator[None]:
    """The core's own writes (result root, logs, metadata): a failure is one clean line.

    A full disk (``ENOSPC``, ``EDQUOT``) or a file system turned read-only
    mid-run is infrastructure (exit 3), never an internal error.
    """
    try:
        yield
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = "its file system is full" if full else "cannot write"
        where = f": {exc.filename}" if exc.filename else ""
        raise WorkAreaError(f"{what}: {reason} ({exc.strerror}{where})") from None


class _PhaseLogs:
    """``logs/<phase>.log`` on the host, written from the lines executors hand over.

    Lines arrive on an executor's thread: a log that cannot be written (a
    full disk) is not raised there — an executor's reader thread would die
    and its command block on a full pipe — but recorded in ``failure``, and
    the run is cancelled so the phase stops; the runner raises it.
    """

    def __init__(self, root: ResultRoot, forward: Callable[[str, str], None] | None,
                 cancel: CancelToken | None = None) -> None:
        self.root = root
        self.forward = forward
        self.cancel = cancel
        self.failure: WorkAreaError | None = None
        self._files: dict[str, IO[str]] = {}
        self._lock = threading.Lock()

    def start(self, phase: str) -> None:
        with self._lock, _writing(f"log of {phase} in {self.root.path}"):
            self.root.logs.mkdir(parents=True, exist_ok=True)
            old = self._files.pop(phase, None)
            if old is not None:
                old.close()
            self._files[phase] = open(self.root.log_path(phase), "w", encoding="utf-8",
                                      errors="surrogateescape",
                                      buffering=1)

    def _close_quietly(self, handle: IO[str]) -> None:
        try:
            handle.close()
        except OSError:  # the flush of a full disk: already recorded
            pass

    def end(self, phase: str) -> None:
        with self._lock:
            handle = self._files.pop(phase, None)
            if handle is not None:
                self._close_quietly(handle)

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                self._close_quietly(handle)
            self._files.clear()

    def output(self, phase: str, line: str) -> None:
        with self._lock:
            if self.failure is None:
                try:
                    with _writing(f"log of {phase} in {self.root.path}"):
                        handle = self._files.get(phase)
                        if handle is None:  # a line outside a running phase: keep it
                            self.root.logs.mkdir(parents=True, exist_ok=True)
                            handle = open(self.root.log_path(phase), "a", encoding="utf-8",
                                          errors="surrogateescape", buffering=1)
                            self._files[phase] = handle
                        handle.write(line.rstrip("\n") + "\n")
                except WorkAreaError as exc:
                    self.failure = exc
                    if self.cancel is not None:
                        self.cancel.cancel(str(exc))
        if self.forward is not None:
            self.forward(phase, line)

    def check(self) -> None:
        """Raise the failure to write a log, if there was one."""
        if self.failure is not None:
            raise self.failure


#: Seconds within which a second interrupt abandons a shielded teardown or release.
ABANDON_WINDOW = 3.0


@contextmanager
def _shielded(doing: str) -> Iterator[None]:
    """Keep a second Ctrl-C from cutting a teardown or a guest release short.

    The interrupt is not lost silently: the operator is told what is still
    going on and that it will finish (``doing``, e.g. "releasing guest xcpng").
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    last: list[float] = []

    def still(signum: int, frame: object) -> None:
        now = time.monotonic()
        if last and now - last[-1] <= ABANDON_WINDOW:
            log.warning(f"interrupted twice within {ABANDON_WINDOW:g} s: asking to stop "
                        f"{doing} (a guest provider may still finish it safely)")
            raise KeyboardInterrupt
        last.append(now)
        log.warning(f"still {doing}; it goes on until it is done (Ctrl-C again within "
                    f"{ABANDON_WINDOW:g} s abandons it)")

    previous = signal.signal(signal.SIGINT, still)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _state_of(exc: BaseException) -> str:
    return "interrupted" if isinstance(exc, (Cancelled, KeyboardInterrupt, SystemExit)) \
        else "failed"


class _Run:
    """One run's state, so each step of :func:`run_build` stays a few lines."""

    def __init__(self, config: Config, pm: FruixPluginManager, executor: LoadedPlugin,
                 root: ResultRoot, request: BuildRequest, logs: _PhaseLogs,
                 guest_name: str, on_event: Callable[[RunEvent], None] | None = None) -> None:
        self.config = config
        self.pm = pm
        self.executor = executor
        self.root = root
        self.request = request
        self.logs = logs
        self.guest_name = guest_name
        self.stage = "prepare"
        self.metadata: dict[str, object] = {}
        self.started = time.monotonic()
        self.bound = log.bind(run_id=request.run_id, executor=request.executor)
        self.on_event = on_event

    # -- records ---------------------------------------------------------------------

    def stamp(self, values: dict[str, object]) -> None:
        self.metadata.update(values)
        with _writing(f"metadata of run {self.request.run_id}"):
            self.root.write_metadata(self.metadata)

    def provenance(self) -> dict[str, object]:
        values: dict[str, object] = {
            "run_id": self.request.run_id,
            "executor": self.executor.name,
            "executor_version": self.executor.version,
            "executor_distribution": self.executor.distribution,
            "core_version": CORE_VERSION,
        }
        if self.guest_name:
            values["guest"] = self.guest_name
        return values

    def event(self, kind: str, **fields: Any) -> None:
        """Tell the run's progress listener every event, and observers the run and phase ones."""
        from fruix_core.observers import notify

        event = RunEvent(kind=kind, run_id=self.request.run_id, executor=self.executor.name,
                         executor_version=self.executor.version,
                         result_root=str(self.root.path), **fields)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception as exc:  # a display must not change the run: stop feeding it
                self.on_event = None
                self.bound.debug("progress display failed", error=f"{type(exc).__name__}: {exc}")
        if kind in OBSERVED_KINDS:
            notify(self.pm, event)

    def guest_step(self, text: str) -> None:
        """A guest provider's step (``booting VM…``), for the progress display."""
        self.event("guest-step", guest=self.guest_name, message=text)

    def place(self, phase: str) -> dict[str, Any]:
        """``number``/``count`` of ``phase`` among the run's phases, and its log."""
        names = [p.name for p in self.request.phases]
        number = names.index(phase) + 1 if phase in names else None
        return {"number": number, "count": len(names), "log": str(self.root.log_path(phase))}

    # -- the executor's stages ---------------------------------------------------------

    def build(self, env: PreparedEnv) -> tuple[StagedArtifacts, EmittedResult]:
        request, cancel = self.request, self.request.cancel
        self.stamp(build_metadata(request, env, None))
        self.stamp(self.provenance())
        for phase in phases_from(request.resume_from):
            self.stage = phase.name
            if cancel.cancelled:
                raise Cancelled(cancel.reason or "interrupted")
            self.bound.info("phase started", phase=phase.name)
            self.event("phase-started", phase=phase.name, **self.place(phase.name))
            self.stamp({f"phase_{phase.name}_started": _now()})
            began = time.monotonic()
            self.logs.start(phase.name)
            try:
                result = None
                if request.attaching and phase.name == request.resume_from:
                    result = self.pm.attach_phase(request, env, phase)  # None: never started
                result = result or self.pm.run_phase(request, env, phase)
                self.logs.check()
                if not result.ok:
                    raise BuildFailed(phase.name, result.returncode,
                                      "\n".join(result.last_lines),
                                      log_path=self.root.log_path(phase.name))
            except BaseException as exc:
                self.event("phase-failed", phase=phase.name, error=str(exc) or type(exc).__name__,
                           seconds=round(time.monotonic() - began, 3), **self.place(phase.name))
                self.logs.check()  # a log that could not be written is why the phase stopped
                raise
            finally:
                self.logs.end(phase.name)
                seconds = round(time.monotonic() - began, 3)
                self.stamp({f"phase_{phase.name}_finished": _now(),
                            f"phase_{phase.name}_seconds": seconds})
            self.bound.info("phase finished", phase=phase.name, returncode=result.returncode,
                            seconds=seconds)
            self.event("phase-finished", phase=phase.name, seconds=seconds,
                       **self.place(phase.name))
        began = time.monotonic()
        self.event("staging-started")
        self.stage = "stage"
        staged = self.pm.stage_artifacts(request, env)
        self.stage = "emit"
        emitted = self.pm.emit_promotion(request, env, staged)
        self.event("staging-finished", seconds=round(time.monotonic() - began, 3))
        if cancel.cancelled:
            raise Cancelled(cancel.reason or "interrupted")
        return staged, emitted

    def build_in(self, prepare: Callable[[], PreparedEnv],
                 check: Callable[[PreparedEnv], None] | None = None
                 ) -> tuple[PreparedEnv, StagedArtifacts, EmittedResult]:
        """``prepare`` an environment, ``check`` it, build in it; the phase logs are
        closed and a prepared environment is torn down whatever happens."""
        env: PreparedEnv | None = None
        end = RunEnd("failed", "prepare")
        try:
            env = prepare()
            if check is not None:
                check(env)
            staged, emitted = self.build(env)
            end = RunEnd("ok")
        except BaseException as exc:
            end = RunEnd(_state_of(exc), self.stage)
            raise
        finally:
            self.logs.close()
            if env is not None:
                self.teardown(env, end)
        return env, staged, emitted

    def teardown(self, env: PreparedEnv, end: RunEnd) -> None:
        began = time.monotonic()
        self.event("teardown-started", status=end.state)
        with _shielded("tearing down the build environment"):
            try:
                self.pm.teardown_env(self.request, env, end)
                self.bound.info("environment torn down", outcome=end.state)
                self.event("teardown-finished", status=end.state,
                           seconds=round(time.monotonic() - began, 3))
            except Exception as exc:  # must not hide the run's own error
                self.bound.error("teardown failed", error=str(exc))
                self.event("teardown-finished", status=end.state, error=str(exc),
                           seconds=round(time.monotonic() - began, 3))
                if end.ok:
                    self.stage = "teardown"
                    raise

    def release(self, guest: Guest, end: RunEnd) -> None:
        began = time.monotonic()
        self.event("guest-releasing", guest=guest.name, host=guest.host, status=end.state)
        with _shielded(f"releasing guest {guest.name}"):
            try:
                self.pm.release_guest(guest, end.state)
                self.bound.info("guest released", guest=guest.name, outcome=end.state)
                self.event("guest-released", guest=guest.name, host=guest.host,
                           status=end.state, seconds=round(time.monotonic() - began, 3))
            except Exception as exc:  # release must not hide the run's own error
                self.bound.error("guest release failed", guest=guest.name, error=str(exc))
                self.event("guest-released", guest=guest.name, host=guest.host,
                           status=end.state, error=str(exc),
                           seconds=round(time.monotonic() - began, 3))
                if end.ok:
                    raise

    # -- after the build: import, provenance, records -------------------------------------

    def import_from_guest(self, emitted: EmittedResult) -> dict[str, str]:
        """Fetch the guest's result root; keep its artifacts, METALOGs and promotion.scm.

        :returns: the guest's metadata.
        """
        from fruix_core.promotion.metalog import METALOG_DIR
        from fruix_core.transport.ssh import connect
        from fruix_core.transport.tarstream import fetch_tree, verify_result_root

        self.stage = "import"
        guest = self.request.guest
        remote = str(emitted.result_root)
        if guest is None:
            raise PluginContractError(self.executor.label, "fruix_emit_promotion",
                                      "returned a result root in a guest, but the run has none")
        if posixpath.basename(remote.rstrip("/")) != self.request.run_id:
            raise ProvenanceError(
                f"{self.executor.label}: fruix_emit_promotion handed back the guest result "
                f"root {remote}, which is not the one of run {self.request.run_id}")
        incoming = self.root.path / ".import"
        if incoming.exists():
            shutil.rmtree(incoming)
        began = time.monotonic()
        self.event("import-started", guest=guest.name, host=guest.host)
        session = connect(guest)
        try:
            # With a progress display the import is its step; no second line on stderr.
            fetch_tree(session, remote, incoming, verify=verify_result_root,
                       progress=False if self.on_event is not None else None)
        finally:
            session.close()
        self.event("import-finished", guest=guest.name, host=guest.host,
                   seconds=round(time.monotonic() - began, 3))
        try:
            # The METALOGs (metalog/) give the artifacts' owners, modes and flags when the
            # guest built as an unprivileged user (-DNO_ROOT).
            for name in ("artifacts", METALOG_DIR, "promotion.scm"):
                target = self.root.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
                if (incoming / name).exists() or (incoming / name).is_symlink():
                    os.rename(incoming / name, target)
            return ResultRoot(incoming).read_metadata()
        finally:
            shutil.rmtree(incoming, ignore_errors=True)

    def check_provenance(self, emitted: EmittedResult) -> None:
        from fruix_core.promotion.schema import read_promotion

        self.stage = "emit"
        label = self.executor.label
        if not emitted.in_guest:
            given = Path(emitted.result_root)
            if given.resolve() != self.root.path.resolve():
                raise ProvenanceError(
                    f"{label}: fruix_emit_promotion handed back {given}, not the result root "
                    f"the core reserved for run {self.request.run_id} ({self.root.path})")
        if not self.root.promotion_file.is_file():
            raise ProvenanceError(f"{label}: the result root has no promotion.scm")
        promotion = read_promotion(self.root.promotion_file)
        problems = []
        if promotion.executor != self.request.executor:
            problems.append(f"executor {promotion.executor!r}, but this run's executor is "
                            f"{self.request.executor!r}")
        if promotion.executor_version != self.request.executor_version:
            problems.append(f"executor-version {promotion.executor_version!r}, but "
                            f"{self.executor.distribution or 'the plugin'} is version "
                            f"{self.request.executor_version!r}")
        if promotion.run_id != self.request.run_id:
            problems.append(f"run-id {promotion.run_id!r}, but this run is "
                            f"{self.request.run_id!r}")
        if problems:
            raise ProvenanceError(f"{label}: promotion.scm refused: it names "
                                  + "; ".join(problems))


def _plugins(config: Config, executor_name: str, guest_name: str, executor_plugin: Any,
             provider_plugin: Any, extra_plugins: tuple[Any, ...]
             ) -> tuple[FruixPluginManager, LoadedPlugin]:
    """Load and check every plugin of the run and every plugin table; nothing is written yet."""
    from fruix_core.plugins import check_settings, make_plugin_manager

    settings = check_settings(config)
    if executor_plugin is not None:
        executor = identify("executor", executor_plugin, executor_name)
        validate(executor, require_api=False)
    else:
        executor = load("executor", executor_name)
    provider = None
    if guest_name:
        if provider_plugin is not None:
            provider = identify("guest-provider", provider_plugin, guest_name)
            validate(provider, require_api=False)
        else:
            provider = load("guest-provider", guest_name)
    observers = [load("observer", name) for name in config.observers]
    for observer in observers:
        configure = getattr(observer.plugin, "configure", None)
        if callable(configure):
            configure(settings["observers"].get(observer.name, {}))
    pm = make_plugin_manager(executor, provider, *observers, *extra_plugins)
    return pm, executor


@dataclass(frozen=True, slots=True)
class _Start:
    """What a run (or a dry run) knows before it writes anything."""

    pm: FruixPluginManager
    executor: LoadedPlugin
    guest: str
    promote: bool
    source_dir: Path
    make_configuration: tuple[tuple[str, bytes], ...]
    identity: dict[str, str]
    checks: Any
    resume_root: ResultRoot | None = None
    resume_from: str | None = None


def _start(config: Config, executor: str | None, guest: str | None, promote: bool | None,
           resume: str | None, executor_plugin: Any = None, provider_plugin: Any = None,
           extra_plugins: tuple[Any, ...] = (), *, create: bool) -> _Start:
    """Plugins, the configuration's identity, the resume point and the preflight checks.

    Nothing is written, except the results and build directories ``create``
    makes when they are missing.
    """
    from fruix_core.preflight import preflight
    from fruix_core.runidentity import configuration_identity, identity_changes

    executor_name = executor or config.executor
    guest_name = config.guest if guest is None else guest
    origin = "--guest" if guest is not None else f"build.guest in {config.file}"
    do_promote = config.promote if promote is None else promote
    pm, loaded = _plugins(config, executor_name, guest_name, executor_plugin, provider_plugin,
                          extra_plugins)
    source_dir = _source_dir(config)
    contents = read_make_configuration(config.make_configuration, config.file)
    identity = configuration_identity(config, source_dir, contents)
    root = resume_from = None
    if resume:
        root, resume_from = _resume_point(config, resume, executor_name)
        changes = identity_changes(root.read_metadata(), identity)
        if changes:
            raise UsageError(f"run {root.run_id} cannot be resumed with this configuration: "
                             + "; ".join(changes))
    checks = preflight(config, executor=executor_name, executor_plugin=loaded.plugin,
                       guest=guest_name, guest_origin=origin, promote=do_promote,
                       resume=(root.run_id, resume_from) if root and resume_from else None,
                       create=create)
    return _Start(pm, loaded, guest_name, do_promote, source_dir, contents, identity, checks,
                  root, resume_from)


def plan_build(config: Config, *, executor: str | None = None, guest: str | None = None,
               promote: bool | None = None, resume: str | None = None,
               executor_plugin: Any = None, provider_plugin: Any = None) -> dict[str, Any]:
    """What :func:`run_build` would do, after the same checks; nothing is created.

    :returns: the ``fruix.plan/1`` document (:mod:`fruix_core.plan`).
    :raises FruixError: what the run would fail with before its result root.
    """
    from fruix_core.plan import describe_plan

    start = _start(config, executor, guest, promote, resume, executor_plugin, provider_plugin,
                   create=False)
    return describe_plan(config, executor=start.executor, provider=start.pm.provider,
                         guest=start.guest, promote=start.promote, source_dir=start.source_dir,
                         make_configuration=start.make_configuration,
                         identity=start.identity, checks=start.checks,
                         resume=(start.resume_root.run_id, start.resume_from)
                         if start.resume_root is not None and start.resume_from else None)


def run_build(
    config: Config,
    *,
    executor: str | None = None,
    guest: str | None = None,
    promote: bool | None = None,
    resume: str | None = None,
    cancel: CancelToken | None = None,
    on_output: Callable[[str, str], None] | None = None,
    executor_plugin: Any = None,
    provider_plugin: Any = None,
    extra_plugins: tuple[Any, ...] = (),
    progress: Callable[[Any], None] | None = None,
    on_event: Callable[[RunEvent], None] | None = None,
) -> RunOutcome:
    """Run one native base build and (by default) promote it.

    ``executor_plugin`` / ``provider_plugin`` bypass discovery (tests);
    ``extra_plugins`` are registered beside them (hook wrappers: tracing, timing);
    ``progress`` receives the promotion engine's progress (files and bytes);
    ``on_event`` every :class:`~fruix_core.model.RunEvent` of the run (the
    progress display), also the guest, teardown, import and promotion steps
    that observers do not hear.

    :raises BuildFailed: a phase failed (status ``failed <phase>``).
    :raises Cancelled: Ctrl-C / SIGTERM.
    :raises FruixError: anything else, already reported in one line; the
        error carries ``run_id``, ``result_root`` and ``stage`` once the
        result root exists.
    """
    cancel = cancel or CancelToken()
    start = _start(config, executor, guest, promote, resume, executor_plugin, provider_plugin,
                   extra_plugins, create=True)
    pm, loaded, guest_name, do_promote = start.pm, start.executor, start.guest, start.promote
    source_dir = start.source_dir
    previous: dict[str, str] = {}
    with _writing(f"results directory {config.results}"):
        if start.resume_root is not None:
            root, resume_from = start.resume_root, start.resume_from
            previous = root.read_metadata()
        else:
            root, resume_from = ResultRoot(config.results / new_run_id(config.results)), None
        try:
            root.create()
        except OSError:
            if start.resume_root is None and not (root.path / "status").exists():
                shutil.rmtree(root.path, ignore_errors=True)  # nothing of it was recorded
            else:
                root.record_failure("prepare")
            raise
    run_id = root.run_id
    logs = _PhaseLogs(root, on_output, cancel)
    request = _request(config, root, loaded, source_dir, resume_from, cancel, logs,
                       make_configuration=start.make_configuration)
    run = _Run(config, pm, loaded, root, request, logs, guest_name, on_event)
    run.metadata.update(previous)
    try:
        run.stamp({**run.provenance(), **start.identity,
                   "started": previous.get("started") or _now()}
                  | ({"resumed": _now(), "resumed_from": resume_from} if resume_from else {}))
    except BaseException as exc:
        _fail(run, exc)
        raise
    run.bound.info("run started", guest=guest_name or None, resume_from=resume_from)
    run.event("run-started", guest=guest_name or None, log=str(root.logs),
              count=len(request.phases))

    acquired: Guest | None = None
    released = False

    def release(end: RunEnd) -> None:
        """Give the guest back once (after the import: the guest must still be there)."""
        nonlocal released
        if acquired is not None and not released:
            released = True
            run.release(acquired, end)

    def prepare() -> PreparedEnv:
        """Acquire the guest (if any), then prepare the executor's environment."""
        nonlocal acquired, request
        if guest_name:
            run.stage = "acquire-guest"
            run.event("guest-acquiring", guest=guest_name)
            began = time.monotonic()
            acquired = pm.acquire_guest(GuestRequest(
                provider=guest_name, run_id=run_id,
                settings=config.guest_settings(guest_name), config_file=config.file,
                cancel=cancel, on_step=run.guest_step))
            acquired = _with_steps(acquired, run.guest_step)
            request = run.request = _with_guest(request, acquired)
            run.bound.info("guest acquired", guest=acquired.name, host=acquired.host)
            run.event("guest-acquired", guest=acquired.name, host=acquired.host,
                      seconds=round(time.monotonic() - began, 3))
            from fruix_core.attach import guest_record

            run.stamp(guest_record(acquired))  # what attach needs to come back
        run.stage = "prepare"
        return pm.prepare_env(request)

    try:
        env, staged, emitted = run.build_in(prepare)
        _conclude(run, env, staged, emitted, release)
    except (KeyboardInterrupt, SystemExit):
        failure = Cancelled("interrupted")
        _fail(run, failure)
        try:
            release(RunEnd("interrupted", run.stage))
        finally:
            _failed_event(run, failure)
        raise failure from None
    except BaseException as exc:
        _fail(run, exc)
        try:
            release(RunEnd(_state_of(exc), run.stage))
        finally:
            _failed_event(run, exc)
        raise

    return _promoted(run, do_promote, progress)


def _request(config: Config, root: ResultRoot, loaded: LoadedPlugin, source_dir: Path,
             resume_from: str | None, cancel: CancelToken, logs: _PhaseLogs,
             **more: Any) -> BuildRequest:
    """The executor's view of a run (``more``: ``guest``, ``attaching``,
    ``make_configuration`` when the caller already read it)."""
    if "make_configuration" not in more:
        more["make_configuration"] = read_make_configuration(config.make_configuration,
                                                             config.file)
    return BuildRequest(
        run_id=root.run_id, executor=loaded.name, base=config.base, phases=phases_from(None),
        jobs=config.jobs, make=config.make, source_dir=source_dir,  # 0: the build machine's
        results_dir=config.results, result_root=root.path,
        build_root=config.build_root / root.run_id, environment=sanitised_environment(),
        environment_policy=ENVIRONMENT_POLICY, phase_timeout=config.phase_timeout,
        settings=config.executor_settings(loaded.name), resume_from=resume_from,
        cancel=cancel, on_output=logs.output, executor_version=loaded.version,
        executor_distribution=loaded.distribution, **more,
    )


def _conclude(run: _Run, env: PreparedEnv | None, staged: StagedArtifacts | None,
              emitted: EmittedResult, release: Callable[[RunEnd], None]) -> None:
    """After the executor's stages: import, provenance, metadata, guest, ``ok``, ``latest``.

    ``env`` is ``None`` when only the import is left (``attach`` of a run whose
    phases ended): the imported metadata is then the build's.
    """
    config, root, request = run.config, run.root, run.request
    guest_metadata: dict[str, str] = {}
    if emitted.in_guest:
        guest_metadata = run.import_from_guest(emitted)
    run.check_provenance(emitted)
    run.stage = "emit"
    # Without an environment, the guest's final metadata is the build's (not the host's
    # snapshot of it taken while the phases ran).
    built = build_metadata(request, env, staged) if env is not None else guest_metadata
    final = {**guest_metadata, **run.metadata, **built, **run.provenance(), "finished": _now(),
             "run_seconds": round(time.monotonic() - run.started, 3)}
    run.metadata = {}
    run.stamp(final)
    if request.cancel.cancelled:  # a Ctrl-C during the teardown or the import
        raise Cancelled(request.cancel.reason or "interrupted")
    run.stage = "release-guest"
    release(RunEnd("ok"))
    with _writing(f"result root {root.path}"):
        root.set_ok()
        swap_latest(config.results, root.run_id)
    if not config.keep_build_area:
        from fruix_core.prune import remove_build_area

        remove_build_area(config, root.run_id)
    run.bound.info("run finished", result_root=str(root.path))


def _promoted(run: _Run, do_promote: bool, progress: Callable[[Any], None] | None
              ) -> RunOutcome:
    """Promote a run that ended ``ok`` (unless told not to); what the command reports."""
    root, config = run.root, run.config
    bundle = artifacts = None
    if do_promote:
        from fruix_core.promotion import promote as promote_root

        began = time.monotonic()
        run.event("promotion-started", message=str(config.store))
        try:
            promoted = promote_root(root.path, config.store, progress=progress)
        except FruixError as exc:
            exc.run_id, exc.result_root, exc.stage = root.run_id, str(root.path), "promote"
            run.event("run-failed", status="ok", phase="promote", error=str(exc),
                      seconds=round(time.monotonic() - run.started, 3))
            raise
        bundle, artifacts = promoted.bundle, dict(promoted.artifacts)
        root.record_promotion(bundle, artifacts)
        run.event("promotion-finished", bundle=str(bundle), message=str(config.store),
                  seconds=round(time.monotonic() - began, 3))
    run.event("run-finished", status="ok", seconds=round(time.monotonic() - run.started, 3),
              bundle=str(bundle) if bundle is not None else None)
    return RunOutcome(run_id=root.run_id, executor=run.executor.name,
                      status=str(root.status()), result_root=root.path, store=config.store,
                      guest=run.guest_name, bundle=bundle, artifacts=artifacts,
                      executor_version=run.executor.version)


def _with_guest(request: BuildRequest, guest: Guest) -> BuildRequest:
    import dataclasses

    return dataclasses.replace(request, guest=guest)


def _with_steps(guest: Guest, step: Callable[[str], None]) -> Guest:
    """``guest`` whose :meth:`~fruix_core.model.Guest.step` reaches the progress display."""
    import dataclasses

    return dataclasses.replace(guest, on_step=step)


def _fail(run: _Run, exc: BaseException) -> None:
    """Record the failure of ``run`` at its current stage (before the guest goes back)."""
    run.root.record_failure(run.stage)
    if isinstance(exc, FruixError):
        exc.run_id, exc.result_root = run.request.run_id, str(run.root.path)
        exc.stage = exc.stage or run.stage
    run.bound.info("run failed", stage=run.stage, error=str(exc))


def _failed_event(run: _Run, exc: BaseException) -> None:
    """Tell the observers and the display that ``run`` failed: its last event."""
    run.event("run-failed", status=str(run.root.status()), phase=run.stage, error=str(exc),
              seconds=round(time.monotonic() - run.started, 3))
