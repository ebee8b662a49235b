"""The host side of ``guest-self-hosted``: invoke the guest's helper once and follow it.

How the four executor hooks map onto one helper invocation:

``fruix_prepare_env``
    connect to the guest (host key verified); run ``HELPER --version`` and
    refuse a missing helper or one whose version is not the expected one;
    run ``HELPER --check`` so that an unfit guest (no development overlay, no
    ``store-layout.scm``, no make or cc) is refused before any phase, with the
    helper's own message.
``fruix_run_phase``
    the first call starts ``HELPER --markers --run-id <run id> ...`` in the
    guest, once, on a background thread; every call then follows the helper's
    output until the helper reports the end of *that* phase, writing each line
    to the host's ``logs/<phase>.log`` and the live view, and returns the
    phase's own exit status and duration. So each call still stands for one
    phase, as the hook contract says, although the guest drives them.
``fruix_stage_artifacts``
    wait for the helper to finish (it stages and writes ``promotion.scm``
    itself) and describe the artifacts from its summary document.
``fruix_emit_promotion``
    import the guest's result root to ``request.result_root`` through one tar
    stream, verified against its digests, its executor and helper version
    and its run id; the core promotes it.

Cancel (Ctrl-C, SIGTERM) and errors on the host stop the helper's whole
process group in the guest; the helper then records ``failed <phase>``.
Configuration: ``[executors.guest-self-hosted]`` (:data:`SCHEMA`).
"""

from __future__ import annotations

import collections
import posixpath
import queue
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from fruix_core import hookimpl
from fruix_core.config import Key, read_section
from fruix_core.environment import sanitised_environment
from fruix_core.errors import (
    Cancelled,
    ConfigError,
    GuestError,
    PromotionInputError,
    UsageError,
)
from fruix_core.model import (
    BuildRequest,
    EmittedResult,
    Guest,
    Phase,
    PhaseResult,
    PreparedEnv,
    SourceStore,
    StagedArtifacts,
)
from fruix_core.resultroot import ResultRoot, build_metadata
from fruix_guest_self_hosted.__about__ import __version__
from fruix_guest_self_hosted.follow import HelperRun, helper_failure, output_tail, staged_from
from fruix_guest_self_hosted.protocol import PROG

__all__ = ["NAME", "SCHEMA", "GuestSelfHostedExecutor"]

log = structlog.get_logger(__name__)

NAME = "guest-self-hosted"

#: The keys of ``[executors.guest-self-hosted]``; docs/operator/self-hosted.rst documents them.
SCHEMA: dict[str, Key] = {
    "helper": Key(str, PROG, "the helper command in the guest (words allowed, e.g. "
                             "'python3 -m fruix_guest_self_hosted.helper')"),
    "expected_version": Key(str, "", "helper version the host requires ('' = this plugin's)"),
    "keep_work": Key(bool, False, "keep the guest's object/stage work area after success"),
    "keepalive": Key((int, float), 15, "seconds of silence before a keepalive probe"),
    "progress": Key(bool, True, "show import progress in bytes on a terminal"),
    "check_timeout": Key((int, float), 120, "seconds the helper's --version/--check may take"),
}

TAIL_LINES = 20


def _settings(request: BuildRequest) -> dict[str, Any]:
    values = read_section(request.settings, SCHEMA, file=None, prefix=f"executors.{NAME}")
    try:
        words = shlex.split(values["helper"])
    except ValueError as exc:
        raise ConfigError(f"not a command line: {exc}", key=f"executors.{NAME}.helper") from None
    if not words:
        raise ConfigError("must name the helper command", key=f"executors.{NAME}.helper")
    values["helper_argv"] = words
    for key in ("keepalive", "check_timeout"):
        if values[key] <= 0:
            raise ConfigError("must be more than 0 seconds", key=f"executors.{NAME}.{key}")
    return values


class _State:
    """What one run keeps between hooks (in ``PreparedEnv.session``)."""

    def __init__(self, session: Any, settings: Mapping[str, Any], version: str,
                 guest: Guest) -> None:
        self.session = session
        self.settings = settings
        self.version = version
        self.guest = guest
        self.helper: HelperRun | None = None

    def close(self) -> None:
        """Stop the helper if it still runs, then hang up."""
        try:
            if self.helper is not None:
                self.helper.stop()
        finally:
            self.session.close()


class GuestSelfHostedExecutor:
    """Builds the native base inside a Fruix guest through its self-hosted helper."""

    name = NAME
    version = __version__

    # -- preparation -----------------------------------------------------------------

    @hookimpl
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        from fruix_core.guests import require_guest
        from fruix_core.transport.ssh import connect

        guest = require_guest(request, NAME)
        settings = _settings(request)
        if request.resume_from is not None:
            raise UsageError(f"executor '{NAME}' cannot resume a run: its helper builds every "
                             "phase in one go; start a new run")
        if request.make_configuration:
            raise UsageError(f"executor '{NAME}' builds with the guest helper's pins "
                             "(/dev/null); declared build.srcconf, build.make_conf and "
                             "build.src_env_conf need the local or host-initiated executor")
        ResultRoot(request.result_root).create()
        session = connect(guest, keepalive=float(settings["keepalive"]))
        try:
            version = self._check_version(session, guest, settings)
            facts = self._check_guest(session, guest, settings, request)
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
            session=_State(session, settings, version, guest),
        )
        ResultRoot(request.result_root).write_metadata(
            build_metadata(request, env, None, version))
        log.info("guest ready for a self-hosted build", guest=guest.name, helper_version=version,
                 source=env.source.path, result_root=env.result_root)
        return env

    def _check_version(self, session: Any, guest: Guest, settings: Mapping[str, Any]) -> str:
        from fruix_core.transport.ssh import shell_script

        argv = settings["helper_argv"]
        command = " ".join(argv)
        where = f"guest {guest.name}"
        outcome = session.run_script(shell_script([*argv, "--version"]),
                                     timeout=float(settings["check_timeout"]))
        tail = output_tail(outcome.last_lines)
        if outcome.returncode == 127:
            raise GuestError(f"{where}: the self-hosted helper '{command}' is not installed "
                             f"(not found{': ' + tail if tail else ''}); install "
                             f"fruix-executor-guest-self-hosted {self._expected(settings)} in "
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
        expected = self._expected(settings)
        if version != expected:
            raise GuestError(
                f"{where}: the self-hosted helper '{command}' is version {version}, but this "
                f"host expects {expected}; install fruix-executor-guest-self-hosted "
                f"{expected} in the guest (artifacts record the helper version, so a "
                "different helper never reuses them)")
        return version

    @staticmethod
    def _expected(settings: Mapping[str, Any]) -> str:
        return str(settings["expected_version"] or __version__)

    def _check_guest(self, session: Any, guest: Guest, settings: Mapping[str, Any],
                     request: BuildRequest) -> dict[str, Any]:
        from fruix_core.transport.ssh import shell_script

        argv = [*settings["helper_argv"], "--check", "--markers",
                "--system-root", guest.system_root, "--make", request.make]
        check = HelperRun(session, shell_script(argv), timeout=float(settings["check_timeout"]))
        check.run()
        if check.error is not None:
            raise check.error
        summary = check.summary
        if summary is None or summary.get("status") != "ready":
            raise helper_failure(summary, check.outcome, guest.name)
        for key in ("source_dir", "source_store", "source_signature", "results_dir", "work_dir"):
            if not isinstance(summary.get(key), str) or not summary[key]:
                raise GuestError(f"guest {guest.name}: the helper's check did not report "
                                 f"'{key}'")
        return summary

    # -- building --------------------------------------------------------------------

    def _start(self, request: BuildRequest, state: _State) -> HelperRun:
        from fruix_core.transport.ssh import shell_script

        base = request.base
        argv = [*state.settings["helper_argv"], "--markers",
                "--system-root", state.guest.system_root, "--run-id", request.run_id,
                "--jobs", str(request.jobs), "--make", request.make,
                "--base-name", base.name, "--base-version", base.version,
                "--arch", base.arch, "--kernconf", base.kernconf]
        if request.phase_timeout:
            argv += ["--phase-timeout", f"{request.phase_timeout:g}"]
        if state.settings["keep_work"]:
            argv.append("--keep-work")
        # The helper runs in the guest user's login environment on purpose: it
        # sanitises the build environment itself and must be proven to.
        helper = HelperRun(state.session, shell_script(argv))
        state.helper = helper
        helper.start()
        log.info("self-hosted helper started", guest=state.guest.name, run_id=request.run_id)
        return helper

    @hookimpl
    def fruix_run_phase(self, request: BuildRequest, env: PreparedEnv, phase: Phase) -> PhaseResult:
        state: _State = env.session
        host_root = ResultRoot(request.result_root)
        log_path = host_root.log_path(phase.name)
        try:
            helper = state.helper or self._start(request, state)
            result = self._follow_phase(request, state, helper, phase, log_path)
        except BaseException:
            host_root.set_failed(phase.name)
            state.close()
            raise
        if not result.ok:
            # The helper records the failure and exits; wait for it so the guest is settled.
            helper.wait(request.cancel)
            host_root.set_failed(phase.name)
            state.close()
        return result

    def _follow_phase(self, request: BuildRequest, state: _State, helper: HelperRun,
                      phase: Phase, log_path: Path) -> PhaseResult:
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        with open(log_path, "w", encoding="utf-8", buffering=1) as log_file:
            log_file.write(f"# {phase.name}, run by the self-hosted helper in guest "
                           f"{state.guest.name}\n")
            while True:
                if request.cancel.cancelled and not helper.cancel.cancelled:
                    helper.cancel.cancel(request.cancel.reason or "interrupted")
                try:
                    kind, payload = helper.events.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "line":
                    log_file.write(payload + "\n")
                    tail.append(payload)
                    if request.on_output is not None:
                        request.on_output(phase.name, payload)
                elif kind == "phase-start" and payload.phase != phase.name:
                    raise GuestError(f"guest {state.guest.name}: the helper started phase "
                                     f"{payload.phase} while the host expected {phase.name}")
                elif kind == "phase-end":
                    if payload.phase != phase.name:
                        raise GuestError(f"guest {state.guest.name}: the helper ended phase "
                                         f"{payload.phase} while the host expected {phase.name}")
                    return PhaseResult(phase=phase.name, returncode=payload.returncode,
                                       duration=payload.seconds, log_path=str(log_path),
                                       last_lines=tuple(tail))
                elif kind == "exit":
                    if helper.error is not None:
                        raise helper.error
                    if request.cancel.cancelled:
                        raise Cancelled(f"interrupted during {phase.name}")
                    raise helper_failure(helper.summary, helper.outcome, state.guest.name)

    # -- result root -------------------------------------------------------------------

    @hookimpl
    def fruix_stage_artifacts(self, request: BuildRequest, env: PreparedEnv) -> StagedArtifacts:
        state: _State = env.session
        helper = state.helper
        try:
            if helper is None:
                raise GuestError("the self-hosted helper was never started")
            helper.wait(request.cancel)
            while not helper.events.empty():
                kind, payload = helper.events.get()
                if kind == "line" and payload.strip():
                    log.info("helper output", guest=state.guest.name, line=payload)
            if helper.error is not None:
                raise helper.error
            summary = helper.summary
            if summary is None or summary.get("status") != "ok" or \
                    helper.outcome is None or helper.outcome.returncode != 0:
                raise helper_failure(summary, helper.outcome, state.guest.name)
            return staged_from(summary, env.result_root)
        except BaseException:
            state.close()
            raise

    @hookimpl
    def fruix_emit_promotion(self, request: BuildRequest, env: PreparedEnv,
                             staged: StagedArtifacts) -> EmittedResult:
        from fruix_core.promotion.schema import read_promotion
        from fruix_core.transport.tarstream import fetch_tree

        state: _State = env.session
        try:
            fetch_tree(state.session, env.result_root, request.result_root,
                       verify=_verifier(request, state.version),
                       progress=None if state.settings["progress"] else False)
        finally:
            state.close()
        promotion = read_promotion(request.result_root / "promotion.scm")
        return EmittedResult(result_root=request.result_root, promotion=promotion)


def _verifier(request: BuildRequest, version: str) -> Callable[[Path], None]:
    """Check an imported result root before it is renamed into place."""
    from fruix_core.promotion.schema import read_promotion
    from fruix_core.transport.tarstream import verify_result_root

    def verify(tree: Path) -> None:
        verify_result_root(tree)
        promotion = read_promotion(tree / "promotion.scm")
        problems = []
        if promotion.executor != NAME:
            problems.append(f"executor is {promotion.executor!r}, not {NAME!r}")
        if promotion.executor_version != version:
            problems.append(f"executor-version is {promotion.executor_version!r}, "
                            f"the helper said {version!r}")
        if promotion.run_id != request.run_id:
            problems.append(f"run-id is {promotion.run_id!r}, not {request.run_id!r}")
        if ResultRoot(tree).status().state != "ok":
            problems.append("its status is not ok")
        if problems:
            raise PromotionInputError(f"imported result root refused: {'; '.join(problems)}")

    return verify
