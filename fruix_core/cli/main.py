"""``fruix``: the operator's command line.

Parsing and dispatch only; each command lives in its own module, imported
when it runs so ``fruix --help`` stays fast. Every :class:`FruixError` becomes
one line on stderr and its documented exit code; nothing else escapes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from fruix_core.__about__ import __version__
from fruix_core.errors import ExitCode, FruixError

__all__ = ["build_parser", "main"]


def _common(parser: argparse.ArgumentParser, *, config: bool = True, json: bool = True) -> None:
    if config:
        parser.add_argument("--config", metavar="FILE",
                            help="config file (default: ./fruix.toml, then the user config)")
    if json:
        parser.add_argument("--json", action="store_true", help="print one JSON document")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fruix", description="Build a native FreeBSD base and promote it into the store.",
        epilog="Exit codes: 0 ok, 1 build failed, 2 bad input or usage, "
               "3 infrastructure failure, 4 verification failed, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"fruix {__version__}")
    parser.add_argument("--log-format", choices=("console", "json"), default="console",
                        help="log format on stderr (default: console)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="warning", help="minimum log level (default: warning)")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    executors = top.add_parser("executors", help="installed executors and guest providers")
    ex_sub = executors.add_subparsers(dest="action", metavar="ACTION", required=True)
    ex_list = ex_sub.add_parser("list", help="list installed plugins")
    _common(ex_list, config=False)
    ex_check = ex_sub.add_parser(
        "check", help="run an installed executor through the conformance suite")
    ex_check.add_argument("name", metavar="NAME", help="the executor's entry-point name")
    _common(ex_check)

    conf = top.add_parser("config", help="the configuration")
    conf_sub = conf.add_subparsers(dest="action", metavar="ACTION", required=True)
    conf_check = conf_sub.add_parser(
        "check", help="validate the config file (every plugin table) and print it resolved")
    _common(conf_check)

    nb = top.add_parser("native-build", help="build and promote a native base")
    nb_sub = nb.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = nb_sub.add_parser("run", help="build the base (default: the sample, locally)")
    run.add_argument("--executor", metavar="NAME", help="executor (overrides build.executor)")
    run.add_argument("--guest", metavar="NAME", help="guest provider (overrides build.guest)")
    run.add_argument("--store", metavar="DIR", help="store directory (overrides paths.store)")
    run.add_argument("--no-promote", action="store_true", help="do not promote the result")
    run.add_argument("--resume", metavar="RUN_ID", help="restart a failed run at its phase")
    run.add_argument("--dry-run", action="store_true",
                     help="check everything and print the plan; build and create nothing")
    _common(run)
    attach = nb_sub.add_parser(
        "attach", help="take up a guest run whose host process went away; import its result")
    attach.add_argument("run_id", metavar="RUN_ID", help="run id (or latest)")
    attach.add_argument("--store", metavar="DIR", help="store directory (overrides paths.store)")
    attach.add_argument("--no-promote", action="store_true", help="do not promote the result")
    _common(attach)
    promote = nb_sub.add_parser("promote", help="promote a result root into the store")
    promote.add_argument("result_root", metavar="RESULT_ROOT")
    promote.add_argument("--store", metavar="DIR", help="store directory")
    promote.add_argument("--dry-run", action="store_true", help="validate and name, write nothing")
    _common(promote)
    nb_list = nb_sub.add_parser("list", help="list runs in the results directory")
    _common(nb_list)
    helper = nb_sub.add_parser("helper", help="the in-guest helper script (POSIX sh)")
    helper.add_argument("--print", action="store_true", dest="print_script", required=True,
                        help="write fruix-self-hosted-native-build to stdout")
    _common(helper, config=False, json=False)
    show = nb_sub.add_parser("show", help="show one run")
    show.add_argument("run_id", metavar="RUN_ID")
    _common(show)
    prune = nb_sub.add_parser("prune", help="remove old result roots and build areas")
    prune.add_argument("--keep-last", type=int, metavar="N",
                       help="successful runs to keep, newest first (default: 3)")
    prune.add_argument("--failed", action="store_true",
                       help="also remove failed and stale runs")
    prune.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    _common(prune)
    logs = nb_sub.add_parser("logs", help="print or follow a run's phase logs")
    logs.add_argument("run_id", metavar="RUN", help="run id (or latest)")
    logs.add_argument("phase", nargs="?", metavar="PHASE", help="one phase (default: all)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="wait for new lines until the run is no longer running")
    logs.add_argument("--interval", type=float, default=0.2, help=argparse.SUPPRESS)
    _common(logs, json=False)
    report = nb_sub.add_parser("report", help="write an HTML build status page")
    report.add_argument("-o", "--output", metavar="DIR",
                        help="directory of index.html (default: 'report' next to the results)")
    report.add_argument("--limit", type=int, default=20, metavar="N",
                        help="newest runs shown (default: 20)")
    report.add_argument("--store", metavar="DIR", help="store directory")
    _common(report)

    guests = top.add_parser("guests", help="guests of in-guest executors")
    gu_sub = guests.add_subparsers(dest="action", metavar="ACTION", required=True)
    release = gu_sub.add_parser(
        "release", help="release the configured guest a run kept or left (shut down, revert)")
    release.add_argument("--guest", metavar="NAME",
                         help="guest provider (overrides build.guest)")
    _common(release)

    store = top.add_parser("store", help="store maintenance")
    st_sub = store.add_subparsers(dest="action", metavar="ACTION", required=True)
    verify = st_sub.add_parser("verify", help="re-hash store objects against their identity")
    verify.add_argument("paths", nargs="*", metavar="STORE_PATH")
    verify.add_argument("--store", metavar="DIR", help="store directory")
    verify.add_argument("--fast", action="store_true",
                        help="trust files whose stat is unchanged since a full verify hashed them")
    _common(verify)
    gc = st_sub.add_parser("gc", help="delete store objects no root reaches")
    gc.add_argument("--store", metavar="DIR", help="store directory")
    gc.add_argument("--dry-run", action="store_true", help="print what would go, delete nothing")
    gc.add_argument("--keep-last", type=int, metavar="N",
                    help="successful runs kept per results directory (default: 3)")
    _common(gc)
    diff = st_sub.add_parser("diff", help="files that differ between two bundles, objects or runs")
    diff.add_argument("a", metavar="A", help="bundle, artifact object, or run id")
    diff.add_argument("b", metavar="B", help="bundle, artifact object, or run id")
    diff.add_argument("--store", metavar="DIR", help="store directory")
    _common(diff)
    completion = top.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh"))
    pin = st_sub.add_parser("pin", help="make a bundle or object a GC root")
    pin.add_argument("target", metavar="BUNDLE|OBJECT",
                     help="store path or object name (with --remove: the pin's name)")
    pin.add_argument("--name", metavar="NAME", help="name of the root (default: the object's)")
    pin.add_argument("--remove", action="store_true", help="remove the pin named TARGET")
    pin.add_argument("--store", metavar="DIR", help="store directory")
    _common(pin)
    roots = st_sub.add_parser("roots", help="list the store's GC roots")
    roots.add_argument("--store", metavar="DIR", help="store directory")
    roots.add_argument("--keep-last", type=int, metavar="N",
                       help="successful runs kept per results directory (default: 3)")
    _common(roots)
    export = st_sub.add_parser(
        "export-tar", help="write an artifact object as a pax tar with owners, modes and flags")
    export.add_argument("object", metavar="OBJECT", help="store path, or object name in --store")
    export.add_argument("-o", "--output", metavar="FILE", help="tar file (default: stdout)")
    export.add_argument("--store", metavar="DIR", help="store directory")
    _common(export)
    return parser


#: (command, action) -> handler in fruix_core.cli.ops_cmd
_OPS = {("store", "diff"): "diff_command", ("native-build", "logs"): "logs_command",
        ("native-build", "report"): "report_command"}


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "completion":
        from fruix_core.cli import ops_cmd

        return ops_cmd.completion_command(args, build_parser())
    if (args.command, args.action) in _OPS:
        from fruix_core.cli import ops_cmd

        return int(getattr(ops_cmd, _OPS[args.command, args.action])(args))
    if args.command == "executors":
        from fruix_core.cli import plugins_cmd

        if args.action == "check":
            return plugins_cmd.check_command(args.name, config_file=args.config,
                                             as_json=args.json)
        return plugins_cmd.list_command(as_json=args.json)
    if args.command == "config":
        from fruix_core.cli import config_cmd

        return config_cmd.check_command(args)
    if args.command == "native-build":
        from fruix_core.cli import build_cmd

        return build_cmd.dispatch(args)
    if args.command == "guests":
        from fruix_core.cli import guests_cmd

        return guests_cmd.release_command(args)
    if args.command == "store":
        from fruix_core.cli import build_cmd

        return build_cmd.dispatch_store(args)
    raise AssertionError(args.command)


def _json_failure(args: argparse.Namespace, exc: BaseException) -> None:
    """With ``--json``, a command that raised still prints one document: ``fruix.error/1``."""
    if getattr(args, "json", False):
        from fruix_core.cli.jsonout import failure_document

        command = " ".join(filter(None, (args.command, getattr(args, "action", None))))
        print(json.dumps(failure_document(exc, command), indent=2), flush=True)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; with ``--log-format json`` a usage error is a JSON line too."""
    words = list(sys.argv[1:] if argv is None else argv)
    pairs = {f"{a}={b}" for a, b in zip(words, words[1:], strict=False)}
    if "--log-format=json" not in words and "--log-format=json" not in pairs:
        return parser.parse_args(words)
    import contextlib
    import io

    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            return parser.parse_args(words)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise
        lines = usage.getvalue().strip().splitlines() or ["bad usage"]
        message = lines[-1].split(": error: ", 1)[-1]
        raise SystemExit(_json_error(message, int(ExitCode.USAGE), usage="\n".join(lines))
                         ) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, argv)
    from fruix_core.logconfig import configure_logging

    configure_logging(args.log_format, args.log_level)
    as_json = args.log_format == "json"
    try:
        return _dispatch(args)
    except FruixError as exc:
        _json_failure(args, exc)
        tail = getattr(exc, "log_tail", "")
        if as_json:
            return _json_error(str(exc), int(exc.exit_code), run_id=exc.run_id,
                               result_root=exc.result_root, stage=exc.stage,
                               log_tail=tail or None,
                               resume=getattr(exc, "resume_command", None))
        print(f"fruix: error: {exc}", file=sys.stderr)
        if tail:
            print("--- last lines of the log ---", file=sys.stderr)
            print(tail, file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt as exc:
        _json_failure(args, exc)
        if as_json:
            return _json_error("interrupted", int(ExitCode.INTERRUPTED))
        print("fruix: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitCode.OK)
    except Exception as exc:  # a bug of ours: one line for the operator, details in the log
        import structlog

        structlog.get_logger("fruix").debug("internal error", exc_info=True)
        _json_failure(args, exc)
        message = (f"internal error: {type(exc).__name__}: {exc} "
                   "(rerun with --log-level debug for details)")
        if as_json:
            return _json_error(message, int(ExitCode.INFRASTRUCTURE))
        print(f"fruix: {message}", file=sys.stderr)
        return int(ExitCode.INFRASTRUCTURE)


def _json_error(message: str, exit_code: int, **fields: Any) -> int:
    """``--log-format json``: the final error as one JSON line on stderr."""
    from fruix_core.logconfig import json_record

    print(json_record("error", message, message=message, exit_code=exit_code, **fields),
          file=sys.stderr)
    return exit_code


if __name__ == "__main__":
    # ``python -m`` puts the working directory first on sys.path: never import plugins
    # from wherever an operator happens to stand (and its name need not be UTF-8).
    import os

    _cwd = os.getcwd()
    sys.path[:] = [p for p in sys.path if p not in ("", _cwd)]
    sys.exit(main())
