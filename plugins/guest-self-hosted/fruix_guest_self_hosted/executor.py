"""The host side of ``guest-self-hosted``: drive the guest's helper step by step.

The core's own phase loop drives the helper, one invocation per step, each
with the same options (see :mod:`fruix_guest_self_hosted.helper`)::

    HELPER --version                          prepare-env: refuse a missing or other helper
    HELPER --prepare --run-id ID [--resume]   prepare-env: check the guest, open the run
    HELPER --phase NAME --run-id ID           run-phase, once per phase
    HELPER --follow NAME --run-id ID          attach-phase: a phase an earlier host started
    HELPER --finish --run-id ID               stage-artifacts: stage, promotion.scm, status ok

``fruix_run_phase`` hands each output line to the core (the host's
``logs/<phase>.log`` and the live view) as the helper prints it, and
returns the phase's own exit status and duration from the helper's phase
markers. Because every phase is its own invocation, ``--resume`` works as
for every executor: ``--prepare --resume`` reopens the failed run in the
guest and keeps its work area.

``fruix_emit_promotion`` says where the guest's result root is; the core
imports it through one verified tar stream and checks its provenance
(executor, the helper's version, which must be this distribution's, and
run id). ``fruix_teardown_env`` records a failure in the guest's status and
hangs up. Cancel (Ctrl-C, SIGTERM) during a phase stops the helper's whole
process group in the guest (the helper then records ``failed <phase>``);
between two phases nothing runs in the guest.
Configuration: ``[executors.guest-self-hosted]`` (:data:`SCHEMA`).
"""

from __future__ import annotations

import collections
import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from fruix_core.api import (
    PLUGIN_API_VERSION,
    BuildRequest,
    Cancelled,
    ConfigError,
    EmittedResult,
    Guest,
    GuestError,
    Key,
    Phase,
    PhaseResult,
    PhaseTimeout,
    PreparedEnv,
    RunEnd,
    SourceStore,
    StagedArtifacts,
    UsageError,
    hookimpl,
    read_section,
    require_guest,
    sanitised_environment,
)
from fruix_guest_self_hosted.follow import helper_failure, output_tail, staged_from
from fruix_guest_self_hosted.protocol import PROG, parse_marker, unescape_output

__all__ = ["NAME", "SCHEMA", "GuestSelfHostedExecutor"]

log = structlog.get_logger(__name__)

NAME = "guest-self-hosted"

#: The keys of ``[executors.guest-self-hosted]``; docs/operator/self-hosted.rst documents them.
SCHEMA: dict[str, Key] = {
    "helper": Key(str, PROG, "the helper command in the guest (words allowed, e.g. "
                             "'python3 -m fruix_guest_self_hosted.helper')"),
    "keep_work": Key(bool, False, "keep the guest's object/stage work area after success"),
    "keepalive": Key((int, float), 15, "seconds of silence before a keepalive probe"),
    "check_timeout": Key((int, float), 120, "seconds the helper's --version/--check may take"),
}

TAIL_LINES = 20


def check_settings(table: Mapping[str, Any], *, file: str | None = None) -> dict[str, Any]:
    """Validate ``[executors.guest-self-hosted]``; the values with their defaults.

    :raises ConfigError: naming the file and the key.
    """
    prefix = f"executors.{NAME}"
    values = read_section(table, SCHEMA, file=file, prefix=prefix)
    try:
        words = shlex.split(values["helper"])
    except ValueError as exc:
        raise ConfigError(f"not a command line: {exc}", file=file,
                          key=f"{prefix}.helper") from None
    if not words:
        raise ConfigError("must name the helper command", file=file, key=f"{prefix}.helper")
    values["helper_argv"] = words
    for key in ("keepalive", "check_timeout"):
        if values[key] <= 0:
            raise ConfigError("must be more than 0 seconds", file=file, key=f"{prefix}.{key}")
    return values


def _settings(request: BuildRequest) -> dict[str, Any]:
    return check_settings(request.settings)


def _jobs_of(facts: Mapping[str, Any], request: BuildRequest) -> int:
    """``-j`` in the guest: the helper's report (its CPU count when asked for 0)."""
    jobs = facts.get("jobs")
    if isinstance(jobs, int) and not isinstance(jobs, bool) and jobs > 0:
        return jobs
    return request.jobs


class _State:
    """What one run keeps between hooks (in ``PreparedEnv.session``)."""

    def __init__(self, session: Any, settings: Mapping[str, Any], version: str,
                 guest: Guest) -> None:
        self.session = session
        self.settings = settings
        self.version = version
        self.guest = guest

    def close(self) -> None:
        self.session.close()


@dataclass
class _Step:
    """What one helper invocation printed: its phase markers and its summary."""

    ended: Any = None
    summary: dict[str, Any] | None = None
    tail: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=TAIL_LINES))


class GuestSelfHostedExecutor:
    """Builds the native base inside a Fruix guest through its self-hosted helper."""

    name = NAME
    fruix_plugin_api = PLUGIN_API_VERSION
    fruix_settings = SCHEMA
    #: Builds in a guest: a run without a guest provider is refused before anything starts.
    fruix_runs_in_guest = True

    @staticmethod
    def fruix_check_settings(table: Mapping[str, Any], *, file: str | None) -> None:
        """Refuse an ``[executors.guest-self-hosted]`` table :func:`check_settings` refuses."""
        check_settings(table, file=file)

    # -- preparation -----------------------------------------------------------------

    @hookimpl
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        from fruix_core.api import connect

        guest = require_guest(request, NAME)
        settings = _settings(request)
        if request.make_configuration:
            raise UsageError(f"executor '{NAME}' builds with the guest helper's pins "
                             "(/dev/null); declared build.srcconf, build.make_conf and "
                             "build.src_env_conf need the local or host-initiated executor")
        session = connect(guest, keepalive=float(settings["keepalive"]))
        try:
            version = self._check_version(session, guest, settings, request)
            state = _State(session, settings, version, guest)
            facts = self._prepare_run(state, request)
        except BaseException:
            session.close()
            raise
        run_id = request.run_id
        env = PreparedEnv(
            host_name=str(facts.get("host_name") or guest.host),
            environment=sanitised_environment({}),
            source_dir=str(facts["source_dir"]),
            source=SourceStore(path=str(facts["source_store"]),
                               signature=str(facts["source_signature"])),
            build_root=posixpath.join(str(facts["work_dir"]), run_id),
            result_root=posixpath.join(str(facts["results_dir"]), run_id),
            closure_path=facts.get("closure"),
            development_profile_path=facts.get("development_profile"),
            session=state,
            jobs=_jobs_of(facts, request),
        )
        log.info("guest ready for a self-hosted build", guest=guest.name, helper_version=version,
                 source=env.source.path, result_root=env.result_root)
        return env

    def _check_version(self, session: Any, guest: Guest, settings: Mapping[str, Any],
                       request: BuildRequest) -> str:
        from fruix_core.api import shell_script

        argv = settings["helper_argv"]
        command = " ".join(argv)
        where = f"guest {guest.name}"
        outcome = session.run_script(shell_script([*argv, "--version"]),
                                     timeout=float(settings["check_timeout"]))
        tail = output_tail(outcome.last_lines)
        if outcome.returncode == 127:
            raise GuestError(f"{where}: the self-hosted helper '{command}' is not installed "
                             f"(not found{': ' + tail if tail else ''}); install "
                             f"fruix-executor-guest-self-hosted {request.executor_version} in "
                             f"the guest or set executors.{NAME}.helper")
        if outcome.returncode == 126:
            raise GuestError(f"{where}: the self-hosted helper '{command}' is not executable")
        if outcome.returncode != 0 or outcome.timed_out:
            raise GuestError(f"{where}: '{command} --version' failed (exit status "
                             f"{outcome.returncode}){': ' + tail if tail else ''}")
        words = (outcome.last_lines[-1] if outcome.last_lines else "").split()
        if len(words) != 2 or words[0] != PROG:
            raise GuestError(f"{where}: '{command}' is not the Fruix self-hosted helper "
                             f"(its --version printed {tail!r})")
        version = words[1]
        # The helper's version is recorded as executor-version, which must be this
        # distribution's: the core takes provenance from the distribution.
        expected = request.executor_version
        if version != expected:
            raise GuestError(
                f"{where}: the self-hosted helper '{command}' is version {version}, but this "
                f"host expects {expected}; install fruix-executor-guest-self-hosted "
                f"{expected} in the guest (artifacts record the helper version, so a "
                "different helper never reuses them)")
        return version

    def _argv(self, state: _State, request: BuildRequest, *step: str) -> list[str]:
        """The helper's command line for one step; every step gets the same options."""
        base = request.base
        argv = [*state.settings["helper_argv"], *step, "--markers",
                "--system-root", state.guest.system_root, "--run-id", request.run_id,
                "--jobs", str(request.jobs), "--make", request.make,
                "--base-name", base.name, "--base-version", base.version,
                "--arch", base.arch, "--kernconf", base.kernconf]
        if request.phase_timeout:
            argv += ["--phase-timeout", f"{request.phase_timeout:g}"]
        if state.settings["keep_work"]:
            argv.append("--keep-work")
        return argv

    def _step(self, state: _State, request: BuildRequest, argv: list[str], *,
              phase: str | None = None, timeout: float | None = None) -> tuple[_Step, Any]:
        """Run one helper step, handing a phase's lines to the core as they come."""
        from fruix_core.api import shell_script

        step = _Step()

        def on_line(line: str) -> None:
            marker = parse_marker(line)
            if marker is None:
                text = unescape_output(line)
                step.tail.append(text)
                if phase is not None:
                    request.output(phase, text)
                elif text.strip():
                    log.info("helper output", guest=state.guest.name, line=text)
            elif marker.kind == "summary":
                step.summary = marker.document
            elif marker.kind == "phase-end":
                step.ended = marker

        # The helper runs in the guest user's login environment on purpose: it
        # sanitises the build environment itself and must be proven to.
        outcome = state.session.run_script(shell_script(argv), on_line=on_line,
                                           timeout=timeout, cancel=request.cancel)
        if outcome.cancelled:
            what = phase or argv[len(state.settings["helper_argv"])].lstrip("-")
            raise Cancelled(f"interrupted during {what}")
        return step, outcome

    def _prepare_run(self, state: _State, request: BuildRequest) -> dict[str, Any]:
        step = ["--prepare"] + (["--resume"] if request.resume_from is not None else []) + \
            (["--attach"] if request.attaching else [])
        done, outcome = self._step(state, request, self._argv(state, request, *step),
                                   timeout=float(state.settings["check_timeout"]))
        summary = done.summary
        if summary is None or summary.get("status") != "prepared":
            raise helper_failure(summary, outcome, state.guest.name)
        for key in ("source_dir", "source_store", "source_signature", "results_dir", "work_dir"):
            if not isinstance(summary.get(key), str) or not summary[key]:
                raise GuestError(f"guest {state.guest.name}: the helper's check did not report "
                                 f"'{key}'")
        return summary

    # -- building --------------------------------------------------------------------

    @hookimpl
    def fruix_run_phase(self, request: BuildRequest, env: PreparedEnv, phase: Phase) -> PhaseResult:
        state: _State = env.session
        request.output(phase.name, f"# {phase.name}, run by the self-hosted helper in guest "
                                   f"{state.guest.name}")
        result = self._phase_step(request, env, phase, "--phase")
        assert result is not None
        return result

    @hookimpl
    def fruix_attach_phase(self, request: BuildRequest, env: PreparedEnv,
                           phase: Phase) -> PhaseResult | None:
        """Follow a phase an earlier host started (``--follow``); ``None`` if it never ran."""
        state: _State = env.session
        request.output(phase.name, f"# {phase.name}, followed in guest {state.guest.name} "
                                   "(the self-hosted helper's run, taken up by attach)")
        return self._phase_step(request, env, phase, "--follow")

    def _phase_step(self, request: BuildRequest, env: PreparedEnv, phase: Phase,
                    step: str) -> PhaseResult | None:
        """The helper's ``--phase`` or ``--follow`` of ``phase``, as a :class:`PhaseResult`."""
        state: _State = env.session
        # The helper enforces the phase timeout; the host's is a safety net behind it.
        limit = request.phase_timeout + 60 if request.phase_timeout else None
        done, outcome = self._step(state, request,
                                   self._argv(state, request, step, phase.name),
                                   phase=phase.name, timeout=limit)
        summary = done.summary or {}
        if summary.get("status") == "not-started" and step == "--follow":
            return None
        if outcome.timed_out:
            raise PhaseTimeout(phase.name, request.phase_timeout or 0)
        if done.ended is not None and done.ended.phase == phase.name and \
                summary.get("status") in ("phase-ok", "failed") and \
                summary.get("error_type") in (None, "BuildFailed"):
            return PhaseResult(phase=phase.name, returncode=done.ended.returncode,
                               duration=done.ended.seconds, last_lines=tuple(done.tail))
        raise helper_failure(done.summary, outcome, state.guest.name)

    # -- result root -------------------------------------------------------------------

    @hookimpl
    def fruix_stage_artifacts(self, request: BuildRequest, env: PreparedEnv) -> StagedArtifacts:
        state: _State = env.session
        done, outcome = self._step(state, request, self._argv(state, request, "--finish"))
        summary = done.summary
        if summary is None or summary.get("status") != "ok" or outcome.returncode != 0:
            raise helper_failure(summary, outcome, state.guest.name)
        return staged_from(summary, env.result_root)

    @hookimpl
    def fruix_emit_promotion(self, request: BuildRequest, env: PreparedEnv,
                             staged: StagedArtifacts) -> EmittedResult:
        # The helper wrote promotion.scm in the guest; the core imports and checks it.
        return EmittedResult(result_root=env.result_root, in_guest=True)

    # -- teardown ----------------------------------------------------------------------

    @hookimpl
    def fruix_teardown_env(self, request: BuildRequest, env: PreparedEnv, outcome: RunEnd) -> None:
        state: _State = env.session
        try:
            if not outcome.ok and state.session.active:
                # Say in the guest what the host records, whatever the helper managed to
                # write before it stopped (a cancel between two phases included).
                root = shlex.quote(env.result_root)
                line = shlex.quote(f"failed {outcome.stage or 'prepare'}")
                state.session.check_output(
                    f"if [ -d {root} ]; then printf '%s\\n' {line} > {root}/status; fi",
                    what="recording the failure in the guest")
        finally:
            state.close()
        log.debug("self-hosted session closed", guest=state.guest.name,
                  outcome=outcome.state)
