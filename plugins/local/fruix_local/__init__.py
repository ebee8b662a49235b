"""The ``local`` executor: builds the base on this machine (the embedded default).

It is also the template for new executors: each hook does one stage, returns
frozen data, and leaves the store alone; the core owns the result root's
status, logs and metadata. Copy this module, change where the commands run,
keep the rest. It imports only the public plugin API, :mod:`fruix_core.api`.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import structlog

from fruix_core.api import (
    PLUGIN_API_VERSION,
    BuildPaths,
    BuildRequest,
    EmittedResult,
    Key,
    LocalRunner,
    Phase,
    PhaseResult,
    PreparedEnv,
    ResultRoot,
    RunEnd,
    SourceStore,
    SourceTreeError,
    StagedArtifacts,
    ToolMissingError,
    build_promotion,
    hookimpl,
    phase_command,
    pinned_configuration,
    stage_trees,
    staged_artifacts,
    tree_signature,
    write_promotion,
)
from fruix_local.__about__ import __version__

__all__ = ["LocalExecutor", "__version__", "check_source", "check_tools", "source_signature"]

log = structlog.get_logger(__name__)


def source_signature(source: Path) -> str:
    """Content identity of a source tree: ``sha256:`` + its NAR hash."""
    return "sha256:" + tree_signature(source)


def check_source(source: Path) -> None:
    """Refuse a source tree that is missing, unreadable or has no top-level Makefile."""
    if not source.is_dir():
        raise SourceTreeError(f"source tree {source} does not exist or is not a directory")
    makefile = source / "Makefile"
    try:
        with open(makefile, "rb"):
            pass
    except FileNotFoundError:
        raise SourceTreeError(f"source tree {source} has no Makefile") from None
    except PermissionError:
        raise SourceTreeError(f"source tree {source} is not readable") from None


def check_tools(make: str, path: str) -> None:
    """The make command and the C compiler must be on the sanitised PATH."""
    for tool, what in ((make.split()[0], "make command"), ("cc", "C compiler")):
        if shutil.which(tool, path=path) is None and not Path(tool).is_absolute():
            raise ToolMissingError(f"{what} '{tool}' not found on the build PATH {path}")


class LocalExecutor:
    """Builds the native base on this machine (the embedded default executor)."""

    name = "local"
    fruix_plugin_api = PLUGIN_API_VERSION
    #: Builds on this machine: a configured guest is refused before anything starts.
    fruix_runs_in_guest = False
    #: ``[executors.local]`` has no keys: every setting of a local build is in ``[build]``.
    fruix_settings: dict[str, Key] = {}

    @hookimpl
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        source = request.source_dir
        check_source(source)
        environment = dict(request.environment)
        check_tools(request.make, environment["PATH"])
        build_root = request.build_root
        if request.resume_from is None and build_root.exists():
            shutil.rmtree(build_root)
        build_root.mkdir(parents=True, exist_ok=True)
        return PreparedEnv(
            host_name=socket.gethostname(),
            environment=environment,
            source_dir=str(source),
            source=SourceStore(path=str(source), signature=source_signature(source)),
            build_root=str(build_root),
            result_root=str(request.result_root),
            jobs=request.jobs or os.cpu_count() or 1,
        )

    @hookimpl
    def fruix_run_phase(self, request: BuildRequest, env: PreparedEnv, phase: Phase) -> PhaseResult:
        paths = BuildPaths(env.build_root)
        pinned, files = pinned_configuration(paths.conf_dir, request.make_configuration)
        for path, content in files.items():  # the declared bytes, whatever the host file is now
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(content)
        argv, extra = phase_command(phase, make=request.make, jobs=env.jobs or request.jobs,
                                    paths=paths, kernconf=request.base.kernconf, pinned=pinned)
        request.output(phase.name, f"# {' '.join(argv)}")
        outcome = LocalRunner().run(
            argv, env={**env.environment, **extra}, cwd=env.source_dir,
            on_line=lambda line: request.output(phase.name, line),
            timeout=request.phase_timeout, cancel=request.cancel,
        )
        return outcome.phase_result(phase.name, "", request.phase_timeout)

    @hookimpl
    def fruix_stage_artifacts(self, request: BuildRequest, env: PreparedEnv) -> StagedArtifacts:
        root = ResultRoot(env.result_root)
        if root.artifacts.exists():
            shutil.rmtree(root.artifacts)
        stage_trees(BuildPaths(env.build_root), root.artifacts)
        return staged_artifacts(root.path)

    @hookimpl
    def fruix_emit_promotion(self, request: BuildRequest, env: PreparedEnv,
                             staged: StagedArtifacts) -> EmittedResult:
        root = ResultRoot(env.result_root)
        promotion = build_promotion(request, env, staged)
        write_promotion(promotion, root.promotion_file)
        return EmittedResult(result_root=root.path, promotion=promotion)

    @hookimpl
    def fruix_teardown_env(self, request: BuildRequest, env: PreparedEnv, outcome: RunEnd) -> None:
        # Every phase ran in its own process group, stopped on cancel and timeout by
        # LocalRunner before run_phase returned: nothing of the run is left running.
        log.debug("local build environment released", run_id=request.run_id,
                  outcome=outcome.state)
