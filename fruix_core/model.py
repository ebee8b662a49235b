"""Frozen data that crosses hook boundaries.

Executors receive a :class:`BuildRequest`, return a :class:`PreparedEnv`, one
:class:`PhaseResult` per phase, :class:`StagedArtifacts` and finally an
:class:`EmittedResult` carrying the :class:`Promotion` description. Guest
providers turn a :class:`GuestRequest` into a :class:`Guest`. None of these
objects touches the store; promotion is the core's job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ARTIFACT_KINDS",
    "OBSERVED_KINDS",
    "PROGRESS_KINDS",
    "ArtifactEntry",
    "BaseMetadata",
    "BuildPolicy",
    "BuildRequest",
    "CancelToken",
    "EmittedResult",
    "Guest",
    "GuestRequest",
    "Phase",
    "PhaseResult",
    "PreparedEnv",
    "Promotion",
    "RunEnd",
    "RunEvent",
    "SourceStore",
    "StagedArtifacts",
]

#: The artifact kinds every result root carries, in promotion order.
ARTIFACT_KINDS: tuple[str, ...] = ("world", "kernel", "headers", "bootloader")


class CancelToken:
    """A thread-safe flag set when the operator interrupts the run."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "interrupted") -> None:
        self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)


@dataclass(frozen=True, slots=True)
class BaseMetadata:
    """The declared FreeBSD base being built."""

    name: str = "freebsd"
    version: str = "15.0-STABLE"
    arch: str = "amd64"
    kernconf: str = "GENERIC"


@dataclass(frozen=True, slots=True)
class SourceStore:
    """Provenance of the source tree: where it is and what it is.

    ``signature`` identifies the content (``sha256:<hex>`` of the tree's NAR
    serialisation, or the hash part of a ``/frx/store`` path); only it enters
    artifact identity, never ``path``.
    """

    path: str
    signature: str
    name: str = "freebsd-source"


@dataclass(frozen=True, slots=True)
class BuildPolicy:
    """How the base was built; part of every artifact's identity."""

    phases: tuple[str, ...]
    jobs: int
    environment_policy: str
    make: str = "make"
    #: (variable, "/dev/null" or "sha256:<hex>") for SRCCONF, __MAKE_CONF, SRC_ENV_CONF.
    make_configuration: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Phase:
    """One step of the base build, as data.

    :ivar name: phase name, also the log file name (``logs/<name>.log``).
    :ivar target: the make target.
    :ivar variables: make variables, with ``{objdir}``, ``{stage_world}``,
        ``{stage_kernel}``, ``{kernconf}`` placeholders filled per build.
    :ivar environment: variables FreeBSD only accepts from the environment
        (``MAKEOBJDIRPREFIX``), same placeholders.
    :ivar parallel: whether ``-j JOBS`` is passed.
    :ivar flags: make options passed as they are (``-DNO_ROOT``).
    """

    name: str
    target: str
    variables: tuple[tuple[str, str], ...] = ()
    environment: tuple[tuple[str, str], ...] = ()
    parallel: bool = False
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Guest:
    """A machine an in-guest executor can reach over SSH.

    ``system_root`` is ``/`` in production; tests use a directory laid out like
    a Fruix guest. ``host_key`` pins the expected host key (``"ssh-ed25519 AAAA..."``);
    otherwise ``known_hosts`` is checked.
    """

    name: str
    provider: str
    host: str
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    known_hosts: str | None = None
    host_key: str | None = None
    trust_on_first_use: bool = False
    system_root: str = "/"
    connect_timeout: float = 15.0
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Set by the core before release; see :meth:`step`.
    on_step: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def step(self, text: str) -> None:
        """Tell the operator what releasing the guest is doing now (``"reverting…"``).

        Providers call it from :func:`~fruix_core.hookspecs.GuestProviderSpec.fruix_release_guest`
        (from any thread); it does nothing when nobody listens.
        """
        if self.on_step is not None:
            self.on_step(text)


@dataclass(frozen=True, slots=True)
class GuestRequest:
    """What a guest provider is asked for: its config section and the run.

    While acquiring, a provider reports each slow step through :meth:`step`
    (``"booting VM build…"``, ``"waiting for address…"``, ``"waiting for
    SSH…"``); the core shows them to the operator.
    """

    provider: str
    run_id: str
    settings: Mapping[str, Any]
    config_file: str | None = None
    cancel: CancelToken | None = None
    on_step: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    def step(self, text: str) -> None:
        """Tell the operator what acquiring the guest is doing now; a no-op when unheard."""
        if self.on_step is not None:
            self.on_step(text)


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """Everything an executor needs to know about one run.

    Paths are on the host. ``settings`` is the executor's own config section
    (``[executors.<name>]``), already checked against the plugin's schema.
    ``executor`` is the entry-point name and ``executor_version`` the version
    of its distribution: the provenance the core records, which every
    ``promotion.scm`` must repeat. Executors hand each output line of a phase
    to :meth:`output`; the core writes ``logs/<phase>.log`` and feeds the live
    view.
    """

    run_id: str
    executor: str
    base: BaseMetadata
    phases: tuple[Phase, ...]
    jobs: int
    make: str
    source_dir: Path
    results_dir: Path
    result_root: Path
    build_root: Path
    environment: Mapping[str, str]
    environment_policy: str
    phase_timeout: float | None = None
    guest: Guest | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    resume_from: str | None = None
    #: Declared make configuration files: (variable, content), e.g. ("SRCCONF", b"...").
    make_configuration: tuple[tuple[str, bytes], ...] = ()
    cancel: CancelToken = field(default_factory=CancelToken)
    on_output: Callable[[str, str], None] | None = None
    executor_version: str = ""
    executor_distribution: str = ""
    #: ``fruix native-build attach``: the run's ``resume_from`` phase may still be running
    #: in the guest, started by an earlier host process; preparing must leave it alone.
    attaching: bool = False

    def output(self, phase: str, line: str) -> None:
        """Hand one line of ``phase``'s output to the core (log file and live view)."""
        if self.on_output is not None:
            self.on_output(phase, line)


@dataclass(frozen=True, slots=True)
class PreparedEnv:
    """The build machine, ready: sanitised environment and paths there.

    ``result_root`` and ``build_root`` are paths *on the build machine* (the
    guest for in-guest executors). ``session`` holds an executor-private
    handle (an SSH connection, ...).
    """

    host_name: str
    environment: Mapping[str, str]
    source_dir: str
    source: SourceStore
    build_root: str
    result_root: str
    closure_path: str | None = None
    development_profile_path: str | None = None
    session: Any = None
    #: ``-j`` on the build machine: the request's, else the machine's CPU count
    #: (0: use ``BuildRequest.jobs``). Never part of artifact identity.
    jobs: int = 0


@dataclass(frozen=True, slots=True)
class PhaseResult:
    """Outcome of one phase."""

    phase: str
    returncode: int
    duration: float
    log_path: str = ""
    last_lines: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass(frozen=True, slots=True)
class StagedArtifacts:
    """Artifacts staged under ``<result_root>/artifacts/<kind>`` on the build machine.

    ``key_files`` maps kind → ((relative path, sha256 hex), ...).
    """

    result_root: str
    kinds: tuple[str, ...]
    key_files: Mapping[str, tuple[tuple[str, str], ...]]
    sizes: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ArtifactEntry:
    """One artifact in promotion.scm."""

    kind: str
    path: str
    files: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Promotion:
    """The promotion description (``promotion.scm``) of one result root."""

    executor: str
    executor_version: str
    run_id: str
    guest_host_name: str
    base: BaseMetadata
    source: SourceStore
    policy: BuildPolicy
    artifacts: tuple[ArtifactEntry, ...]
    closure_path: str | None = None
    development_profile_path: str | None = None
    format_version: int = 1

    def artifact(self, kind: str) -> ArtifactEntry:
        for entry in self.artifacts:
            if entry.kind == kind:
                return entry
        raise KeyError(kind)


@dataclass(frozen=True, slots=True)
class EmittedResult:
    """Where the executor left the finished result root.

    ``result_root`` is on the host (``in_guest`` false: it must be the
    ``request.result_root`` the core reserved) or, for an in-guest executor,
    the result root's path in the guest (``in_guest`` true), which the core
    imports to the host through one verified tar stream. ``promotion`` is
    what the executor wrote into ``promotion.scm``; the core reads the file
    itself and checks it against its own provenance.
    """

    result_root: Path | str
    promotion: Promotion | None = None
    in_guest: bool = False


@dataclass(frozen=True, slots=True)
class RunEnd:
    """How a run ended, as :func:`~fruix_core.hookspecs.ExecutorSpec.fruix_teardown_env` hears it.

    ``state`` is ``ok``, ``failed`` or ``interrupted``; ``stage`` names the
    stage that failed (a phase name, ``prepare``, ``stage``, ``emit``), or is
    ``None`` when the run succeeded.
    """

    state: str
    stage: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "ok"


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run, as observers and the run's progress display receive it.

    ``kind`` is ``run-started``, ``phase-started``, ``phase-finished``,
    ``phase-failed``, ``run-finished`` or ``run-failed`` (observers hear these,
    :data:`OBSERVED_KINDS`). The progress display of ``fruix native-build
    run`` hears the rest of the story too (:data:`PROGRESS_KINDS`):
    ``guest-acquiring``, ``guest-acquired``, ``guest-step``,
    ``staging-started``, ``staging-finished`` (the executor stages the
    artifacts and writes ``promotion.scm``), ``teardown-started``,
    ``teardown-finished``, ``import-started``, ``import-finished``,
    ``guest-releasing``, ``guest-released``, ``promotion-started`` and
    ``promotion-finished``.

    ``phase`` is set for phase events (and names the failed stage of
    ``run-failed``), with ``number`` and ``count`` its place among the
    phases (``2`` of ``5``); ``seconds`` is the phase's, the step's or the
    run's duration once it ended; ``status`` is the run's status line;
    ``error`` the one-line message of a failure; ``guest`` and ``host`` name
    the guest; ``message`` is a guest step's text; ``log`` a phase's log file
    (``logs_dir`` on ``run-started``).
    """

    kind: str
    run_id: str
    executor: str
    executor_version: str = ""
    phase: str | None = None
    seconds: float | None = None
    status: str = "running"
    error: str | None = None
    result_root: str = ""
    bundle: str | None = None
    number: int | None = None
    count: int | None = None
    guest: str | None = None
    host: str | None = None
    message: str | None = None
    log: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data; the fields added after the first six kinds only
        when they are set, so an observer's document keeps its keys."""
        data: dict[str, Any] = {
            "kind": self.kind, "run_id": self.run_id, "executor": self.executor,
            "executor_version": self.executor_version, "phase": self.phase,
            "seconds": self.seconds, "status": self.status, "error": self.error,
            "result_root": self.result_root, "bundle": self.bundle}
        for key in ("number", "count", "guest", "host", "message", "log"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data


#: The event kinds observers (``fruix.observers``) hear.
OBSERVED_KINDS: tuple[str, ...] = ("run-started", "phase-started", "phase-finished",
                                   "phase-failed", "run-finished", "run-failed")

#: Every event kind, in the order a successful in-guest run sends them.
PROGRESS_KINDS: tuple[str, ...] = (
    "run-started", "guest-acquiring", "guest-step", "guest-acquired", "phase-started",
    "phase-finished", "phase-failed", "staging-started", "staging-finished",
    "teardown-started", "teardown-finished",
    "import-started", "import-finished", "guest-releasing", "guest-released",
    "promotion-started", "promotion-finished", "run-finished", "run-failed")
