"""``nice``: an example executor that builds the base on this machine at a low CPU priority.

A complete executor plugin, written from the documentation alone: it imports
only :mod:`fruix_core.api`, declares the plugin API it targets and its
settings, implements the five executor hooks, and passes ``fruix executors
check nice``. Copy it to start a new executor; change where the commands
run, keep the rest.

Configuration, ``[executors.nice]``::

    niceness = 10      # 0 (normal) .. 19 (lowest priority); the default is 10
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Mapping
from typing import Any

from fruix_core.api import (
    PLUGIN_API_VERSION,
    BuildPaths,
    BuildRequest,
    ConfigError,
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
    read_section,
    stage_trees,
    staged_artifacts,
    tree_signature,
    write_promotion,
)

__version__ = "0.1.0"

__all__ = ["SETTINGS", "NiceExecutor", "__version__"]

#: The keys of ``[executors.nice]``: type, default, one line of documentation.
SETTINGS: dict[str, Key] = {
    "niceness": Key(int, 10, "CPU priority of every phase: 0 (normal) to 19 (lowest)"),
}


def _settings(table: Mapping[str, Any], file: str | None = None) -> dict[str, Any]:
    values = read_section(table, SETTINGS, file=file, prefix="executors.nice")
    if not 0 <= values["niceness"] <= 19:
        raise ConfigError("must be between 0 and 19", file=file, key="executors.nice.niceness")
    return values


class NiceExecutor:
    """Builds the native base on this machine at a low CPU priority (nice)."""

    fruix_plugin_api = PLUGIN_API_VERSION
    fruix_settings = SETTINGS
    fruix_runs_in_guest = False

    @staticmethod
    def fruix_check_settings(table: Mapping[str, Any], *, file: str | None) -> None:
        """The core calls this for ``[executors.nice]`` before any run."""
        _settings(table, file)

    @hookimpl
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        source = request.source_dir
        if not (source / "Makefile").is_file():
            raise SourceTreeError(f"source tree {source} has no Makefile")
        path = request.environment["PATH"]
        for tool in ("nice", request.make.split()[0], "cc"):
            if shutil.which(tool, path=path) is None:
                raise ToolMissingError(f"'{tool}' not found on the build PATH {path}")
        if request.resume_from is None and request.build_root.exists():
            shutil.rmtree(request.build_root)
        request.build_root.mkdir(parents=True, exist_ok=True)
        return PreparedEnv(
            host_name=socket.gethostname(),
            environment=dict(request.environment),
            source_dir=str(source),
            source=SourceStore(path=str(source), signature="sha256:" + tree_signature(source)),
            build_root=str(request.build_root),
            result_root=str(request.result_root),
            session=_settings(request.settings),
        )

    @hookimpl
    def fruix_run_phase(self, request: BuildRequest, env: PreparedEnv, phase: Phase) -> PhaseResult:
        argv, extra = phase_command(phase, make=request.make, jobs=request.jobs,
                                    paths=BuildPaths(env.build_root),
                                    kernconf=request.base.kernconf)
        argv = ["nice", "-n", str(env.session["niceness"]), *argv]
        request.output(phase.name, f"# {' '.join(argv)}")
        outcome = LocalRunner().run(
            argv, env={**env.environment, **extra}, cwd=env.source_dir,
            on_line=lambda line: request.output(phase.name, line),
            timeout=request.phase_timeout, cancel=request.cancel)
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
        promotion = build_promotion(request, env, staged)
        write_promotion(promotion, ResultRoot(env.result_root).promotion_file)
        return EmittedResult(result_root=request.result_root, promotion=promotion)

    @hookimpl
    def fruix_teardown_env(self, request: BuildRequest, env: PreparedEnv, outcome: RunEnd) -> None:
        # LocalRunner stopped each phase's process group before run_phase returned, so
        # nothing is left running; a failed run keeps its build root for --resume.
        if outcome.ok:
            shutil.rmtree(env.build_root, ignore_errors=True)
