"""The ``host-initiated`` executor: the host drives each phase inside a Fruix guest over SSH.

Stages (the four executor hooks):

``fruix_prepare_env``
    connect to the guest (host key verified), check the development overlay
    (``/usr/include``, ``/usr/share/mk``), ``make`` and ``cc``, recover the
    FreeBSD source store from ``/run/current-system/metadata/store-layout.scm``
    (see :mod:`fruix_core.guestlayout`), and create the result root in the
    guest at ``/var/lib/fruix/native-builds/<run-id>/`` and the heavy work
    area at ``/var/tmp/fruix-native-builds/<run-id>``;
``fruix_run_phase``
    run the phase over SSH in the sanitised environment (``env -i``), hand
    its output to the core (the host's ``logs/<phase>.log`` and the live
    view), then store the log in the guest's result root too;
``fruix_stage_artifacts``
    split the stages into ``artifacts/<kind>`` in the guest, exactly like
    :func:`fruix_core.resultroot.stage_trees`, and record key-file digests;
``fruix_emit_promotion``
    write ``metadata``, ``promotion.scm`` and ``status`` in the guest and
    say where the guest's result root is; the core imports it to the host
    through one verified tar stream and promotes it;
``fruix_teardown_env``
    record a failure in the guest's ``status`` (so the guest and the host
    agree), remove the guest's work area after a success, and hang up.

Every path in the guest is seen through ``Guest.system_root`` (``/`` in
production). Configuration: ``[executors.host-initiated]`` (:data:`SCHEMA`).
"""

from __future__ import annotations

import posixpath
import shlex
import socket
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import structlog

from fruix_core.api import (
    CORE_VERSION,
    LAYOUT_RELATIVE_PATH,
    PLUGIN_API_VERSION,
    BuildPaths,
    BuildRequest,
    Cancelled,
    CommandOutcome,
    ConfigError,
    ConnectionLostError,
    EmittedResult,
    GuestError,
    Key,
    MetadataError,
    Phase,
    PhaseResult,
    PhaseTimeout,
    PreparedEnv,
    RunEnd,
    SourceStore,
    SourceTreeError,
    StagedArtifacts,
    ToolMissingError,
    TransportError,
    UsageError,
    build_metadata,
    build_promotion,
    check_declared_base,
    dumps_promotion,
    hookimpl,
    parse_store_layout,
    phase_command,
    pinned_configuration,
    read_section,
    require_guest,
    sanitised_environment,
)
from fruix_host_initiated import scripts

__all__ = ["SCHEMA", "HostInitiatedExecutor", "__version__", "check_settings"]

__version__ = "0.1.0"

log = structlog.get_logger(__name__)

NAME = "host-initiated"

#: The keys of ``[executors.host-initiated]``; docs/operator/ssh.rst documents them.
SCHEMA: dict[str, Key] = {
    "results_dir": Key(str, "/var/lib/fruix/native-builds",
                       "result roots in the guest (under its system root)"),
    "work_dir": Key(str, "/var/tmp/fruix-native-builds",
                    "heavy object/stage work area in the guest"),
    "check_overlay": Key(bool, True, "refuse a guest without /usr/include and /usr/share/mk"),
    "keep_work": Key(bool, False, "keep the guest's work area after a successful run"),
    "keepalive": Key((int, float), 15, "seconds of silence before a keepalive probe"),
    "detach": Key(bool, True, "run each phase detached in the guest; a dropped connection "
                              "is reconnected and the phase followed on (false: the phase "
                              "runs in the SSH session and ends with it)"),
}

#: Lines of a detached phase's output kept for the failure message.
TAIL_LINES = 20
#: Seconds between reconnection attempts after a dropped connection (detached phases).
RECONNECT_BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def check_settings(table: Mapping[str, Any], *, file: str | None = None) -> dict[str, Any]:
    """Validate ``[executors.host-initiated]``; the values with their defaults.

    :raises ConfigError: naming the file and the key.
    """
    prefix = f"executors.{NAME}"
    values = read_section(table, SCHEMA, file=file, prefix=prefix)
    for key in ("results_dir", "work_dir"):
        path = values[key]
        if not path.startswith("/") or posixpath.normpath(path) != path or path == "/":
            raise ConfigError("must be an absolute, normalised guest path other than /",
                              file=file, key=f"{prefix}.{key}")
    if values["keepalive"] <= 0:
        raise ConfigError("must be more than 0 seconds", file=file, key=f"{prefix}.keepalive")
    return values


def _settings(request: BuildRequest) -> dict[str, Any]:
    return check_settings(request.settings)


class _State:
    """What one run keeps between hooks (held in ``PreparedEnv.session``)."""

    def __init__(self, session: Any, settings: Mapping[str, Any], results_dir: str) -> None:
        self.session = session
        self.settings = settings
        self.results_dir = results_dir

    def close(self) -> None:
        self.session.close()


class HostInitiatedExecutor:
    """Builds the native base inside a Fruix guest, driving each phase over SSH."""

    name = NAME
    fruix_plugin_api = PLUGIN_API_VERSION
    fruix_settings = SCHEMA
    #: Builds in a guest: a run without a guest provider is refused before anything starts.
    fruix_runs_in_guest = True

    @staticmethod
    def fruix_check_settings(table: Mapping[str, Any], *, file: str | None) -> None:
        """Refuse an ``[executors.host-initiated]`` table :func:`check_settings` refuses."""
        check_settings(table, file=file)

    # -- preparation -----------------------------------------------------------------

    @hookimpl
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        from fruix_core.api import connect

        guest = require_guest(request, NAME)
        settings = _settings(request)
        session = connect(guest, keepalive=float(settings["keepalive"]))
        try:
            return self._prepare(request, session, settings)
        except BaseException:
            session.close()
            raise

    def _prepare(self, request: BuildRequest, session: Any,
                 settings: Mapping[str, Any]) -> PreparedEnv:
        guest = request.guest
        assert guest is not None
        root = guest.system_root
        where = f"guest {guest.name}"
        base_path = sanitised_environment({})["PATH"]
        facts, layout_text = scripts.parse_probe(session.check_output(
            scripts.probe_script(root, request.make, base_path), what="probing the guest"))
        layout_file = scripts.guest_path(root, "/" + LAYOUT_RELATIVE_PATH)
        if settings["check_overlay"]:
            present = set(facts.get("overlay", []))
            missing = ["/" + rel for rel, _ in scripts.OVERLAY if rel not in present]
            if missing:
                raise GuestError(f"{where} lacks the development overlay: "
                                 f"{', '.join(missing)} missing or empty "
                                 f"(system root {root})")
        tools = set(facts.get("tool", []))
        for tool, what in ((request.make.split()[0], "make command"), ("cc", "C compiler")):
            if tool not in tools:
                raise ToolMissingError(f"{where}: {what} '{tool}' not found on the build "
                                       f"PATH {base_path}")
        if layout_text is None:
            raise MetadataError(
                f"missing on {where}: the FreeBSD source store metadata "
                "(store-layout.scm) is not there", file=layout_file)
        layout = parse_store_layout(layout_text, source=f"{where}:{layout_file}")
        check_declared_base(layout, request.base)
        host_name = (facts.get("host") or [guest.host])[0] or guest.host
        guest_env = {k: v[0] for k, v in (("HOME", facts.get("home")),
                                          ("USER", facts.get("user")),
                                          ("LOGNAME", facts.get("user"))) if v and v[0]}
        environment = sanitised_environment(guest_env)
        results_dir = scripts.guest_path(root, settings["results_dir"])
        result_root = posixpath.join(results_dir, request.run_id)
        build_root = posixpath.join(scripts.guest_path(root, settings["work_dir"]),
                                    request.run_id)
        source_dir = scripts.guest_path(root, layout.source_path)
        status = f"running controller={socket.gethostname()}"
        try:
            session.check_output(scripts.prepare_script(
                source_dir, result_root, build_root, status,
                fresh=request.resume_from is None), what="preparing the guest")
        except ConnectionLostError:
            raise
        except TransportError as exc:
            if "no readable Makefile" in str(exc):
                raise SourceTreeError(f"{where}: source store {layout.source_path} has no "
                                      "readable Makefile") from None
            raise
        env = PreparedEnv(
            host_name=host_name, environment=environment, source_dir=source_dir,
            source=SourceStore(path=layout.source_path,
                               signature=layout.source_signature or layout.source_hash),
            build_root=build_root, result_root=result_root,
            closure_path=layout.closure_path,
            development_profile_path=layout.development_profile_path,
            session=_State(session, settings, results_dir),
            jobs=request.jobs or _guest_ncpu(facts),
        )
        metadata = build_metadata(request, env, None)
        session.write_file(posixpath.join(result_root, "metadata"), _metadata_text(metadata))
        log.info("guest prepared", guest=guest.name, host=host_name,
                 source=layout.source_path, result_root=result_root)
        return env

    # -- building --------------------------------------------------------------------

    @hookimpl
    def fruix_run_phase(self, request: BuildRequest, env: PreparedEnv, phase: Phase) -> PhaseResult:
        state: _State = env.session
        session = state.session
        paths = BuildPaths(env.build_root)
        pinned, files = pinned_configuration(paths.conf_dir, request.make_configuration)
        if files:
            session.check_output(f"mkdir -p {shlex.quote(paths.conf_dir)}",
                                 what="creating the configuration directory")
        for path, content in files.items():
            session.write_file(path, content)
        argv, extra = phase_command(phase, make=request.make, jobs=env.jobs or request.jobs,
                                    paths=paths, kernconf=request.base.kernconf, pinned=pinned)
        guest_log = posixpath.join(env.result_root, "logs", f"{phase.name}.log")
        if state.settings["detach"]:
            return self._run_detached(request, env, phase, argv, extra, guest_log)
        # The guest's result root keeps its own copy of the log, spooled here meanwhile.
        with tempfile.TemporaryFile("w+b") as spool:
            def line(text: str) -> None:
                spool.write(text.encode("utf-8", "replace") + b"\n")
                request.output(phase.name, text)

            line(f"# {' '.join(argv)}")
            outcome: CommandOutcome = session.run(
                argv, env={**env.environment, **extra}, cwd=env.source_dir, on_line=line,
                timeout=request.phase_timeout, cancel=request.cancel,
            )
            spool.seek(0)
            session.write_file(guest_log, spool.read())
        if outcome.failed:
            session.write_file(posixpath.join(env.result_root, "status"),
                               f"failed {phase.name}\n".encode())
        return outcome.phase_result(phase.name, guest_log, request.phase_timeout)

    def _run_detached(self, request: BuildRequest, env: PreparedEnv, phase: Phase,
                      argv: list[str], extra: Mapping[str, str], guest_log: str) -> PhaseResult:
        """Run ``phase`` detached in the guest and follow it (:meth:`_follow_detached`).

        The phase runs in its own session (:func:`scripts.detached_start_script`),
        so neither a dropped connection nor sshd's hang-up stops it, nor the
        end of this host process: ``fruix native-build attach`` can take it up.
        """
        from fruix_core.api import shell_script

        state: _State = env.session
        run_dir = posixpath.join(env.build_root, "phases")
        command = shell_script(argv, env={**dict(env.environment), **extra}, cwd=env.source_dir)
        head = f"# {' '.join(argv)}"
        request.output(phase.name, head)
        state.session.check_output(
            scripts.detached_start_script(command, run_dir, phase.name),
            what=f"starting {phase.name}")
        return self._follow_detached(request, env, phase, guest_log, head)

    @hookimpl
    def fruix_attach_phase(self, request: BuildRequest, env: PreparedEnv,
                           phase: Phase) -> PhaseResult | None:
        """Follow a detached phase an earlier host process started; ``None`` if none did."""
        state: _State = env.session
        run_dir = posixpath.join(env.build_root, "phases")
        started = state.session.check_output(scripts.detached_started_script(run_dir, phase.name),
                                             what=f"looking for {phase.name} in the guest")
        if started.strip() != b"started":
            return None  # it never ran detached (or ran attached and died with its session)
        guest = request.guest
        head = f"# {phase.name}: attached to the detached phase in guest " \
               f"{guest.name if guest else '?'}"
        request.output(phase.name, head)
        log.info("following a detached phase", phase=phase.name)
        guest_log = posixpath.join(env.result_root, "logs", f"{phase.name}.log")
        return self._follow_detached(request, env, phase, guest_log, head)

    def _follow_detached(self, request: BuildRequest, env: PreparedEnv, phase: Phase,
                         guest_log: str, head: str) -> PhaseResult:
        """Follow a detached phase's log to its end, reconnecting when needed.

        The log is followed by byte offset (of the UTF-8 lines received), from
        its start; after a drop the host reconnects with backoff and goes on
        from there. Cancel and the phase timeout stop the phase's process
        group in the guest. Every line goes to the core (``request.output``)
        once; the guest's result root gets its own copy of the log (``head``
        first), as for an attached phase.
        """
        state: _State = env.session
        guest = request.guest
        assert guest is not None
        run_dir = posixpath.join(env.build_root, "phases")
        started = time.monotonic()
        received = 0
        returncode: int | None = None
        tail: list[str] = []
        with tempfile.TemporaryFile("w+b") as spool:
            spool.write(head.encode("utf-8", "replace") + b"\n")

            def on_line(text: str) -> None:
                nonlocal received, returncode
                if text.startswith(scripts.RC_MARKER):
                    returncode = int(text.split()[1])
                    return
                received += len(text.encode("utf-8")) + 1
                tail[:] = [*tail[-(TAIL_LINES - 1):], text]
                spool.write(text.encode("utf-8", "replace") + b"\n")
                request.output(phase.name, text)

            attempt = 0
            while returncode is None:
                left = None
                if request.phase_timeout:
                    left = request.phase_timeout - (time.monotonic() - started)
                    if left <= 0:
                        self._stop_detached(state, run_dir, phase)
                        raise PhaseTimeout(phase.name, request.phase_timeout)
                try:
                    outcome = state.session.run_script(
                        scripts.follow_script(run_dir, phase.name, received),
                        on_line=on_line, timeout=left, cancel=request.cancel)
                    attempt = 0
                except ConnectionLostError:
                    state.session.close()
                    state.session = self._reconnect(guest, state, request, attempt)
                    attempt += 1
                    continue
                if outcome.cancelled:
                    self._stop_detached(state, run_dir, phase)
                    raise Cancelled(f"interrupted during {phase.name}")
            # The end-of-log blank line the follow script prints before the status.
            if tail and tail[-1] == "":
                tail.pop()
            spool.seek(0)
            state.session.write_file(guest_log, spool.read())
        if returncode != 0:
            state.session.write_file(posixpath.join(env.result_root, "status"),
                                     f"failed {phase.name}\n".encode())
        return PhaseResult(phase=phase.name, returncode=int(returncode),
                           duration=time.monotonic() - started, log_path=guest_log,
                           last_lines=tuple(tail))

    @staticmethod
    def _reconnect(guest: Any, state: _State, request: BuildRequest, attempt: int) -> Any:
        """A new session to ``guest`` after a drop, waiting :data:`RECONNECT_BACKOFF`."""
        from fruix_core.api import connect

        if attempt >= len(RECONNECT_BACKOFF) or request.cancel.wait(RECONNECT_BACKOFF[attempt]):
            if request.cancel.cancelled:
                raise Cancelled("interrupted while reconnecting")
            raise ConnectionLostError(f"guest {guest.name}: connection lost and not regained "
                                      f"after {len(RECONNECT_BACKOFF)} attempts")
        log.warning("connection lost; reconnecting", guest=guest.name, attempt=attempt + 1)
        try:
            return connect(guest, keepalive=float(state.settings["keepalive"]))
        except TransportError:
            return HostInitiatedExecutor._reconnect(guest, state, request, attempt + 1)

    @staticmethod
    def _stop_detached(state: _State, run_dir: str, phase: Phase) -> None:
        try:
            state.session.check_output(scripts.detached_stop_script(run_dir, phase.name),
                                       what=f"stopping {phase.name}")
        except TransportError:
            log.warning("could not stop the detached phase", phase=phase.name)

    # -- result root -------------------------------------------------------------------

    @hookimpl
    def fruix_stage_artifacts(self, request: BuildRequest, env: PreparedEnv) -> StagedArtifacts:
        state: _State = env.session
        output = state.session.check_output(
            scripts.staging_script(BuildPaths(env.build_root), env.result_root),
            what="staging the artifacts")
        key_files, sizes = scripts.parse_staging(output)
        kinds = tuple(key_files)
        return StagedArtifacts(result_root=env.result_root, kinds=kinds, key_files=key_files,
                               sizes=sizes)

    @hookimpl
    def fruix_emit_promotion(self, request: BuildRequest, env: PreparedEnv,
                             staged: StagedArtifacts) -> EmittedResult:
        state: _State = env.session
        session = state.session
        promotion = build_promotion(request, env, staged)
        metadata = build_metadata(request, env, staged)
        metadata["core_version"] = CORE_VERSION
        metadata["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        join = posixpath.join
        session.write_file(join(env.result_root, "promotion.scm"),
                           dumps_promotion(promotion).encode("utf-8"))
        session.write_file(join(env.result_root, "metadata"), _metadata_text(metadata))
        session.write_file(join(env.result_root, "status"), b"ok\n")
        session.check_output(scripts.swap_latest_script(state.results_dir, request.run_id),
                             what="updating latest in the guest")
        return EmittedResult(result_root=env.result_root, promotion=promotion, in_guest=True)

    # -- teardown ----------------------------------------------------------------------

    @hookimpl
    def fruix_teardown_env(self, request: BuildRequest, env: PreparedEnv, outcome: RunEnd) -> None:
        state: _State = env.session
        session = state.session
        try:
            if not outcome.ok and session.active:
                # Say in the guest what the host records, also after a cancel between phases.
                session.write_file(posixpath.join(env.result_root, "status"),
                                   f"failed {outcome.stage or 'prepare'}\n".encode())
            if outcome.ok and not state.settings["keep_work"]:
                session.check_output(f"rm -rf {scripts._q(env.build_root)}",
                                     what="removing the guest's work area")
        finally:
            state.close()


def _metadata_text(values: Mapping[str, object]) -> bytes:
    """``key=value`` lines, as :meth:`fruix_core.resultroot.ResultRoot.write_metadata` writes."""
    lines = []
    for key, value in values.items():
        text = str(value)
        if "\n" in text or "=" in key:
            raise UsageError(f"metadata {key!r}: value must be one line")
        lines.append(f"{key}={text}\n")
    return "".join(lines).encode("utf-8")


def _guest_ncpu(facts: dict[str, list[str]]) -> int:
    """The guest's CPU count from the probe (``sysctl -n hw.ncpu``), at least 1."""
    value = (facts.get("ncpu") or ["1"])[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else 1
