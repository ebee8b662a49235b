"""``fruix-self-hosted-native-build``: the helper that builds the base inside a Fruix guest.

::

    fruix-self-hosted-native-build [--system-root DIR] [--jobs N] [--run-id ID] [--json]
                                   [--make CMD] [--kernconf NAME] [--phase-timeout S]
                                   [--keep-work] [--markers] [--version]
                                   [--check | --prepare [--resume] | --phase NAME | --finish]

It checks the development overlay, recovers the FreeBSD source store from
``/run/current-system/metadata/store-layout.scm``, runs the five phases in the
sanitised build environment and leaves a complete result root under
``/var/lib/fruix/native-builds/<run-id>/`` (see
:mod:`fruix_guest_self_hosted.guestbuild`).

Without a step option it does the whole build in one go. The host drives it
step by step instead, one invocation each, with the same options every time:

``--prepare --run-id ID``
    check the guest, reserve the run id, create the result root (``status``
    ``running``) and the work area; with ``--resume``, reopen the failed run
    ``ID`` and keep its work area;
``--phase NAME --run-id ID``
    run one phase of that run, writing ``logs/NAME.log`` and ``status``
    (``failed NAME`` when it fails); exit status 1 when the phase failed;
``--finish --run-id ID``
    stage the artifacts, write ``promotion.scm``, ``metadata`` and ``status``
    ``ok``, swap ``latest``, remove the work area (unless ``--keep-work``).

Output: build lines on stdout (on stderr with ``--json``, whose document is
then the only thing on stdout); with ``--markers`` everything goes to stdout
in the line protocol of :mod:`fruix_guest_self_hosted.protocol`. Exit codes
are :class:`fruix_core.errors.ExitCode`: 0 ok, 1 a phase failed, 2 bad usage
or guest metadata, 3 the guest is unfit or the machinery failed, 130
interrupted (SIGINT, SIGTERM). A hang-up (SIGHUP: the login session or the
SSH connection that started the helper ended) is ignored; the build goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import structlog

from fruix_core.api import (
    BaseMetadata,
    BuildFailed,
    Cancelled,
    CancelToken,
    ExitCode,
    FruixError,
    PhaseResult,
    UsageError,
)
from fruix_guest_self_hosted import protocol
from fruix_guest_self_hosted.__about__ import __version__
from fruix_guest_self_hosted.guestbuild import (
    GuestRun,
    PhaseEvents,
    finish_run,
    inspect_guest,
    mark_interrupted,
    prepare_run,
    run_in_guest,
    run_phase,
)

__all__ = ["PROG", "build_parser", "main", "summary_document"]

PROG = protocol.PROG

log = structlog.get_logger(__name__)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (all CPUs) or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 (no limit) or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The helper's command line."""
    defaults = BaseMetadata()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Build the native FreeBSD base inside this Fruix guest, from the source "
                    "store its system declares, into /var/lib/fruix/native-builds/<run-id>.",
        epilog="Exit codes: 0 ok, 1 a phase failed, 2 bad usage or guest metadata, "
               "3 guest unfit or infrastructure failure, 130 interrupted.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--system-root", metavar="DIR", default="/",
                        help="the guest's system root (default: /)")
    parser.add_argument("--jobs", metavar="N", type=_jobs, default=0,
                        help="make -j value for buildworld/buildkernel (default 0: all CPUs)")
    parser.add_argument("--run-id", metavar="ID",
                        help="run id to use (default: a fresh UTC timestamp)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON summary document on stdout")
    parser.add_argument("--make", metavar="CMD", default="bmake",
                        help="BSD make command, words allowed (default: bmake; FreeBSD "
                             "installs make as bmake too)")
    parser.add_argument("--base-name", metavar="NAME", default=defaults.name,
                        help=f"declared base name (default: {defaults.name})")
    parser.add_argument("--base-version", metavar="VERSION", default=defaults.version,
                        help=f"declared base version (default: {defaults.version})")
    parser.add_argument("--arch", metavar="ARCH", default=defaults.arch,
                        help=f"declared architecture (default: {defaults.arch})")
    parser.add_argument("--kernconf", metavar="NAME", default=defaults.kernconf,
                        help=f"kernel configuration (default: {defaults.kernconf})")
    parser.add_argument("--phase-timeout", metavar="SECONDS", type=_seconds, default=0,
                        help="seconds one phase may run (default 0: no limit)")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep the object/stage work area after a successful run")
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--check", action="store_true",
                       help="only check the guest (overlay, store layout, tools) and exit")
    steps.add_argument("--prepare", action="store_true",
                       help="step 1: check the guest and open run --run-id")
    steps.add_argument("--phase", metavar="NAME",
                       help="step 2: run one phase of the prepared run --run-id")
    steps.add_argument("--finish", action="store_true",
                       help="step 3: stage the artifacts and complete run --run-id")
    parser.add_argument("--resume", action="store_true",
                        help="with --prepare: reopen the failed run --run-id")
    parser.add_argument("--markers", action="store_true",
                        help="machine-readable progress on stdout (for the host-side executor)")
    parser.add_argument("--log-format", choices=("console", "json"), default="console",
                        help="log format on stderr (default: console)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                        default="warning", help="minimum log level (default: warning)")
    return parser


def _base(args: argparse.Namespace) -> BaseMetadata:
    values = {"base-name": args.base_name, "base-version": args.base_version,
              "arch": args.arch, "kernconf": args.kernconf}
    for option, value in values.items():
        if not value or any(c.isspace() or c in "/\\\"'" for c in value):
            raise UsageError(f"--{option}: must be a non-empty word without spaces, "
                             f"quotes or slashes, not {value!r}")
    if not args.make.split():
        raise UsageError("--make: must name a make command")
    return BaseMetadata(name=args.base_name, version=args.base_version, arch=args.arch,
                        kernconf=args.kernconf)


# -- output -------------------------------------------------------------------------------


class _Output:
    """Where build lines, phase boundaries and the summary go, per output mode.

    Writes never fail the build: when the reader went away (the host hung up),
    the helper keeps building and the result root still completes.
    """

    def __init__(self, *, markers: bool, as_json: bool) -> None:
        self.markers = markers
        self.as_json = as_json
        self.lines: TextIO = sys.stdout if markers or not as_json else sys.stderr
        self.detached = False
        self._lock = threading.Lock()

    def _write(self, stream: TextIO, text: str) -> None:
        with self._lock:
            if self.detached and stream is self.lines:
                return
            try:
                stream.write(text + "\n")
                stream.flush()
            except (OSError, ValueError):
                self.detached = True

    def line(self, _phase: str, text: str) -> None:
        self._write(self.lines, protocol.escape_output(text) if self.markers else text)

    def phase_start(self, phase: str) -> None:
        self._write(self.lines, protocol.phase_start(phase) if self.markers else f"==> {phase}")

    def phase_end(self, result: PhaseResult) -> None:
        if self.markers:
            text = protocol.phase_end(result.phase, result.returncode, result.duration)
        else:
            state = "ok" if result.ok else f"failed (exit status {result.returncode})"
            text = f"==> {result.phase}: {state} in {result.duration:.1f} s"
        self._write(self.lines, text)

    def events(self) -> PhaseEvents:
        return PhaseEvents(on_output=self.line, on_phase_start=self.phase_start,
                           on_phase_end=self.phase_end)

    def finish(self, document: dict[str, Any]) -> None:
        if self.markers:
            self._write(sys.stdout, protocol.summary_line(document))
        elif self.as_json:
            self._write(sys.stdout, json.dumps(document, indent=2, sort_keys=True))
        elif document["status"] == "ok":
            self._write(sys.stdout, f"run {document['run_id']}: ok "
                                    f"(executor guest-self-hosted {__version__})")
            self._write(sys.stdout, f"result root: {document['result_root']}")
        elif document["status"] == "ready":
            self._write(sys.stdout, f"guest ready: source store {document['source_store']}")
        elif document["status"] in ("prepared", "phase-ok"):
            self._write(sys.stdout, f"run {document['run_id']}: {document['status']}")


# -- summary ------------------------------------------------------------------------------


def summary_document(run: GuestRun, *, status: str, exit_code: int,
                     error: BaseException | None = None) -> dict[str, Any]:
    """The ``--json`` document: what was built where, or what went wrong.

    ``status`` is ``ok``, ``failed``, ``interrupted``, or for the steps ``ready``
    (``--check``), ``prepared`` (``--prepare``) and ``phase-ok`` (``--phase``).
    """
    doc: dict[str, Any] = {
        "helper": PROG,
        "helper_version": __version__,
        "executor": "guest-self-hosted",
        "status": status,
        "exit_code": int(exit_code),
        "run_id": run.run_id,
        "result_root": str(run.result_root) if run.result_root else None,
        "build_root": str(run.build_root) if run.build_root else None,
        "latest": run.latest,
        "jobs": run.jobs or None,
        "phases": [{"phase": p.phase, "returncode": p.returncode,
                    "seconds": round(p.duration, 3)} for p in run.phases],
        "failed_phase": None,
        "error": None,
        "error_type": None,
    }
    if run.facts is not None:
        doc.update(run.facts.as_dict())
    if error is not None:
        doc["error"] = str(error)
        doc["error_type"] = type(error).__name__
        if isinstance(error, BuildFailed):
            doc["failed_phase"] = error.phase
        elif run.run_id is not None:
            doc["failed_phase"] = getattr(error, "phase", None) or run.current
        if getattr(error, "timeout", None) is not None:
            doc["timeout"] = error.timeout  # type: ignore[attr-defined]
    if run.staged is not None:
        doc["artifacts"] = {
            kind: {"path": f"artifacts/{kind}", "size": run.staged.sizes.get(kind, 0),
                   "files": dict(run.staged.key_files.get(kind, ()))}
            for kind in run.staged.kinds}
    return doc


@contextlib.contextmanager
def _signals_cancel(cancel: CancelToken, run: GuestRun) -> Iterator[None]:
    """SIGTERM and the first Ctrl-C stop the build cleanly (status ``failed``); SIGHUP is ignored.

    A build started from an interactive login must outlive the session, as
    FreeBSD's ``nohup``/``daemon(8)`` would make it.
    """
    def on_signal(signum: int, _frame: Any) -> None:
        first = not cancel.cancelled
        reasons = {int(signal.SIGTERM): "terminated"}
        cancel.cancel(reasons.get(signum, "interrupted"))
        if first:
            mark_interrupted(run)
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, on_signal) for s in handled}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _error_line(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the helper; returns the exit code (see the module docstring)."""
    args = build_parser().parse_args(argv)
    from fruix_core.api import configure_logging

    configure_logging(args.log_format, args.log_level)
    output = _Output(markers=args.markers, as_json=args.json)
    run = GuestRun()
    cancel = CancelToken()
    try:
        with _signals_cancel(cancel, run):
            base = _base(args)
            system_root = Path(os.path.abspath(args.system_root))
            if args.check:
                run.facts = inspect_guest(system_root, args.make)
                output.finish(summary_document(run, status="ready", exit_code=ExitCode.OK))
                return int(ExitCode.OK)
            jobs = run.jobs = args.jobs or (os.cpu_count() or 1)
            common = {"system_root": system_root, "jobs": jobs, "make": args.make, "base": base,
                      "run": run}
            step = args.prepare or args.phase is not None or args.finish
            if (step or args.resume) and not args.run_id:
                raise UsageError("--prepare, --phase and --finish need --run-id")
            if args.resume and not args.prepare:
                raise UsageError("--resume goes with --prepare")
            if args.prepare:
                prepare_run(run_id=args.run_id, resume=args.resume, **common)
                output.finish(summary_document(run, status="prepared", exit_code=ExitCode.OK))
                return int(ExitCode.OK)
            if args.phase is not None:
                run_phase(run_id=args.run_id, phase=args.phase,
                          phase_timeout=args.phase_timeout or None, cancel=cancel,
                          events=output.events(), **common)
                output.finish(summary_document(run, status="phase-ok", exit_code=ExitCode.OK))
                return int(ExitCode.OK)
            if args.finish:
                finish_run(run_id=args.run_id, keep_work=args.keep_work, **common)
                output.finish(summary_document(run, status="ok", exit_code=ExitCode.OK))
                return int(ExitCode.OK)
            run_in_guest(system_root=system_root, jobs=jobs,
                         make=args.make, base=base, run_id=args.run_id,
                         phase_timeout=args.phase_timeout or None, keep_work=args.keep_work,
                         cancel=cancel, events=output.events(), run=run)
    except FruixError as exc:
        status = "interrupted" if isinstance(exc, Cancelled) else "failed"
        _error_line(str(exc))
        output.finish(summary_document(run, status=status, exit_code=exc.exit_code, error=exc))
        return int(exc.exit_code)
    except KeyboardInterrupt:
        exc2 = Cancelled("interrupted")
        _error_line(str(exc2))
        output.finish(summary_document(run, status="interrupted",
                                       exit_code=ExitCode.INTERRUPTED, error=exc2))
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:  # a bug of ours: one line, the details in the debug log
        log.debug("internal error", exc_info=True)
        _error_line(f"internal error: {type(exc).__name__}: {exc}")
        output.finish(summary_document(run, status="failed",
                                       exit_code=ExitCode.INFRASTRUCTURE, error=exc))
        return int(ExitCode.INFRASTRUCTURE)
    output.finish(summary_document(run, status="ok", exit_code=ExitCode.OK))
    return int(ExitCode.OK)


if __name__ == "__main__":
    sys.exit(main())
