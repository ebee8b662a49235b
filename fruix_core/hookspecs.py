"""Hook specifications of the ``fruix`` plugin project.

Two families of hooks exist:

* **executor hooks** run a native base build somewhere and describe its result
  root; exactly one executor plugin is registered for a run, so each
  answering hook is ``firstresult`` and its return value is the executor's
  answer. The core owns the run around them: the run id, the host result
  root, every status transition, the phase logs, the metadata, provenance,
  the import of an in-guest result root and the promotion. The core calls
  :func:`fruix_teardown_env` for every environment :func:`fruix_prepare_env`
  returned, whatever happened;
* **guest-provider hooks** give an in-guest executor a machine to build in and
  take it back afterwards. The core guarantees that
  :func:`fruix_release_guest` is called for every acquired guest, also on
  failure, Ctrl-C and SIGTERM.

Implement them with :data:`fruix_core.hookimpl`. Every answer is checked
against the type declared here; a wrong one ends the run naming the plugin,
its distribution and the hook (:class:`~fruix_core.errors.PluginContractError`).
"""

from __future__ import annotations

import pluggy

from fruix_core.model import (
    BuildRequest,
    EmittedResult,
    Guest,
    GuestRequest,
    Phase,
    PhaseResult,
    PreparedEnv,
    RunEnd,
    RunEvent,
    StagedArtifacts,
)

PROJECT_NAME = "fruix"

#: The major version of the plugin API this core offers. A plugin declares the
#: one it targets as the class attribute ``fruix_plugin_api``; another major
#: version is refused when the plugin is loaded.
PLUGIN_API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = [
    "PLUGIN_API_VERSION",
    "PROJECT_NAME",
    "ExecutorSpec",
    "GuestProviderSpec",
    "ObserverSpec",
    "hookimpl",
    "hookspec",
]


class ExecutorSpec:
    """Stages of a native base build, called in this order for every run."""

    # -- preparation -------------------------------------------------------------

    @hookspec(firstresult=True)
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        """Make the build machine ready and describe it.

        Runs once per run, before any phase, after the core created the host
        result root (``status`` = ``running``). Check that the tools and
        source tree are usable, create the build root (and, in a guest, the
        guest's result root), and compute the environment the phases run in
        from ``request.environment`` (already sanitised by the core; an
        executor may only add to it what the profile needs). Whatever this
        returns is handed to :func:`fruix_teardown_env` at the end.

        :param request: the run: id, phases, jobs, paths, settings, guest.
        :returns: the :class:`~fruix_core.model.PreparedEnv` of the build machine.
            ``firstresult``: the first non-``None`` answer is used.
        :raises fruix_core.errors.FruixError: when the machine is unfit; the run
            stops before any phase.
        """

    # -- building ----------------------------------------------------------------

    @hookspec(firstresult=True)
    def fruix_run_phase(
        self, request: BuildRequest, env: PreparedEnv, phase: Phase
    ) -> PhaseResult:
        """Run one phase (``buildworld``, ``buildkernel``, ``installworld``, ...).

        Called once per phase in profile order (from ``request.resume_from`` on
        a resumed run). Hand every output line to ``request.output(phase,
        line)``: the core writes ``logs/<phase>.log`` and the live view (an
        executor never opens the host log itself). Honour ``request.cancel``
        and ``request.phase_timeout`` by stopping the whole process group
        (raise :class:`~fruix_core.errors.Cancelled` or
        :class:`~fruix_core.errors.PhaseTimeout`). The core records
        ``failed <phase>`` and the phase's start and duration.

        :param request: the run.
        :param env: what :func:`fruix_prepare_env` returned.
        :param phase: the phase to run.
        :returns: a :class:`~fruix_core.model.PhaseResult`; a non-zero
            ``returncode`` stops the run with status ``failed <phase>``.
            ``firstresult``: the first non-``None`` answer is used.
        """

    @hookspec(firstresult=True)
    def fruix_attach_phase(
        self, request: BuildRequest, env: PreparedEnv, phase: Phase
    ) -> PhaseResult | None:
        """Follow a phase an earlier host process started in the guest, to its end.

        Optional. Called by ``fruix native-build attach`` instead of
        :func:`fruix_run_phase` for the one phase the run was in when its host
        process went away (``request.attaching`` is true and ``phase`` is
        ``request.resume_from``; :func:`fruix_prepare_env` ran first and must
        have left that phase alone). The phase may still be running or may
        have ended meanwhile: wait for its end, hand its whole output (from
        its first line) to ``request.output``, and honour ``request.cancel``
        and ``request.phase_timeout`` like :func:`fruix_run_phase`. The
        remaining phases are then run with :func:`fruix_run_phase`. An
        executor without this hook cannot be attached to; ``attach`` refuses
        and points at ``--resume``.

        :param request: the run (``attaching`` set).
        :param env: what :func:`fruix_prepare_env` returned.
        :param phase: the phase to follow.
        :returns: the phase's :class:`~fruix_core.model.PhaseResult`, or ``None``
            when the phase never started in the guest (the core then runs it
            with :func:`fruix_run_phase`). ``firstresult``: the first
            non-``None`` answer is used.
        """

    # -- result root ---------------------------------------------------------------

    @hookspec(firstresult=True)
    def fruix_stage_artifacts(
        self, request: BuildRequest, env: PreparedEnv
    ) -> StagedArtifacts:
        """Move the installed trees into ``<result root>/artifacts/<kind>``.

        Called once after every phase succeeded. The split into ``world``,
        ``kernel``, ``headers`` and ``bootloader`` follows
        :func:`fruix_core.profile.artifact_split`, so every executor stages the
        same trees; record the sha256 of each kind's key files.

        :param request: the run.
        :param env: the prepared build machine.
        :returns: :class:`~fruix_core.model.StagedArtifacts`.
            ``firstresult``: the first non-``None`` answer is used.
        """

    @hookspec(firstresult=True)
    def fruix_emit_promotion(
        self, request: BuildRequest, env: PreparedEnv, staged: StagedArtifacts
    ) -> EmittedResult:
        """Write ``promotion.scm`` in the build machine's result root and say where it is.

        Called once, after :func:`fruix_stage_artifacts`. The promotion names
        ``request.executor``, ``request.executor_version`` and
        ``request.run_id`` (:func:`fruix_core.resultroot.build_promotion` does
        it); the core checks them and refuses the result otherwise. The core
        writes the host's ``metadata`` and ``status``, and imports an in-guest
        result root itself. Executors never write to the store.

        :param request: the run.
        :param env: the prepared build machine.
        :param staged: what :func:`fruix_stage_artifacts` returned.
        :returns: :class:`~fruix_core.model.EmittedResult`: ``request.result_root``
            for a build on the host, or the guest path with ``in_guest=True``.
            ``firstresult``: the first non-``None`` answer is used.
        """

    # -- teardown ------------------------------------------------------------------

    @hookspec
    def fruix_teardown_env(self, request: BuildRequest, env: PreparedEnv, outcome: RunEnd) -> None:
        """Stop everything the run started and let go of the build machine.

        Called exactly once for every environment :func:`fruix_prepare_env`
        returned, whatever happened after it: success, a failed phase, a
        timeout, Ctrl-C or SIGTERM during a phase or between two phases, an
        error in any hook. When it returns, nothing of the run may still run:
        no local process, no SSH session, no remote process or helper in the
        guest. An in-guest executor also records ``outcome`` in the guest's
        result root (``failed <stage>``), so the guest and the host agree.
        The core imports an in-guest result root after this hook, over a
        connection of its own.

        :param request: the run.
        :param env: what :func:`fruix_prepare_env` returned.
        :param outcome: how the run ended (``state`` and the failed ``stage``).
        :returns: nothing. Errors raised here are logged; they fail a run that
            had succeeded, and never hide the error of one that had not.
        """


class GuestProviderSpec:
    """Lifecycle of the guest an in-guest executor builds in."""

    # -- guest lifecycle -----------------------------------------------------------

    @hookspec(firstresult=True)
    def fruix_acquire_guest(self, request: GuestRequest) -> Guest:
        """Make a guest available (boot it, find its address) and describe it.

        Called once, before the executor's :func:`fruix_prepare_env`, when the
        run names a guest provider.

        :param request: the provider's config section and the run id.
        :returns: a reachable :class:`~fruix_core.model.Guest`.
            ``firstresult``: the first non-``None`` answer is used.
        :raises fruix_core.errors.GuestError: when no guest can be had.
        """

    @hookspec
    def fruix_release_guest(self, guest: Guest, outcome: str) -> None:
        """Give the guest back (shut down, revert, or keep it as configured).

        The core calls it for every guest :func:`fruix_acquire_guest` returned,
        whatever happened: ``outcome`` is ``"ok"``, ``"failed"`` or
        ``"interrupted"``. Errors raised here are logged and do not hide the
        run's own error.

        :param guest: the guest to release.
        :param outcome: how the run ended.
        :returns: nothing.
        """

    # -- outside a run -------------------------------------------------------------

    @hookspec(firstresult=True)
    def fruix_release_configured_guest(self, request: GuestRequest) -> str:
        """Release the configured guest outside any run: a kept or stranded one.

        Called by ``fruix guests release``, with no run and no lease: the
        provider finds its guest from the settings alone and gives it back by
        the code path a run's :func:`fruix_release_guest` takes (for a VM:
        shut down, revert to the snapshot, log out). A setting that keeps
        guests after a run (``keep``) does not apply: an explicit release
        always releases. It runs in the CLI's main thread, under the same
        interrupt shield as a run's release.

        :param request: the provider's ``[guests.NAME]`` table and the config
            file; ``run_id`` is ``""`` and ``cancel`` is ``None``.
        :returns: one line saying what was done (``"VM 'b' (uuid): halted and
            reverted to clean"``, or that there was nothing to release).
            ``firstresult``: the first non-``None`` answer is used; answer
            ``None`` for another provider's name.
        :raises fruix_core.errors.ConfigError: the table is wrong (exit 2).
        :raises fruix_core.errors.GuestError: the guest could not be released
            (exit 3); say how to finish by hand.
        """


class ObserverSpec:
    """Run and phase events, for plugins that watch runs without building (``fruix.observers``)."""

    # -- observing -----------------------------------------------------------------

    @hookspec
    def fruix_observe(self, event: RunEvent) -> None:
        """Receive one event of a run: it started, a phase started or ended, it ended.

        Called by the core for every registered observer, in the order the
        events happen: ``run-started``; ``phase-started`` and then
        ``phase-finished`` or ``phase-failed`` for each phase;
        ``run-finished`` or ``run-failed`` last (after promotion). Durations
        are in ``event.seconds``. Observers must return quickly; they run in
        the build's own thread.

        :param event: what happened (:class:`~fruix_core.model.RunEvent`).
        :returns: nothing. An observer's error is logged and never changes
            the run's outcome.
        """
