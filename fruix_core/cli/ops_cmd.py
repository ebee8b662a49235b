"""``fruix store diff``, ``fruix native-build logs|report`` and ``fruix completion``.

With ``--json`` each command prints exactly one document on stdout
(:mod:`fruix_core.cli.jsonout`; ``main`` prints ``fruix.error/1`` when one
fails); the schemas live in :mod:`fruix_core.schemas`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from fruix_core.cli.jsonout import emit
from fruix_core.config import Config, load_config
from fruix_core.errors import ExitCode
from fruix_core.promotion.display import shown

__all__ = ["completion_command", "diff_command", "logs_command", "report_command"]


def _config(args: argparse.Namespace) -> Config:
    config = load_config(getattr(args, "config", None))
    store = getattr(args, "store", None)
    if store:
        config = dataclasses.replace(config, store=Path(store).absolute())
    return config


# -- store diff -------------------------------------------------------------------------


def _detail(change: Any) -> str:
    parts = []
    for aspect in change.aspects:
        if aspect == "content":
            parts.append(f"content ({change.size_a} -> {change.size_b} bytes)")
            continue
        keys = [k for k, _ in change.details.items()
                if k not in ("sha256digest", "size") and _aspect(k) == aspect]
        values = ", ".join(f"{k} {change.details[k][0] or '-'} -> {change.details[k][1] or '-'}"
                           for k in keys)
        parts.append(f"{aspect} ({values})" if values else aspect)
    return "; ".join(parts)


def _aspect(key: str) -> str:
    from fruix_core.promotion.diff import ASPECTS

    return ASPECTS.get(key, key)


def diff_command(args: argparse.Namespace) -> int:
    """Print what differs between two bundles, artifact objects or runs."""
    from fruix_core.promotion.diff import diff_sides, resolve_side

    config = _config(args)
    a = resolve_side(args.a, store=config.store, results=config.results)
    b = resolve_side(args.b, store=config.store, results=config.results)
    found = diff_sides(a, b)
    if args.json:
        emit("fruix.store-diff/1", {"a": a.as_dict(), "b": b.as_dict(),
                                    "changes": [c.as_dict() for c in found.changes],
                                    "summary": {**found.summary(), "line": found.summary_line()}})
        return int(ExitCode.OK)
    marks = {"added": "+", "removed": "-", "changed": "~"}
    for change in found.changes:
        if change.change == "added":
            tail = f" ({change.size_b} bytes)" if change.size_b is not None else ""
        elif change.change == "removed":
            tail = f" ({change.size_a} bytes)" if change.size_a is not None else ""
        else:
            tail = f": {_detail(change)}"
        print(f"{marks[change.change]} {change.artifact} {change.path}{tail}")
    if found.identical:
        print(f"identical: {', '.join(found.identical)}")
    print(found.summary_line())
    return int(ExitCode.OK)


# -- logs ---------------------------------------------------------------------------------


def logs_command(args: argparse.Namespace) -> int:
    """Print a run's phase logs, or follow them until the run stops running."""
    from fruix_core.resultroot import resolve_run
    from fruix_core.runlogs import LogFollower, print_logs, selected_phases

    config = _config(args)
    root = resolve_run(config.results, args.run_id)
    out = sys.stdout.buffer
    if not args.follow:
        print_logs(root, args.phase, out)
        return int(ExitCode.OK)
    phases = selected_phases(root, args.phase) if args.phase else None
    follower = LogFollower(root, phases, out, headers=args.phase is None)
    final = follower.follow(interval=args.interval)
    message = f"run {root.run_id} is {final}"
    if getattr(args, "log_format", "console") == "json":
        from fruix_core.logconfig import json_record

        # stderr stays one JSON record per line under --log-format json.
        print(json_record("info", message, "fruix.logs", run_id=root.run_id, status=final),
              file=sys.stderr, flush=True)
    else:
        print(f"fruix: {message}", file=sys.stderr)
    return int(ExitCode.OK)


# -- report -------------------------------------------------------------------------------


def report_command(args: argparse.Namespace) -> int:
    """Write the build status page of the results directory."""
    from fruix_core.errors import UsageError
    from fruix_core.report import write_report

    config = _config(args)
    if args.limit < 1:
        raise UsageError(f"--limit must be 1 or more, not {args.limit}")
    out_dir = Path(args.output) if args.output else config.results.parent / "report"
    outcome = write_report(config.results, config.store, out_dir, args.limit)
    if args.json:
        keep = ("run_id", "status", "failed_phase", "executor", "executor_version", "guest",
                "started", "seconds", "result_root", "bundle", "diff")
        runs = []
        for run in outcome.runs:
            doc = {k: run.get(k) for k in keep}
            doc["phases"] = [{k: p[k] for k in ("name", "seconds", "started", "finished",
                                                "timing", "log")} for p in run["phases"]]
            doc["artifacts"] = [{k: a[k] for k in ("kind", "size", "path")}
                                for a in run["artifacts"]]
            runs.append(doc)
        emit("fruix.report/1", {"page": shown(outcome.page), "runs": runs})
        return int(ExitCode.OK)
    print(f"wrote {shown(outcome.page)} ({len(outcome.runs)} runs)")
    return int(ExitCode.OK)


# -- shell completion ------------------------------------------------------------------------

#: Metavars whose value is a file or a directory, for the shells to complete.
_FILE_METAVARS = {"FILE"}
_DIR_METAVARS = {"DIR", "RESULT_ROOT"}


def completion_command(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Print the completion script of ``fruix`` for ``args.shell``."""
    import shtab

    _mark_paths(parser, shtab.FILE, shtab.DIRECTORY)
    print(shtab.complete(parser, shell=args.shell, root_prefix="fruix"))
    return int(ExitCode.OK)


def _mark_paths(parser: argparse.ArgumentParser, file: Any, directory: Any) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_paths(sub, file, directory)
        elif action.metavar in _FILE_METAVARS:
            action.complete = file  # type: ignore[attr-defined]
        elif action.metavar in _DIR_METAVARS:
            action.complete = directory  # type: ignore[attr-defined]
