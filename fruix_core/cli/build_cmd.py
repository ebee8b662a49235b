"""``fruix native-build run|promote|list|show`` and ``fruix store verify``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fruix_core.config import Config, load_config
from fruix_core.errors import ExitCode, FruixError
from fruix_core.model import CancelToken
from fruix_core.resultroot import ResultRoot, list_runs, resolve_run

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


def run_command(args: argparse.Namespace) -> int:
    from fruix_core.live import LiveView
    from fruix_core.runner import run_build

    config = _config(args)
    cancel = CancelToken()
    progress = None
    if sys.stderr.isatty():
        from fruix_core.cli.store import ProgressLine

        progress = ProgressLine(sys.stderr)
    try:
        with _signals_cancel(cancel), LiveView() as live:
            outcome = run_build(config, executor=args.executor, guest=args.guest,
                                promote=False if args.no_promote else None,
                                resume=args.resume, cancel=cancel, on_output=live.on_output,
                                progress=progress)
    except Exception as exc:
        if progress is not None:
            progress.close()
        if args.json:
            print(json.dumps(_failure_document(exc, args, config), indent=2))
        raise
    if progress is not None:
        progress.close()
    if args.json:
        print(json.dumps(outcome.as_dict(), indent=2))
        return int(ExitCode.OK)
    print(f"run {outcome.run_id}: {outcome.status} (executor {outcome.executor})")
    print(f"result root: {outcome.result_root}")
    if outcome.bundle is not None:
        print(f"bundle: {outcome.bundle}")
        for kind, path in (outcome.artifacts or {}).items():
            print(f"  {kind}: {path}")
    else:
        print("not promoted (--no-promote)")
    return int(ExitCode.OK)


def _failure_document(exc: Exception, args: argparse.Namespace,
                      config: Config) -> dict[str, Any]:
    """The ``--json`` document of a run that failed: always complete, also for our own bugs."""
    if isinstance(exc, FruixError):
        error, code = str(exc), int(exc.exit_code)
    else:
        error, code = f"internal error: {type(exc).__name__}: {exc}", int(ExitCode.INFRASTRUCTURE)
    return {"run_id": getattr(exc, "run_id", None), "status": "failed",
            "executor": args.executor or config.executor,
            "result_root": getattr(exc, "result_root", None), "store": str(config.store),
            "phase": getattr(exc, "stage", None) or getattr(exc, "phase", None),
            "error": error, "exit_code": code}


def _summary(root: ResultRoot) -> dict[str, Any]:
    meta = root.read_metadata()
    status = root.status()
    return {
        "run_id": root.run_id,
        "status": status.state if not status.stale else "stale",
        "failed_phase": status.phase,
        "executor": meta.get("executor"),
        "executor_version": meta.get("executor_version"),
        "base_version": meta.get("base_version"),
        "result_root": str(root.path),
    }


def list_command(args: argparse.Namespace) -> int:
    config = _config(args)
    runs = [_summary(r) for r in list_runs(config.results)]
    if args.json:
        print(json.dumps(runs, indent=2))
        return int(ExitCode.OK)
    if not runs:
        print(f"no runs in {config.results}")
    for run in runs:
        state = run["status"] + (f" ({run['failed_phase']})" if run["failed_phase"] else "")
        print(f"{run['run_id']}  {state:<24}  {run['executor'] or '?'}")
    return int(ExitCode.OK)


def show_command(args: argparse.Namespace) -> int:
    config = _config(args)
    root = resolve_run(config.results, args.run_id)
    doc = _summary(root)
    doc["metadata"] = root.read_metadata()
    doc["logs"] = sorted(str(p) for p in root.logs.glob("*.log")) if root.logs.is_dir() else []
    doc["promotion"] = str(root.promotion_file) if root.promotion_file.exists() else None
    if args.json:
        print(json.dumps(doc, indent=2))
        return int(ExitCode.OK)
    print(f"run {doc['run_id']}: {doc['status']}"
          + (f" ({doc['failed_phase']})" if doc["failed_phase"] else ""))
    for key, value in doc["metadata"].items():
        print(f"  {key} = {value}")
    for log_path in doc["logs"]:
        print(f"  log: {log_path}")
    return int(ExitCode.OK)


def promote_command(args: argparse.Namespace) -> int:
    from fruix_core.cli.store import promote_command as promote

    config = _config(args)
    # The operator's own argument may be a link such as <results>/latest; resolve it once
    # here. Inside the result root nothing is ever followed.
    root = Path(args.result_root)
    if root.is_symlink():
        root = root.resolve()
    return promote(str(root), str(config.store), dry_run=args.dry_run, as_json=args.json)


def prune_command(args: argparse.Namespace) -> int:
    from fruix_core.promotion.gc import DEFAULT_KEEP_LAST
    from fruix_core.prune import describe, prune_runs

    config = _config(args)
    keep_last = DEFAULT_KEEP_LAST if args.keep_last is None else args.keep_last
    report = prune_runs(config, keep_last=keep_last, failed=args.failed, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print("\n".join(describe(report)))
    return int(ExitCode.OK)


def dispatch(args: argparse.Namespace) -> int:
    handlers = {"run": run_command, "promote": promote_command, "list": list_command,
                "show": show_command, "prune": prune_command, "helper": helper_command}
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


