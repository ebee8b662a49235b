"""The plan of a run: what ``fruix native-build run --dry-run`` prints (``fruix.plan/1``).

Built after the same checks as a real run (plugins, every config table,
the resume point and the configuration's identity, the preflight) and
before anything is created. Each phase's command line is the build
profile's (:func:`~fruix_core.profile.phase_command`) with the run's build
root; a run id not yet reserved shows as ``<run-id>``, and an in-guest
executor's build root and source (chosen in the guest) as ``<guest build
root>`` and ``<guest source store>``.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fruix_core.config import Config
from fruix_core.environment import ENVIRONMENT_POLICY, sanitised_environment
from fruix_core.plugins import LoadedPlugin
from fruix_core.preflight import Preflight, runs_in_guest
from fruix_core.profile import (
    BuildPaths,
    make_configuration_policy,
    phase_command,
    phases_from,
    pinned_configuration,
)

__all__ = ["PLAN_SCHEMA", "describe_plan", "plan_lines"]

PLAN_SCHEMA = "fruix.plan/1"


def _plugin(loaded: LoadedPlugin | None) -> dict[str, Any] | None:
    if loaded is None:
        return None
    return {"name": loaded.name, "distribution": loaded.distribution or None,
            "version": loaded.version}


def describe_plan(config: Config, *, executor: LoadedPlugin, provider: LoadedPlugin | None,
                  guest: str, promote: bool, source_dir: Path,
                  make_configuration: Iterable[tuple[str, bytes]], identity: dict[str, str],
                  checks: Preflight, resume: tuple[str, str] | None) -> dict[str, Any]:
    """The ``fruix.plan/1`` document of a run that has passed its checks."""
    contents = tuple(make_configuration)
    in_guest = runs_in_guest(executor.plugin)
    run_id = resume[0] if resume is not None else "<run-id>"
    build_root = "<guest build root>" if in_guest else str(config.build_root / run_id)
    jobs = config.jobs or (0 if in_guest else config.effective_jobs)
    paths = BuildPaths(build_root)
    pinned, _files = pinned_configuration(paths.conf_dir, contents)
    environment = sanitised_environment()
    phases = []
    for phase in phases_from(resume[1] if resume is not None else None):
        argv, extra = phase_command(phase, make=config.make, jobs=jobs, paths=paths,
                                    kernconf=config.base.kernconf, pinned=pinned)
        phases.append({"name": phase.name, "command": argv, "environment": extra})
    executor_doc = _plugin(executor)
    assert executor_doc is not None
    executor_doc["runs_in_guest"] = in_guest
    guest_doc = _plugin(provider)
    if guest_doc is None and guest:  # a provider handed over directly (embedding code)
        guest_doc = {"name": guest, "distribution": None, "version": ""}
    return {
        "schema": PLAN_SCHEMA,
        "ok": True,
        "config_file": config.file,
        "executor": executor_doc,
        "guest": guest_doc,
        "source": "<guest source store>" if in_guest else str(source_dir),
        "base": {"name": config.base.name, "version": config.base.version,
                 "arch": config.base.arch, "kernconf": config.base.kernconf},
        "make": config.make,
        "jobs": jobs,
        "environment_policy": ENVIRONMENT_POLICY,
        "environment": environment,
        "make_configuration": dict(make_configuration_policy(contents)),
        "phases": phases,
        "paths": {"base": str(config.base_dir), "results": str(config.results),
                  "build_root": str(config.build_root), "run_build_root": build_root,
                  "store": str(config.store)},
        "promote": promote,
        "resume": {"run_id": resume[0], "phase": resume[1]} if resume is not None else None,
        "config_digest": identity["config_digest"],
        "space": {"needed_from": checks.needed_from,
                  "file_systems": [fs.as_dict() for fs in checks.space]},
    }


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def plan_lines(plan: dict[str, Any]) -> list[str]:
    """The plan for a terminal, one fact a line."""
    ex = plan["executor"]
    where = {True: "in a guest", False: "on this machine", None: "(undeclared)"}
    lines = [f"executor: {ex['name']} ({ex['distribution'] or 'no distribution'} "
             f"{ex['version']}), builds {where[ex['runs_in_guest']]}"]
    guest = plan["guest"]
    lines.append(f"guest: {guest['name']} ({guest['distribution'] or 'no distribution'} "
                 f"{guest['version']})" if guest else "guest: none")
    base = plan["base"]
    lines.append(f"base: {base['name']} {base['version']} {base['arch']} "
                 f"KERNCONF={base['kernconf']}")
    lines.append(f"source: {plan['source']}")
    paths = plan["paths"]
    lines.append(f"results: {paths['results']}")
    lines.append(f"build root: {paths['run_build_root']}")
    lines.append(f"store: {paths['store']}"
                 + ("" if plan["promote"] else " (not promoted: --no-promote)"))
    resume = plan["resume"]
    lines.append(f"resume: run {resume['run_id']} at {resume['phase']}" if resume
                 else "resume: no (a new run)")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(plan["environment"].items()))
    lines.append(f"environment ({plan['environment_policy']}): {env}")
    for number, phase in enumerate(plan["phases"], 1):
        extra = " ".join(f"{k}={shlex.quote(v)}" for k, v in phase["environment"].items())
        lines.append(f"phase {number}/{len(plan['phases'])} {phase['name']}: "
                     f"{extra} {shlex.join(phase['command'])}")
    for fs in plan["space"]["file_systems"]:
        lines.append(f"free space: {_mib(fs['free'])} on the file system of "
                     f"{', '.join(fs['directories'])} ({_mib(fs['needed'])} needed)")
    lines.append(f"configuration digest: {plan['config_digest']}")
    lines.append("dry run: nothing was created")
    return [line.replace(os.linesep, " ") for line in lines]
