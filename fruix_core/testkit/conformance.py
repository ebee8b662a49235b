"""The executor conformance suite: ``fruix executors check NAME``, and the same as a pytest plugin.

Any installed executor can be run through it. It builds with the bundled
sample base and a toy base (fast, easy to break or to hang), on this machine
and, for in-guest executors, in a local test guest: a real OpenSSH sshd on
loopback serving guest system roots laid out like Fruix guests, reached
through the ``ssh`` guest provider. Every executor gets the guest, except one
that declares it builds on this machine (``fruix_runs_in_guest = False``),
which the core would refuse with a guest. The checks, in order:

``load``
    the plugin loads, targets this plugin API and its hooks fit their specifications;
``settings``
    it declares its settings (``fruix_settings``) and its table validates;
``build``
    it builds the sample base;
``signatures``
    the four tree signatures equal the ``local`` executor's;
``logs``
    one non-empty log per phase, nothing else;
``status``
    ``ok`` with the start and duration of every phase recorded, ``latest`` swapped;
``provenance``
    metadata and promotion.scm name the entry point, its distribution's
    version and the run;
``teardown``
    :func:`~fruix_core.hookspecs.ExecutorSpec.fruix_teardown_env` called exactly once;
``cancel-during-phase`` / ``cancel-between-phases``
    the run stops with ``failed <phase>`` on the host and in the guest, teardown
    is called once, and nothing of the run is left running (no process in
    the source trees, no SSH session);
``phase-timeout``
    a phase running past ``build.phase_timeout`` is stopped;
``resume``
    ``--resume`` of a run that failed in ``installworld`` completes it.

Pytest: the fixture ``fruix_executor_conformance`` (from
:mod:`fruix_core.testkit.fixtures`) runs the suite for a name and returns
the :class:`CheckResult` list; assert :func:`all_passed`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fruix_core.testkit import (
    TeardownRecorder,
    Workspace,
    copy_sample_source,
    make_toy_source,
    make_tree_writable,
    processes_in,
    toml_value,
    wait_for,
)

__all__ = ["CHECKS", "CheckResult", "ConformanceLab", "all_passed", "run_checks"]

PHASES = ("buildworld", "buildkernel", "installworld", "distribution", "installkernel")
KINDS = ("world", "kernel", "headers", "bootloader")

#: The checks, in the order they run.
CHECKS = ("load", "settings", "build", "signatures", "logs", "status", "provenance", "teardown",
          "cancel-during-phase", "cancel-between-phases", "phase-timeout", "resume")


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: its name, whether it passed, and a one-line detail."""

    name: str
    ok: bool
    detail: str = ""

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<22} {self.detail}".rstrip()


def all_passed(results: list[CheckResult]) -> bool:
    """Whether every check passed (and there were checks)."""
    return bool(results) and all(r.ok for r in results)


class CheckFailed(Exception):
    """A check's assertion did not hold; its message is the check's detail line."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@dataclass
class ConformanceLab:
    """Everything the checks build in: sources, guests, an sshd, a workspace per run."""

    workdir: Path
    executor: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: The guest's base system (:func:`fruix_core.testkit.guest.make_base_system`: a
    #: FreeBSD-shaped guest, no Python); ``None``: this machine's tools.
    base_system: Path | None = None
    server: Any = None
    sample_source: Path = Path()
    toy_source: Path = Path()
    sample_guest: Any = None
    toy_guest: Any = None
    runs: int = 0

    def start(self) -> ConformanceLab:
        from fruix_core.testkit.guest import make_guest_root
        from fruix_core.testkit.sshd import SshServer

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sample_source = copy_sample_source(self.workdir / "sample-src")
        self.toy_source = make_toy_source(self.workdir / "toy-src")
        self.sample_guest = make_guest_root(self.workdir / "sample-guest", self.sample_source)
        self.toy_guest = make_guest_root(self.workdir / "toy-guest", self.toy_source)
        self.server = SshServer(self.workdir / "sshd", base_system=self.base_system).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        make_tree_writable(self.workdir)

    # -- inputs --------------------------------------------------------------------------

    def mark(self, name: str, content: str = "") -> None:
        """A toy marker (``fail-<phase>``, ``sleep-<phase>``) in every toy source tree."""
        for tree in (self.toy_source, self.toy_guest.source_dir):
            (tree / name).write_text(content)

    def unmark(self, name: str) -> None:
        for tree in (self.toy_source, self.toy_guest.source_dir):
            (tree / name).unlink(missing_ok=True)

    def config(self, *, toy: bool, executor: str | None = None, **build: Any) -> Any:
        """A fresh workspace and its config for one run (sample or toy base)."""
        from fruix_core.config import load_config

        self.runs += 1
        ws = Workspace(self.workdir / f"run-{self.runs}")
        ws.root.mkdir()
        s = self.server
        guest = self.toy_guest if toy else self.sample_guest
        name = executor or self.executor
        table = "\n".join(f"{k} = {toml_value(v)}" for k, v in
                          (self.settings.items() if name == self.executor else ()))
        text = (f"[guests.ssh]\nhost = {toml_value(s.host)}\nport = {s.port}\n"
                f"user = {toml_value(s.user)}\nidentity_file = {toml_value(str(s.client_key))}\n"
                f"known_hosts = {toml_value(str(s.known_hosts))}\n"
                f"system_root = {toml_value(str(guest.path))}\n\n"
                f"[executors.{toml_value(name)}]\n{table}\n")
        build.setdefault("promote", False)
        source = self.toy_source if toy else self.sample_source
        # The guests are shared by the lab's workspaces: a run id a guest already has is
        # taken for this workspace too (two runs started within one second would get
        # the same one, and a guest refuses a run id it has).
        for taken_in in (self.toy_guest.results_dir, self.sample_guest.results_dir):
            for entry in taken_in.iterdir() if taken_in.is_dir() else ():
                if entry.is_dir() and not entry.is_symlink():
                    (ws.results / entry.name).mkdir(parents=True, exist_ok=True)
        return load_config(ws.write_config(text, source=source, executor=name,
                                           guest="" if _builds_here(name) else "ssh",
                                           jobs=2, **build))

    # -- observations ----------------------------------------------------------------------

    def nothing_running(self) -> str | None:
        """What of a run is still running, or ``None``."""
        from fruix_core.testkit.sshd import _descendants

        trees = [self.toy_source, self.toy_guest.source_dir, self.sample_source,
                 self.sample_guest.source_dir]

        def idle() -> bool:
            busy = any(processes_in(t) for t in trees)
            sessions = _descendants(self.server.process.pid) if self.server.process else []
            return not busy and not sessions

        if wait_for(idle, 15):
            return None
        left = {str(t): processes_in(t) for t in trees if processes_in(t)}
        return f"still running: {left or 'an SSH session in the guest'}"

    def guest_status(self, run_id: str) -> str | None:
        """The toy guest's status for ``run_id``, ``None`` when the guest has no such root."""
        from fruix_core.resultroot import ResultRoot

        root = self.toy_guest.results_dir / run_id
        return str(ResultRoot(root).status()) if root.is_dir() else None


def _builds_here(executor: str) -> bool:
    """Whether the installed executor declares it builds on this machine (no guest)."""
    from fruix_core.plugins import load
    from fruix_core.preflight import runs_in_guest

    return runs_in_guest(load("executor", executor).plugin) is False


# -- the checks ----------------------------------------------------------------------------


@dataclass
class _State:
    lab: ConformanceLab
    loaded: Any = None
    outcome: Any = None
    recorder: TeardownRecorder | None = None
    reference: dict[str, str] | None = None


def _signatures(root: Path) -> dict[str, str]:
    from fruix_core.promotion.nar import tree_signature

    return {k: tree_signature(root / "artifacts" / k) for k in KINDS}


def _check_load(st: _State) -> str:
    from fruix_core.plugins import load

    st.loaded = load("executor", st.lab.executor)
    from fruix_core.hookspecs import PLUGIN_API_VERSION

    return (f"{st.loaded.distribution} {st.loaded.version}, plugin API "
            f"{PLUGIN_API_VERSION}")


def _check_settings(st: _State) -> str:
    from fruix_core.plugins import check_settings

    schema = getattr(st.loaded.plugin, "fruix_settings", None)
    _require(schema is not None, "the plugin declares no settings (fruix_settings)")
    check_settings(st.lab.config(toy=True))
    return f"{len(schema or ())} key(s) declared"


def _check_build(st: _State) -> str:
    from fruix_core.runner import run_build

    st.recorder = TeardownRecorder()
    st.outcome = run_build(st.lab.config(toy=False), extra_plugins=(st.recorder,))
    return f"run {st.outcome.run_id}"


def _needs_build(st: _State) -> Any:
    _require(st.outcome is not None, "no successful build to inspect")
    return st.outcome


def _check_signatures(st: _State) -> str:
    from fruix_core.runner import run_build

    outcome = _needs_build(st)
    reference = run_build(st.lab.config(toy=False, executor="local"))
    expected, got = _signatures(reference.result_root), _signatures(outcome.result_root)
    differ = [k for k in KINDS if expected[k] != got[k]]
    _require(not differ, f"tree signatures differ from local's for {', '.join(differ)}")
    return "world kernel headers bootloader equal local's"


def _check_logs(st: _State) -> str:
    outcome = _needs_build(st)
    logs = outcome.result_root / "logs"
    names = sorted(p.name for p in logs.iterdir()) if logs.is_dir() else []
    _require(names == sorted(f"{p}.log" for p in PHASES), f"logs/ holds {names}")
    empty = [n for n in names if (logs / n).stat().st_size == 0]
    _require(not empty, f"empty logs: {', '.join(empty)}")
    return "one per phase"


def _check_status(st: _State) -> str:
    from fruix_core.resultroot import ResultRoot

    outcome = _needs_build(st)
    root = ResultRoot(outcome.result_root)
    _require(str(root.status()) == "ok", f"status is {root.status()}")
    meta = root.read_metadata()
    missing = [p for p in PHASES if f"phase_{p}_started" not in meta
               or f"phase_{p}_seconds" not in meta]
    _require(not missing, f"no timings for {', '.join(missing)}")
    latest = outcome.result_root.parent / "latest"
    _require(latest.is_symlink() and latest.resolve() == outcome.result_root.resolve(),
             "latest does not point at the run")
    return "ok, phase timings, latest"


def _check_provenance(st: _State) -> str:
    from fruix_core.promotion.schema import read_promotion
    from fruix_core.resultroot import ResultRoot

    outcome = _needs_build(st)
    meta = ResultRoot(outcome.result_root).read_metadata()
    want = (st.loaded.name, st.loaded.version, st.loaded.distribution)
    got = (meta.get("executor"), meta.get("executor_version"), meta.get("executor_distribution"))
    _require(got == want, f"metadata names {got}, expected {want}")
    promotion = read_promotion(outcome.result_root / "promotion.scm")
    got_p = (promotion.executor, promotion.executor_version, promotion.run_id)
    _require(got_p == (want[0], want[1], outcome.run_id),
             f"promotion.scm names {got_p}, expected {(want[0], want[1], outcome.run_id)}")
    return f"{want[0]} {want[1]} ({want[2]})"


def _check_teardown(st: _State) -> str:
    _needs_build(st)
    assert st.recorder is not None
    states = [c[1] for c in st.recorder.calls]
    _require(states == ["ok"], f"teardown calls: {states}")
    return "once, after success"


def _stopped_run(st: _State, *, expect: type[BaseException], phase: str, **kw: Any) -> str:
    """Run the toy base expecting ``expect`` at ``phase``; check statuses and leftovers."""
    from fruix_core.errors import FruixError
    from fruix_core.resultroot import ResultRoot
    from fruix_core.runner import run_build

    recorder = kw.pop("recorder", None) or TeardownRecorder()
    config = st.lab.config(toy=True, **kw.pop("build", {}))
    try:
        run_build(config, extra_plugins=(recorder,), **kw)
    except expect as exc:
        error: Any = exc
    except FruixError as exc:
        raise CheckFailed(f"expected {expect.__name__}, got {type(exc).__name__}: {exc}"
                          ) from None
    else:
        raise CheckFailed(f"the run did not stop (expected {expect.__name__})")
    run_id = error.run_id
    host = str(ResultRoot(config.results / run_id).status())
    _require(host == f"failed ({phase})", f"host status is {host}, expected failed ({phase})")
    states = [c[1:] for c in recorder.calls]
    _require(len(states) == 1 and states[0][1] == phase,
             f"teardown calls: {states}, expected one for stage {phase}")
    left = st.lab.nothing_running()
    _require(left is None, left or "")
    guest = st.lab.guest_status(run_id)
    _require(guest in (None, host), f"the guest says {guest}, the host {host}")
    return f"failed ({phase}) on host{' and guest' if guest else ''}, nothing left running"


def _check_cancel_during(st: _State) -> str:
    from fruix_core.errors import Cancelled
    from fruix_core.model import CancelToken

    cancel = CancelToken()

    def on_output(phase: str, line: str) -> None:
        if "sleeping" in line:
            cancel.cancel("interrupted")

    st.lab.mark("sleep-buildkernel", "2771")
    try:
        return _stopped_run(st, expect=Cancelled, phase="buildkernel", cancel=cancel,
                            on_output=on_output)
    finally:
        st.lab.unmark("sleep-buildkernel")


def _check_cancel_between(st: _State) -> str:
    from fruix_core.errors import Cancelled
    from fruix_core.model import CancelToken

    cancel = CancelToken()
    st.lab.mark("sleep-buildkernel", "2772")  # if the run went on, it would be caught here
    try:
        return _stopped_run(st, expect=Cancelled, phase="buildkernel", cancel=cancel,
                            recorder=TeardownRecorder(cancel_after="buildworld", cancel=cancel))
    finally:
        st.lab.unmark("sleep-buildkernel")


def _check_timeout(st: _State) -> str:
    from fruix_core.errors import PhaseTimeout

    st.lab.mark("sleep-distribution", "2773")
    try:
        return _stopped_run(st, expect=PhaseTimeout, phase="distribution",
                            build={"phase_timeout": 2})
    finally:
        st.lab.unmark("sleep-distribution")


def _check_resume(st: _State) -> str:
    from fruix_core.errors import BuildFailed
    from fruix_core.resultroot import ResultRoot
    from fruix_core.runner import run_build

    st.lab.mark("fail-installworld")
    config = st.lab.config(toy=True)
    try:
        run_build(config)
    except BuildFailed as exc:
        run_id = exc.run_id
    else:
        raise CheckFailed("the run with a failing installworld did not fail")
    finally:
        st.lab.unmark("fail-installworld")
    assert run_id is not None
    outcome = run_build(config, resume=run_id)
    _require(outcome.run_id == run_id, f"resumed as {outcome.run_id}, not {run_id}")
    root = ResultRoot(outcome.result_root)
    _require(str(root.status()) == "ok", f"status is {root.status()}")
    logs = sorted(p.name for p in root.logs.iterdir())
    _require(logs == sorted(f"{p}.log" for p in PHASES), f"logs/ holds {logs}")
    _require((root.artifacts / "world/bin/sh").is_file(), "no world artifact after resume")
    return f"run {run_id} completed from installworld"


_CHECKS: dict[str, Callable[[_State], str]] = {
    "load": _check_load, "settings": _check_settings, "build": _check_build,
    "signatures": _check_signatures, "logs": _check_logs, "status": _check_status,
    "provenance": _check_provenance, "teardown": _check_teardown,
    "cancel-during-phase": _check_cancel_during, "cancel-between-phases": _check_cancel_between,
    "phase-timeout": _check_timeout, "resume": _check_resume,
}


def iter_checks(executor: str, workdir: Path, settings: Mapping[str, Any] | None = None,
                *, base_system: Path | None = None) -> Iterator[CheckResult]:
    """Run the suite for ``executor`` in ``workdir``, yielding each result as it is known.

    ``base_system`` is the test guest's base system (a FreeBSD-shaped one from
    :func:`fruix_core.testkit.guest.make_base_system`); by default the guest
    runs this machine's tools.

    A check that cannot start because an earlier one failed (nothing loaded,
    no build) fails too, saying why.
    """
    from fruix_core.errors import FruixError

    lab = ConformanceLab(workdir, executor, dict(settings or {}), base_system)
    st = _State(lab)
    try:
        try:
            lab.start()
        except Exception as exc:  # no sshd, no compiler: say so as one failed check
            yield CheckResult("lab", False, f"cannot set up the test guest: {exc}")
            return
        for name in CHECKS:
            if name != "load" and st.loaded is None:
                yield CheckResult(name, False, "skipped: the plugin did not load")
                continue
            try:
                detail = _CHECKS[name](st)
            except CheckFailed as exc:
                yield CheckResult(name, False, str(exc))
            except FruixError as exc:
                yield CheckResult(name, False, f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # the plugin under test is foreign code
                yield CheckResult(name, False, f"{type(exc).__name__}: {exc}")
            else:
                yield CheckResult(name, True, detail)
    finally:
        lab.stop()


def run_checks(executor: str, workdir: Path, settings: Mapping[str, Any] | None = None,
               *, base_system: Path | None = None) -> list[CheckResult]:
    """The whole suite's results for ``executor`` (see :func:`iter_checks`)."""
    return list(iter_checks(executor, workdir, settings, base_system=base_system))
