"""The build inside the guest: checks, run id, the five phases, the result root.

The helper reuses the ``local`` executor: :class:`InGuestExecutor` is a
:class:`~fruix_local.LocalExecutor` whose name is ``guest-self-hosted``, whose
version is the helper version, and whose ``prepare_env`` takes the source
store from the guest's own ``store-layout.scm`` instead of the host's config.
:func:`run_in_guest` calls its four hooks in order and keeps the guest's result
root (status, logs, metadata), as the core's runner does on the host::

    <root>/var/lib/fruix/native-builds/<run-id>/          the result root (small, legible)
    <root>/var/lib/fruix/native-builds/latest -> <run-id> swapped once the root is complete
    <root>/var/tmp/fruix-self-hosted-native-builds/<run-id>/  objects and stages (heavy)

Every path is seen through the system root (``/`` in production).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from fruix_local import LocalExecutor, check_source, check_tools

from fruix_core.api import (
    BASE_PATH,
    CORE_VERSION,
    ENVIRONMENT_POLICY,
    PHASES,
    BaseMetadata,
    BuildFailed,
    BuildRequest,
    Cancelled,
    CancelToken,
    EmittedResult,
    GuestError,
    PhaseResult,
    PreparedEnv,
    ResultRoot,
    SourceStore,
    StagedArtifacts,
    StoreLayout,
    UsageError,
    build_metadata,
    check_declared_base,
    hookimpl,
    new_run_id,
    read_store_layout,
    sanitised_environment,
    swap_latest,
)
from fruix_guest_self_hosted.__about__ import __version__

__all__ = [
    "EXECUTOR_NAME",
    "OVERLAY",
    "RESULTS_DIR",
    "WORK_DIR",
    "GuestFacts",
    "GuestRun",
    "InGuestExecutor",
    "check_overlay",
    "inspect_guest",
    "mark_interrupted",
    "finish_run",
    "prepare_run",
    "reserve_run_id",
    "run_in_guest",
    "run_phase",
]

log = structlog.get_logger(__name__)

EXECUTOR_NAME = "guest-self-hosted"
#: Result roots, as the guest sees them.
RESULTS_DIR = "/var/lib/fruix/native-builds"
#: Heavy object and stage work, as the guest sees it.
WORK_DIR = "/var/tmp/fruix-self-hosted-native-builds"
#: The development overlay: (directory, file it must hold or None for "not empty").
OVERLAY: tuple[tuple[str, str | None], ...] = (("/usr/include", None), ("/usr/share/mk", "sys.mk"))

_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def on_root(system_root: Path, guest_path: str) -> Path:
    """This machine's path of a guest path seen through ``system_root``."""
    return system_root / guest_path.lstrip("/")


# -- checks -------------------------------------------------------------------------------


def _overlay_problem(path: Path, marker: str | None) -> str | None:
    if path.is_symlink() and not path.exists():
        return f"is a dangling link (to {os.readlink(path)})"
    if not path.exists():
        return "is missing"
    if not path.is_dir():
        return "is not a directory"
    try:
        entries = os.listdir(path)
    except OSError as exc:
        return f"is not readable ({exc.strerror})"
    if marker is not None and not (path / marker).is_file():
        return f"has no {marker}"
    if not entries:
        return "is empty"
    return None


def check_overlay(system_root: Path) -> None:
    """Refuse a guest without the development overlay and its compatibility links.

    :raises GuestError: naming every missing piece.
    """
    problems = []
    for guest_path, marker in OVERLAY:
        problem = _overlay_problem(on_root(system_root, guest_path), marker)
        if problem:
            problems.append(f"{guest_path} {problem}")
    if problems:
        where = "" if str(system_root) == "/" else f" (system root {system_root})"
        raise GuestError(
            f"the development overlay is not present in this guest{where}: "
            f"{'; '.join(problems)}; boot a development-enabled Fruix system "
            "(or install its development profile) before building the base")


@dataclass(frozen=True, slots=True)
class GuestFacts:
    """What the helper found in the guest before building."""

    system_root: Path
    layout: StoreLayout
    source_dir: Path
    results_dir: Path
    work_dir: Path
    host_name: str

    @property
    def source(self) -> SourceStore:
        """Source provenance as the guest declares it (signature, else the store hash)."""
        return SourceStore(path=self.layout.source_path,
                           signature=self.layout.source_signature or self.layout.source_hash)

    def as_dict(self) -> dict[str, Any]:
        return {
            "system_root": str(self.system_root),
            "source_store": self.layout.source_path,
            "source_signature": self.source.signature,
            "source_dir": str(self.source_dir),
            "closure": self.layout.closure_path,
            "development_profile": self.layout.development_profile_path,
            "results_dir": str(self.results_dir),
            "work_dir": str(self.work_dir),
            "host_name": self.host_name,
        }


def inspect_guest(system_root: Path, make: str) -> GuestFacts:
    """Check the guest and recover its source store, without any help from the host.

    :raises GuestError: the development overlay is missing.
    :raises fruix_core.errors.MetadataError: ``store-layout.scm`` is missing or malformed.
    :raises fruix_core.errors.SourceTreeError: the source store is not a source tree.
    :raises fruix_core.errors.ToolMissingError: make or cc is not on the base PATH.
    """
    system_root = Path(system_root)
    if not system_root.is_dir():
        raise UsageError(f"system root {system_root} is not a directory")
    check_overlay(system_root)
    layout = read_store_layout(system_root)
    source_dir = on_root(system_root, layout.source_path)
    check_source(source_dir)
    check_tools(make, BASE_PATH)
    return GuestFacts(system_root=system_root, layout=layout, source_dir=source_dir,
                      results_dir=on_root(system_root, RESULTS_DIR),
                      work_dir=on_root(system_root, WORK_DIR), host_name=socket.gethostname())


def reserve_run_id(results_dir: Path, run_id: str | None) -> str:
    """Reserve ``run_id`` (or a fresh one) by creating its result root directory.

    Creating the directory is the reservation, so two helpers never share a run id.

    :raises UsageError: the id is malformed or already taken.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    if run_id is None:
        return new_run_id(results_dir)
    if not _RUN_ID_RE.match(run_id) or run_id == "latest":
        raise UsageError(f"invalid run id '{run_id}' (letters, digits, '.', '_', '-'; "
                         "at most 64 characters; not 'latest')")
    try:
        (results_dir / run_id).mkdir()
    except FileExistsError:
        raise UsageError(f"run id '{run_id}' is already taken in {results_dir}") from None
    return run_id


# -- the executor -------------------------------------------------------------------------


class InGuestExecutor(LocalExecutor):
    """The ``local`` executor, run by the helper inside the guest, on the guest's source store."""

    name = EXECUTOR_NAME

    def __init__(self, facts: GuestFacts) -> None:
        self.facts = facts

    def env_for(self, request: BuildRequest) -> PreparedEnv:
        """The prepared environment of a run, without touching anything."""
        layout = self.facts.layout
        return PreparedEnv(
            host_name=self.facts.host_name,
            environment=dict(request.environment),
            source_dir=str(request.source_dir),
            source=self.facts.source,
            build_root=str(request.build_root),
            result_root=str(request.result_root),
            closure_path=layout.closure_path,
            development_profile_path=layout.development_profile_path,
        )

    @hookimpl
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        root = ResultRoot(request.result_root)
        root.create()
        build_root = request.build_root
        if request.resume_from is None and build_root.exists():
            shutil.rmtree(build_root)
        build_root.mkdir(parents=True, exist_ok=True)
        env = self.env_for(request)
        metadata = build_metadata(request, env, None)
        if request.resume_from is not None:
            metadata = {**root.read_metadata(), **metadata, "resumed_from": request.resume_from}
        root.write_metadata(metadata)
        return env


# -- the run ------------------------------------------------------------------------------


@dataclass
class GuestRun:
    """What happened in one helper run (filled in as it goes; read for the summary)."""

    facts: GuestFacts | None = None
    run_id: str | None = None
    result_root: Path | None = None
    build_root: Path | None = None
    phases: list[PhaseResult] = field(default_factory=list)
    current: str = "prepare"
    staged: StagedArtifacts | None = None
    emitted: EmittedResult | None = None
    latest: bool = False
    #: ``-j`` of this run on this machine (0: not known yet).
    jobs: int = 0


@dataclass(frozen=True, slots=True)
class PhaseEvents:
    """Callbacks for the helper's output: build lines and phase boundaries."""

    on_output: Callable[[str, str], None] | None = None
    on_phase_start: Callable[[str], None] | None = None
    on_phase_end: Callable[[PhaseResult], None] | None = None


def mark_interrupted(run: GuestRun) -> None:
    """Say ``failed <phase>`` at once when a stop signal arrives, before stopping make.

    Whoever sent the signal may follow it with SIGKILL after a grace period
    (the SSH transport does); the status must not still say ``running`` then.
    A run that already reached ``ok`` keeps it.
    """
    if run.result_root is None:
        return
    root = ResultRoot(run.result_root)
    try:
        if root.status().state == "running":
            root.set_failed(run.current)
    except OSError as exc:
        log.error("cannot record interruption", result_root=str(root.path), error=str(exc))


def _request(facts: GuestFacts, run: GuestRun, *, jobs: int, make: str,
             base: BaseMetadata | None, phase_timeout: float | None, cancel: CancelToken,
             on_output: Callable[[str, str], None] | None, environ: dict[str, str] | None,
             resume_from: str | None = None) -> BuildRequest:
    assert run.run_id is not None and run.result_root is not None and run.build_root is not None
    return BuildRequest(
        run_id=run.run_id, executor=EXECUTOR_NAME, base=base or BaseMetadata(), phases=PHASES,
        jobs=jobs, make=make, source_dir=facts.source_dir, results_dir=facts.results_dir,
        result_root=run.result_root, build_root=run.build_root,
        environment=sanitised_environment(environ), environment_policy=ENVIRONMENT_POLICY,
        phase_timeout=phase_timeout, cancel=cancel, on_output=on_output,
        resume_from=resume_from, executor_version=__version__,
        executor_distribution="fruix-executor-guest-self-hosted",
    )


def _open_run(system_root: Path, make: str, run: GuestRun, run_id: str | None, *,
              reserve: bool) -> GuestFacts:
    """Inspect the guest and reserve ``run_id`` (``reserve``) or find the existing run."""
    facts = inspect_guest(system_root, make)
    run.facts = facts
    if reserve:
        run.run_id = reserve_run_id(facts.results_dir, run_id)
    else:
        if run_id is None or not _RUN_ID_RE.match(run_id) or run_id == "latest":
            raise UsageError(f"--run-id: not a run id: {run_id!r}")
        if not (facts.results_dir / run_id).is_dir():
            raise UsageError(f"no run '{run_id}' in {facts.results_dir}")
        run.run_id = run_id
    run.result_root = facts.results_dir / run.run_id
    run.build_root = facts.work_dir / run.run_id
    return facts


def _record_failure(run: GuestRun) -> None:
    if run.result_root is not None:
        ResultRoot(run.result_root).record_failure(run.current)


def prepare_run(*, system_root: Path, jobs: int, make: str = "make",
                base: BaseMetadata | None = None, run_id: str | None = None,
                resume: bool = False, run: GuestRun | None = None,
                environ: dict[str, str] | None = None) -> GuestRun:
    """Check the guest and open a run: reserve its id, create its result root and work area.

    With ``resume`` the run ``run_id`` must exist and not be ``ok`` or still
    running; its work area is kept, so the phases that succeeded need not run again.
    """
    run = run if run is not None else GuestRun()
    facts = _open_run(system_root, make, run, run_id, reserve=not resume)
    assert run.result_root is not None
    check_declared_base(facts.layout, base or BaseMetadata())
    resume_from = None
    if resume:
        status = ResultRoot(run.result_root).status()
        if status.state == "ok" or (status.state == "running" and not status.stale):
            raise UsageError(f"run {run.run_id} is {status}; only a failed run can be resumed")
        resume_from = status.phase or PHASES[0].name
    request = _request(facts, run, jobs=jobs, make=make, base=base, phase_timeout=None,
                       cancel=CancelToken(), on_output=None, environ=environ,
                       resume_from=resume_from)
    InGuestExecutor(facts).fruix_prepare_env(request)
    log.info("self-hosted run prepared", run_id=run.run_id, resume_from=resume_from)
    return run


def run_phase(*, system_root: Path, run_id: str, phase: str, jobs: int, make: str = "make",
              base: BaseMetadata | None = None, phase_timeout: float | None = None,
              cancel: CancelToken | None = None, events: PhaseEvents | None = None,
              run: GuestRun | None = None, environ: dict[str, str] | None = None
              ) -> PhaseResult:
    """Run one phase of a prepared run; its log goes to ``logs/<phase>.log`` in the guest.

    :raises BuildFailed: the phase exited non-zero (status ``failed <phase>``).
    :raises Cancelled: SIGTERM / SIGINT (status ``failed <phase>``).
    :raises fruix_core.errors.PhaseTimeout: the phase ran past ``phase_timeout``.
    """
    from fruix_core.api import phases_from

    run = run if run is not None else GuestRun()
    events = events or PhaseEvents()
    cancel = cancel or CancelToken()
    facts = _open_run(system_root, make, run, run_id, reserve=False)
    names = [p.name for p in PHASES]
    if phase not in names:
        raise UsageError(f"--phase: unknown phase {phase!r} (phases: {', '.join(names)})")
    step = phases_from(phase)[0]
    assert run.result_root is not None
    root = ResultRoot(run.result_root)
    run.current = phase
    handle: Any = None

    def on_output(name: str, line: str) -> None:
        if handle is not None:
            handle.write(line + "\n")
        if events.on_output is not None:
            events.on_output(name, line)

    request = _request(facts, run, jobs=jobs, make=make, base=base,
                       phase_timeout=phase_timeout, cancel=cancel, on_output=on_output,
                       environ=environ)
    executor = InGuestExecutor(facts)
    env = executor.env_for(request)
    try:
        if cancel.cancelled:
            raise Cancelled(cancel.reason or "interrupted")
        root.set_running()
        if events.on_phase_start is not None:
            events.on_phase_start(phase)
        with open(root.log_path(phase), "w", encoding="utf-8", buffering=1) as handle:
            result = executor.fruix_run_phase(request, env, step)
        handle = None
        run.phases.append(result)
        if events.on_phase_end is not None:
            events.on_phase_end(result)
        if not result.ok:
            raise BuildFailed(phase, result.returncode, "\n".join(result.last_lines),
                              log_path=root.log_path(phase))
    except (KeyboardInterrupt, SystemExit):
        _record_failure(run)
        raise Cancelled("interrupted") from None
    except BaseException:
        _record_failure(run)
        raise
    return result


def finish_run(*, system_root: Path, run_id: str, jobs: int, make: str = "make",
               base: BaseMetadata | None = None, keep_work: bool = False,
               run: GuestRun | None = None, environ: dict[str, str] | None = None) -> GuestRun:
    """Stage the artifacts of a run whose phases all succeeded and complete its result root.

    Writes ``promotion.scm``, ``metadata`` and ``status`` = ``ok``, swaps
    ``latest`` and removes the work area (unless ``keep_work``).
    """
    run = run if run is not None else GuestRun()
    facts = _open_run(system_root, make, run, run_id, reserve=False)
    assert run.result_root is not None and run.build_root is not None and run.run_id
    root = ResultRoot(run.result_root)
    status = root.status()
    if status.state == "failed":
        raise UsageError(f"run {run.run_id} failed in {status.phase}; resume it first")
    request = _request(facts, run, jobs=jobs, make=make, base=base, phase_timeout=None,
                       cancel=CancelToken(), on_output=None, environ=environ)
    executor = InGuestExecutor(facts)
    env = executor.env_for(request)
    try:
        run.current = "stage"
        run.staged = executor.fruix_stage_artifacts(request, env)
        run.current = "emit"
        run.emitted = executor.fruix_emit_promotion(request, env, run.staged)
        metadata = {**root.read_metadata(), **build_metadata(request, env, run.staged),
                    "core_version": CORE_VERSION,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        root.write_metadata(metadata)
        root.set_ok()
    except (KeyboardInterrupt, SystemExit):
        _record_failure(run)
        raise Cancelled("interrupted") from None
    except BaseException:
        _record_failure(run)
        raise
    # Only a complete result root (status ok, promotion.scm written) becomes latest.
    swap_latest(facts.results_dir, run.run_id)
    run.latest = True
    if not keep_work:
        shutil.rmtree(run.build_root, ignore_errors=True)
    log.info("self-hosted run finished", run_id=run.run_id, result_root=str(run.result_root))
    return run


def run_in_guest(
    *,
    system_root: Path,
    jobs: int,
    make: str = "make",
    base: BaseMetadata | None = None,
    run_id: str | None = None,
    phase_timeout: float | None = None,
    keep_work: bool = False,
    cancel: CancelToken | None = None,
    events: PhaseEvents | None = None,
    run: GuestRun | None = None,
    environ: dict[str, str] | None = None,
) -> GuestRun:
    """Build the base inside this guest in one go and leave a complete result root.

    The same steps the host drives one by one: :func:`prepare_run`,
    :func:`run_phase` for each phase, :func:`finish_run`.

    :param environ: the caller's environment (``os.environ``); only what
        :func:`~fruix_core.environment.sanitised_environment` keeps reaches make.
    :param run: filled in as the run goes, so a caller still knows the run id and
        the failing phase when this raises.
    :raises BuildFailed: a phase exited non-zero (status ``failed <phase>``).
    :raises Cancelled: SIGTERM / SIGINT (status ``failed <phase>``).
    :raises FruixError: the guest is unfit (nothing written) or the run broke.
    """
    run = run if run is not None else GuestRun()
    cancel = cancel or CancelToken()
    common: dict[str, Any] = {"system_root": system_root, "jobs": jobs, "make": make,
                              "base": base, "run": run, "environ": environ}
    prepare_run(run_id=run_id, **common)
    assert run.run_id is not None
    for phase in PHASES:
        run.current = phase.name
        if cancel.cancelled:
            _record_failure(run)
            raise Cancelled(cancel.reason or "interrupted")
        run_phase(run_id=run.run_id, phase=phase.name, phase_timeout=phase_timeout,
                  cancel=cancel, events=events, **common)
    return finish_run(run_id=run.run_id, keep_work=keep_work, **common)
