"""Hook specifications of the ``fruix`` plugin project.

Two families of hooks exist:

* **executor hooks** run a native base build somewhere and describe its result
  root; exactly one executor plugin is registered for a run, so each hook is
  ``firstresult`` and its return value is the executor's answer;
* **guest-provider hooks** give an in-guest executor a machine to build in and
  take it back afterwards. The core guarantees that
  :func:`fruix_release_guest` is called for every acquired guest, also on
  failure, Ctrl-C and SIGTERM.

Implement them with :data:`fruix_core.hookimpl`.
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
    StagedArtifacts,
)

PROJECT_NAME = "fruix"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "ExecutorSpec", "GuestProviderSpec", "hookimpl", "hookspec"]


class ExecutorSpec:
    """Stages of a native base build, called in this order for every run."""

    # -- preparation -------------------------------------------------------------

    @hookspec(firstresult=True)
    def fruix_prepare_env(self, request: BuildRequest) -> PreparedEnv:
        """Make the build machine ready and describe it.

        Runs once per run, before any phase. Check that the tools and source
        tree are usable, create the build root and the result root (``status``
        = ``running``), and compute the environment the phases run in from
        ``request.environment`` (already sanitised by the core; an executor
        may only add to it what the profile needs).

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
        a resumed run). Stream every output line to ``logs/<phase>.log`` in the
        result root and to ``request.on_output``; honour ``request.cancel`` and
        ``request.phase_timeout`` by stopping the whole process group.

        :param request: the run.
        :param env: what :func:`fruix_prepare_env` returned.
        :param phase: the phase to run.
        :returns: a :class:`~fruix_core.model.PhaseResult`; a non-zero
            ``returncode`` stops the run with status ``failed <phase>``.
            ``firstresult``: the first non-``None`` answer is used.
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
        """Write ``metadata``, ``promotion.scm`` and ``status`` = ``ok``, and hand the root over.

        Called once, last. In-guest executors write the result root in the
        guest and import it to ``request.result_root`` on the host before
        returning, so the core can promote it. Executors never write to the
        store.

        :param request: the run.
        :param env: the prepared build machine.
        :param staged: what :func:`fruix_stage_artifacts` returned.
        :returns: :class:`~fruix_core.model.EmittedResult` whose ``result_root``
            is on the host. ``firstresult``: the first non-``None`` answer is used.
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
