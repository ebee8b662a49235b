"""The ``local`` executor: builds the base on this machine (the embedded default).

It is also the template for new executors: each hook does one stage, returns
frozen data, and leaves the store alone. Copy this module, change where the
commands run (see :mod:`fruix_core.transport`), keep the rest.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path
from typing import IO

import structlog

from fruix_core import hookimpl
from fruix_core.__about__ import __version__ as _core_version
from fruix_core.errors import SourceTreeError, ToolMissingError
from fruix_core.model import (
    BuildRequest,
    EmittedResult,
    Phase,
    PhaseResult,
    PreparedEnv,
    SourceStore,
    StagedArtifacts,
)
from fruix_core.profile import BuildPaths, phase_command, pinned_configuration
from fruix_core.resultroot import (
    ResultRoot,
    build_metadata,
    build_promotion,
    stage_trees,
    staged_artifacts,
)
from fruix_core.transport.local import LocalRunner

__all__ = ["LocalExecutor", "__version__"]

__version__ = "0.1.0"

log = structlog.get_logger(__name__)


def source_signature(source: Path) -> str:
    """Content identity of a source tree: ``sha256:`` + its NAR hash."""
    from fruix_core.promotion.nar import tree_signature

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
    version = __version__

    @hookimpl
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        source = request.source_dir
        check_source(source)
        environment = dict(request.environment)
        check_tools(request.make, environment["PATH"])
        root = ResultRoot(request.result_root)
        root.create()
        build_root = request.build_root
        if request.resume_from is None and build_root.exists():
            shutil.rmtree(build_root)
        build_root.mkdir(parents=True, exist_ok=True)
        env = PreparedEnv(
            host_name=socket.gethostname(),
            environment=environment,
            source_dir=str(source),
            source=SourceStore(path=str(source), signature=source_signature(source)),
            build_root=str(build_root),
            result_root=str(root.path),
            jobs=request.jobs or os.cpu_count() or 1,
        )
        root.write_metadata(build_metadata(request, env, None, self.version))
        return env

    @hookimpl
    def fruix_run_phase(self, request: BuildRequest, env: PreparedEnv, phase: Phase) -> PhaseResult:
        root = ResultRoot(env.result_root)
        paths = BuildPaths(env.build_root)
        pinned, files = pinned_configuration(paths.conf_dir, request.make_configuration)
        for path, content in files.items():  # the declared bytes, whatever the host file is now
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(content)
        argv, extra = phase_command(phase, make=request.make, jobs=env.jobs or request.jobs,
                                    paths=paths,
                                    kernconf=request.base.kernconf, pinned=pinned)
        log_path = root.log_path(phase.name)
        with open(log_path, "w", encoding="utf-8", buffering=1) as log_file:
            log_file.write(f"# {' '.join(argv)}\n")
            outcome = LocalRunner().run(
                argv, env={**env.environment, **extra}, cwd=env.source_dir,
                on_line=_line_sink(log_file, phase.name, request),
                timeout=request.phase_timeout, cancel=request.cancel,
            )
        if outcome.failed:
            root.set_failed(phase.name)
        return outcome.phase_result(phase.name, str(log_path), request.phase_timeout)

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
        from fruix_core.promotion.schema import write_promotion

        root = ResultRoot(env.result_root)
        promotion = build_promotion(request, env, staged, self.version)
        write_promotion(promotion, root.promotion_file)
        metadata = build_metadata(request, env, staged, self.version)
        metadata["core_version"] = _core_version
        metadata["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        root.write_metadata(metadata)
        root.set_ok()
        return EmittedResult(result_root=root.path, promotion=promotion)


def _line_sink(log_file: IO[str], phase: str, request: BuildRequest):
    def sink(line: str) -> None:
        log_file.write(line + "\n")
        if request.on_output is not None:
            request.on_output(phase, line)

    return sink
