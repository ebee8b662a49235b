"""``fruix native-build run|promote|list|show`` and ``fruix store verify``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fruix_core.cli.jsonout import add_failure_fields, emit
from fruix_core.config import Config, load_config
from fruix_core.errors import Cancelled, ExitCode, FruixError
from fruix_core.model import CancelToken
from fruix_core.resultroot import ResultRoot, list_runs, resolve_run
from fruix_core.runrecord import RunRecord, duration_text, iso_time, read_run, typed_metadata

if TYPE_CHECKING:
    from fruix_core.runner import RunOutcome

__all__ = ["dispatch", "dispatch_store"]


def _config(args: argparse.Namespace) -> Config:
    config = load_config(getattr(args, "config", None))
    store = getattr(args, "store", None)
    if store:
        config = dataclasses.replace(config, store=Path(store).absolute())
    return config


@contextlib.contextmanager
def _signals_cancel(cancel: CancelToken) -> Iterator[None]:
    """SIGTERM and the first Ctrl-C cancel the run cleanly; a second Ctrl-C is abrupt."""
    def on_term(signum: int, _frame: Any) -> None:
        cancel.cancel("terminated" if signum == signal.SIGTERM else "interrupted")
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {s: signal.signal(s, on_term) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def dry_run_command(args: argparse.Namespace, config: Config) -> int:
    """``run --dry-run``: the checks of a run, then its plan; nothing is created."""
    from fruix_core.plan import plan_lines
    from fruix_core.runner import plan_build

    plan = plan_build(config, executor=args.executor, guest=args.guest,
                      promote=False if args.no_promote else None, resume=args.resume)
    if args.json:
        emit(plan["schema"], {k: v for k, v in plan.items() if k not in ("schema", "ok")})
    else:
        print("\n".join(plan_lines(plan)))
    return int(ExitCode.OK)


def resume_command(args: argparse.Namespace, run_id: str) -> str:
    """The exact command that resumes ``run_id`` with the operator's own options."""
    words = ["fruix", "native-build", "run", "--resume", run_id]
    for option, value in (("--config", args.config), ("--executor", args.executor),
                          ("--guest", args.guest), ("--store", args.store)):
        if value is not None:
            paths = option in ("--config", "--store")
            words += [option, os.path.abspath(value) if paths and value else value]
    if args.no_promote:
        words.append("--no-promote")
    return shlex.join(words)


def failure_line(exc: BaseException, args: argparse.Namespace) -> str | None:
    """Where a failed or interrupted run stands and how to go on, in one line.

    ``None`` when the run failed before its result root existed (the error
    says everything then).
    """
    run_id, result_root = getattr(exc, "run_id", None), getattr(exc, "result_root", None)
    if not run_id or not result_root:
        return None
    stage = getattr(exc, "stage", None) or getattr(exc, "phase", None) or "prepare"
    state = "interrupted" if isinstance(exc, Cancelled) else "failed"
    line = f"fruix: run {run_id} {state} in {stage}"
    log = ResultRoot(result_root).log_path(stage)
    if log.is_file():
        line += f"; log: {log}"
    how, command = next_command(exc, args)
    return f"{line}; {how}: {command}"


def next_command(exc: BaseException, args: argparse.Namespace) -> tuple[str, str]:
    """How to go on after ``exc`` ended a run whose result root exists, and the command."""
    run_id, result_root = str(getattr(exc, "run_id", "")), str(getattr(exc, "result_root", ""))
    if getattr(exc, "stage", None) == "promote":  # the build is complete: promote it again
        store = f" --store {shlex.quote(os.path.abspath(args.store))}" if args.store else ""
        config = f" --config {shlex.quote(os.path.abspath(args.config))}" if args.config else ""
        return ("promote it with", f"fruix native-build promote {shlex.quote(result_root)}"
                f"{store}{config}")
    return "resume with", resume_command(args, run_id)


def report_failure(exc: BaseException, args: argparse.Namespace) -> None:
    """Print :func:`failure_line` on stderr. With ``--log-format json`` stderr stays one
    record per event: the line's ``resume`` command joins the final error record instead."""
    line = failure_line(exc, args)
    if line is None:
        return
    if getattr(args, "log_format", "console") == "json":
        exc.__dict__["resume_command"] = next_command(exc, args)[1]
        return
    print(line, file=sys.stderr, flush=True)


def run_command(args: argparse.Namespace) -> int:
    from fruix_core.cli.progress import progress_display
    from fruix_core.runner import run_build

    config = _config(args)
    if getattr(args, "dry_run", False):
        return dry_run_command(args, config)
    cancel = CancelToken()
    display = progress_display(getattr(args, "log_format", "console"))
    try:
        with _signals_cancel(cancel), display:
            outcome = run_build(config, executor=args.executor, guest=args.guest,
                                promote=False if args.no_promote else None,
                                resume=args.resume, cancel=cancel, on_output=display.on_output,
                                progress=display.promotion, on_event=display.on_event)
    except BaseException as exc:
        report_failure(exc, args)
        # main prints the fruix.error/1 document; these keys make it a run's record too.
        add_failure_fields(exc, status="failed", executor=args.executor or config.executor,
                           store=str(config.store))
        raise
    if args.json:
        emit("fruix.run/1", outcome.as_dict())
        return int(ExitCode.OK)
    return _print_outcome(outcome, f"executor {outcome.executor}")


def attach_command(args: argparse.Namespace) -> int:
    """``native-build attach RUN_ID``: follow a guest run to its end, import and promote it."""
    from fruix_core.attach import attach_build, attach_point
    from fruix_core.cli.progress import progress_display
    from fruix_core.errors import BuildFailed

    config = _config(args)
    point = attach_point(config, args.run_id)  # a refusal: main prints fruix.error/1
    if point is None:
        record = read_run(resolve_run(config.results, args.run_id))
        if args.json:
            emit("fruix.run-list/1", {"results": str(config.results),
                                      "runs": [_summary(record)], "attached": False})
        else:
            print(f"run {record.run_id} is already ok; nothing to attach")
        return int(ExitCode.OK)
    cancel = CancelToken()
    display = progress_display(getattr(args, "log_format", "console"))
    try:
        with _signals_cancel(cancel), display:
            outcome = attach_build(config, point, promote=False if args.no_promote else None,
                                   cancel=cancel, on_output=display.on_output,
                                   progress=display.promotion, on_event=display.on_event)
    except BaseException as exc:
        if isinstance(exc, BuildFailed):
            print(f"fruix: the guest's run failed; once fixed, continue it with: fruix "
                  f"native-build run --resume {point.root.run_id} --executor {point.executor}",
                  file=sys.stderr)
        add_failure_fields(exc, status="failed", executor=point.executor,
                           store=str(config.store), attached=True)
        raise
    if args.json:
        emit("fruix.run/1", {**outcome.as_dict(), "attached": True})
        return int(ExitCode.OK)
    return _print_outcome(outcome, f"attached at {point.phase}, executor {outcome.executor}")


def _print_outcome(outcome: RunOutcome, how: str) -> int:
    """The text report of a run that ended ok: result root, bundle and artifacts."""
    print(f"run {outcome.run_id}: {outcome.status} ({how})")
    print(f"result root: {outcome.result_root}")
    if outcome.bundle is not None:
        print(f"bundle: {outcome.bundle}")
        for kind, path in (outcome.artifacts or {}).items():
            print(f"  {kind}: {path}")
    else:
        print("not promoted (--no-promote)")
    return int(ExitCode.OK)


def _summary(record: RunRecord) -> dict[str, Any]:
    """One run as ``list --json`` gives it (``show --json`` adds to it)."""
    meta = record.metadata
    return {
        "run_id": record.run_id,
        "status": record.state,
        "failed_phase": record.status.phase,
        "executor": meta.get("executor"),
        "executor_version": meta.get("executor_version"),
        "base_version": meta.get("base_version"),
        "guest": meta.get("guest") or None,
        "started": iso_time(record.started),
        "finished": iso_time(record.finished),
        "seconds": record.seconds,
        "result_root": str(record.root.path),
        "bundle": meta.get("bundle") or None,
    }


def list_command(args: argparse.Namespace) -> int:
    """The runs of the results directory, oldest first: a table, or ``fruix.run-list/1``."""
    config = _config(args)
    runs = [_summary(read_run(r)) for r in list_runs(config.results)]
    if args.json:
        emit("fruix.run-list/1", {"results": str(config.results), "runs": runs})
        return int(ExitCode.OK)
    if not runs:
        print(f"no runs in {config.results}")
        return int(ExitCode.OK)
    rows = [("RUN ID", "STARTED (UTC)", "DURATION", "STATUS", "EXECUTOR")]
    for run in runs:
        started = run["started"].replace("T", " ").rstrip("Z") if run["started"] else "?"
        state = run["status"] + (f" ({run['failed_phase']})" if run["failed_phase"] else "")
        rows.append((run["run_id"], started, duration_text(run["seconds"]), state,
                     run["executor"] or "?"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)),
                         row[-1]]))
    return int(ExitCode.OK)


def _promoted(record: RunRecord, store: Path) -> tuple[str | None, dict[str, str]]:
    """The run's bundle and artifact objects: as its metadata records them, else (runs
    promoted before that was recorded) the bundle in ``store`` naming the run."""
    from fruix_core.model import ARTIFACT_KINDS
    from fruix_core.promotion.diff import bundle_objects, bundle_of_run

    meta = record.metadata
    artifacts = {k: meta[f"artifact_{k}"] for k in ARTIFACT_KINDS if meta.get(f"artifact_{k}")}
    if meta.get("bundle"):
        return meta["bundle"], artifacts
    try:
        bundle = bundle_of_run(store, record.run_id, meta)
        if bundle is None:
            return None, {}
        return str(bundle), {k: str(v) for k, v in bundle_objects(bundle).items()}
    except FruixError:
        return None, {}


def show_command(args: argparse.Namespace) -> int:
    """One run: status, timings, phases in build order, store paths; or ``fruix.run-record/1``."""
    config = _config(args)
    record = read_run(resolve_run(config.results, args.run_id))
    root = record.root
    doc = _summary(record)
    doc["bundle"], doc["artifacts"] = _promoted(record, config.store)
    doc["host_name"] = record.metadata.get("host_name") or None
    doc["phases"] = [{"name": p.name, "started": iso_time(p.started),
                      "finished": iso_time(p.finished), "seconds": p.seconds,
                      "timing": p.timing, "log": str(p.log) if p.log else None}
                     for p in record.phases]
    doc["metadata"] = typed_metadata(record.metadata)
    doc["logs"] = [phase["log"] for phase in doc["phases"] if phase["log"]]
    doc["promotion"] = str(root.promotion_file) if root.promotion_file.exists() else None
    if args.json:
        emit("fruix.run-record/1", doc)
        return int(ExitCode.OK)
    print(f"run {doc['run_id']}: {doc['status']}"
          + (f" ({doc['failed_phase']})" if doc["failed_phase"] else ""))
    fields = [
        ("executor", f"{doc['executor'] or '?'} {doc['executor_version'] or ''}".rstrip()),
        ("guest", f"{doc['guest']} (host {doc['host_name'] or '?'})" if doc["guest"]
         else f"none (built on {doc['host_name'] or 'this host'})"),
        ("started", doc["started"] or "?"),
        ("finished", doc["finished"] or "-"),
        ("duration", duration_text(doc["seconds"])),
        ("result root", doc["result_root"]),
        ("bundle", doc["bundle"] or "not promoted"),
        *((f"  {kind}", path) for kind, path in doc["artifacts"].items()),
    ]
    for label, value in fields:
        print(f"  {label:<12} {value}")
    if doc["phases"]:
        print("phases:")
        width = max(len(p["name"]) for p in doc["phases"])
        for phase in doc["phases"]:
            print(f"  {phase['name']:<{width}}  {phase['started'] or '?':<20}  "
                  f"{duration_text(phase['seconds']):>7}  {phase['log'] or '(no log)'}")
    print("metadata:")
    for key, value in record.metadata.items():
        print(f"  {key} = {value}")
    return int(ExitCode.OK)


def promote_command(args: argparse.Namespace) -> int:
    from fruix_core.cli.store import promote_command as promote

    config = _config(args)
    # The operator's own argument may be a link such as <results>/latest; resolve it once
    # here. Inside the result root nothing is ever followed.
    root = Path(args.result_root)
    if root.is_symlink():
        root = root.resolve()
    try:
        return promote(str(root), str(config.store), dry_run=args.dry_run, as_json=args.json)
    except BaseException as exc:
        if root.is_dir():  # its failure document names the result root and its run
            add_failure_fields(exc, run_id=root.absolute().name,
                               result_root=str(root.absolute()))
        raise


def prune_command(args: argparse.Namespace) -> int:
    from fruix_core.promotion.gc import DEFAULT_KEEP_LAST
    from fruix_core.prune import describe, prune_runs

    config = _config(args)
    keep_last = DEFAULT_KEEP_LAST if args.keep_last is None else args.keep_last
    report = prune_runs(config, keep_last=keep_last, failed=args.failed, dry_run=args.dry_run)
    if args.json:
        emit("fruix.prune/1", report.as_dict())
    else:
        print("\n".join(describe(report)))
    return int(ExitCode.OK)


def dispatch(args: argparse.Namespace) -> int:
    handlers = {"run": run_command, "promote": promote_command, "list": list_command,
                "show": show_command, "prune": prune_command, "helper": helper_command,
                "attach": attach_command}
    return handlers[args.action](args)


#: The POSIX sh helper, package data of the guest-self-hosted plugin.
HELPER_SCRIPT = "fruix-self-hosted-native-build"


def shipped_helper() -> Path | None:
    """The in-guest helper script the guest-self-hosted plugin ships, if it is installed."""
    from importlib import resources

    try:
        script = Path(str(resources.files("fruix_guest_self_hosted") / HELPER_SCRIPT))
    except ModuleNotFoundError:
        return None
    return script if script.is_file() else None


def helper_command(args: argparse.Namespace) -> int:
    """``native-build helper --print``: the guest helper, for an operator's overlay."""
    from fruix_core.errors import UsageError

    script = shipped_helper()
    if script is None:
        raise UsageError("the guest-self-hosted plugin (fruix-executor-guest-self-hosted), "
                         "which ships the helper script, is not installed")
    sys.stdout.buffer.write(script.read_bytes())
    sys.stdout.buffer.flush()
    return int(ExitCode.OK)


def dispatch_store(args: argparse.Namespace) -> int:
    from fruix_core.cli import store as commands

    config = _config(args)
    store = str(config.store)
    if args.action == "gc":
        return commands.gc_command(store, keep_last=args.keep_last, dry_run=args.dry_run,
                                   as_json=args.json)
    if args.action == "pin":
        return commands.pin_command(store, args.target, name=args.name, remove=args.remove,
                                    as_json=args.json)
    if args.action == "export-tar":
        return commands.export_tar_command(args.object, store, args.output)
    if args.action == "roots":
        return commands.roots_command(store, keep_last=args.keep_last, as_json=args.json)
    return commands.verify_command(list(args.paths), store, as_json=args.json, fast=args.fast)


