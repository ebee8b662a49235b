"""One run, end to end: executor (+ guest) selection, the four hooks, promotion.

::

    select executor (+ guest provider)     stevedore
    acquire guest                          provider hook
    prepare-env, run-phase x5, stage-artifacts, emit-promotion
    promote into the store                 the core's engine
    release guest                          always, also on failure / Ctrl-C

The runner owns the host side of the result root: it reserves the run id,
records a failure when an executor could not, and swaps ``latest`` once a run
is complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from fruix_core.config import Config
from fruix_core.environment import ENVIRONMENT_POLICY, sanitised_environment
from fruix_core.errors import BuildFailed, Cancelled, FruixError, UsageError
from fruix_core.model import BuildRequest, CancelToken, GuestRequest
from fruix_core.plugins import load_plugin, make_plugin_manager
from fruix_core.profile import phases_from, read_make_configuration
from fruix_core.resultroot import ResultRoot, new_run_id, resolve_run, swap_latest

log = structlog.get_logger(__name__)

__all__ = ["RunOutcome", "run_build"]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What ``fruix native-build run`` reports."""

    run_id: str
    executor: str
    status: str
    result_root: Path
    store: Path
    guest: str = ""
    bundle: Path | None = None
    artifacts: dict[str, Path] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "run_id": self.run_id, "executor": self.executor, "status": self.status,
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
) -> RunOutcome:
    """Run one native base build and (by default) promote it.

    ``executor_plugin`` / ``provider_plugin`` bypass discovery (tests);
    ``extra_plugins`` are registered beside them (hook wrappers: tracing, timing);
    ``progress`` receives the promotion engine's progress (files and bytes).

    :raises BuildFailed: a phase failed (status ``failed <phase>``).
    :raises Cancelled: Ctrl-C / SIGTERM.
    :raises FruixError: anything else, already reported in one line.
    """
    executor_name = executor or config.executor
    guest_name = config.guest if guest is None else guest
    cancel = cancel or CancelToken()
    do_promote = config.promote if promote is None else promote

    plugin = executor_plugin or load_plugin("executor", executor_name)
    provider = None
    if guest_name:
        provider = provider_plugin or load_plugin("guest-provider", guest_name)

    source_dir = _source_dir(config)
    config.results.mkdir(parents=True, exist_ok=True)
    if resume:
        host_root, resume_from = _resume_point(config, resume, executor_name)
        run_id = host_root.run_id
    else:
        run_id = new_run_id(config.results)
        host_root, resume_from = ResultRoot(config.results / run_id), None

    phases = phases_from(None)
    request = BuildRequest(
        run_id=run_id, executor=executor_name, base=config.base, phases=phases,
        jobs=config.jobs, make=config.make, source_dir=source_dir,  # 0: the build machine's
        results_dir=config.results, result_root=host_root.path,
        build_root=config.build_root / run_id, environment=sanitised_environment(),
        environment_policy=ENVIRONMENT_POLICY, phase_timeout=config.phase_timeout,
        settings=config.executor_settings(executor_name), resume_from=resume_from,
        make_configuration=read_make_configuration(config.make_configuration, config.file),
        cancel=cancel, on_output=on_output,
    )
    pm = make_plugin_manager(plugin, provider, *extra_plugins)
    bound = log.bind(run_id=run_id, executor=executor_name)
    bound.info("run started", guest=guest_name or None, resume_from=resume_from)

    acquired = None
    outcome = "failed"
    current = "prepare"
    try:
        if provider is not None:
            current = "acquire-guest"
            acquired = pm.acquire_guest(GuestRequest(
                provider=guest_name, run_id=run_id, settings=config.guest_settings(guest_name),
                config_file=config.file, cancel=cancel))
            request = dataclasses.replace(request, guest=acquired)
            bound.info("guest acquired", guest=acquired.name, host=acquired.host)
        current = "prepare"
        env = pm.prepare_env(request)
        for phase in phases_from(resume_from):
            current = phase.name
            if cancel.cancelled:
                raise Cancelled(cancel.reason or "interrupted")
            bound.info("phase started", phase=phase.name)
            result = pm.run_phase(request, env, phase)
            bound.info("phase finished", phase=phase.name, returncode=result.returncode,
                       seconds=round(result.duration, 3))
            if not result.ok:
                raise BuildFailed(phase.name, result.returncode, "\n".join(result.last_lines),
                                  log_path=host_root.log_path(phase.name))
        current = "stage"
        staged = pm.stage_artifacts(request, env)
        current = "emit"
        emitted = pm.emit_promotion(request, env, staged)
        outcome = "ok"
    except Cancelled as exc:
        outcome = "interrupted"
        host_root.record_failure(current)
        exc.run_id = run_id  # type: ignore[attr-defined]
        exc.result_root = str(host_root.path)  # type: ignore[attr-defined]
        raise
    except (KeyboardInterrupt, SystemExit):
        outcome = "interrupted"
        host_root.record_failure(current)
        raise Cancelled("interrupted") from None
    except BaseException as exc:
        host_root.record_failure(current)
        if isinstance(exc, FruixError):
            exc.run_id = run_id  # type: ignore[attr-defined]
            exc.result_root = str(host_root.path)  # type: ignore[attr-defined]
        raise
    finally:
        if acquired is not None and provider is not None:
            try:
                pm.release_guest(acquired, outcome)
                bound.info("guest released", guest=acquired.name, outcome=outcome)
            except Exception as exc:  # release must not hide the run's own error
                bound.error("guest release failed", guest=acquired.name, error=str(exc))
                if outcome == "ok":
                    raise
    swap_latest(config.results, run_id)
    bound.info("run finished", result_root=str(emitted.result_root))

    bundle = artifacts = None
    if do_promote:
        from fruix_core.promotion import promote as promote_root

        promoted = promote_root(emitted.result_root, config.store, progress=progress)
        bundle, artifacts = promoted.bundle, dict(promoted.artifacts)
    return RunOutcome(run_id=run_id, executor=executor_name, status="ok",
                      result_root=emitted.result_root, store=config.store, guest=guest_name,
                      bundle=bundle, artifacts=artifacts)
