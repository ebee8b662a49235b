"""The runner's guarantees: hook order, guest always released, failures recorded."""

from __future__ import annotations

import threading

import pytest
from fruix_local import LocalExecutor

from fruix_core import hookimpl
from fruix_core.config import load_config
from fruix_core.errors import BuildFailed, Cancelled, GuestError
from fruix_core.model import Guest
from fruix_core.resultroot import ResultRoot, list_runs
from fruix_core.runner import run_build


class GuestBoundLocal(LocalExecutor):
    """The local build, declared as building in a guest so the runner hands it one."""

    fruix_runs_in_guest = True


#: run_build's arguments for a run in the recording provider's guest.
IN_GUEST = {"guest": "recording", "executor_plugin": GuestBoundLocal()}


class RecordingProvider:
    """A guest provider that records what the core asked of it."""

    def __init__(self, fail_acquire=False, fail_release=False):
        self.acquired: list[str] = []
        self.released: list[tuple[str, str]] = []
        self.fail_acquire = fail_acquire
        self.fail_release = fail_release

    @hookimpl
    def fruix_acquire_guest(self, request):
        if self.fail_acquire:
            raise GuestError("no guest today")
        self.acquired.append(request.run_id)
        return Guest(name="g1", provider=request.provider, host="127.0.0.1")

    @hookimpl
    def fruix_release_guest(self, guest, outcome):
        self.released.append((guest.name, outcome))
        if self.fail_release:
            raise GuestError("release went wrong")


def _config(ws, source):
    return load_config(ws.write_config(source=source, promote=False))


def test_guest_released_after_success(fruix_workspace, toy_source):
    provider = RecordingProvider()
    outcome = run_build(_config(fruix_workspace, toy_source), **IN_GUEST,
                        provider_plugin=provider)
    assert outcome.status == "ok" and outcome.guest == "recording"
    assert provider.acquired == [outcome.run_id]
    assert provider.released == [("g1", "ok")]


def test_guest_released_after_a_failed_phase(fruix_workspace, toy_source):
    (toy_source / "fail-installworld").touch()
    provider = RecordingProvider(fail_release=True)
    with pytest.raises(BuildFailed) as info:  # the release error does not hide it
        run_build(_config(fruix_workspace, toy_source), **IN_GUEST,
                  provider_plugin=provider)
    assert info.value.phase == "installworld"
    assert provider.released == [("g1", "failed")]
    (root,) = list_runs(fruix_workspace.results)
    assert root.status().state == "failed" and root.status().phase == "installworld"


def test_guest_released_when_cancelled(fruix_workspace, toy_source):
    from fruix_core.model import CancelToken

    (toy_source / "sleep-buildkernel").touch()
    cancel = CancelToken()
    provider = RecordingProvider()

    def cancel_when_sleeping(phase, line):
        if "sleeping" in line:
            threading.Timer(0.2, cancel.cancel).start()

    with pytest.raises(Cancelled):
        run_build(_config(fruix_workspace, toy_source), **IN_GUEST,
                  provider_plugin=provider, cancel=cancel, on_output=cancel_when_sleeping)
    assert provider.released == [("g1", "interrupted")]
    (root,) = list_runs(fruix_workspace.results)
    assert ResultRoot(root.path).status().phase == "buildkernel"


def test_failed_acquire_releases_nothing_and_records_it(fruix_workspace, toy_source):
    provider = RecordingProvider(fail_acquire=True)
    with pytest.raises(GuestError, match="no guest today"):
        run_build(_config(fruix_workspace, toy_source), **IN_GUEST,
                  provider_plugin=provider)
    assert provider.released == []
    (root,) = list_runs(fruix_workspace.results)
    assert root.status().state == "failed" and root.status().phase == "acquire-guest"


def test_release_failure_after_success_is_reported(fruix_workspace, toy_source):
    provider = RecordingProvider(fail_release=True)
    with pytest.raises(GuestError, match="release went wrong"):
        run_build(_config(fruix_workspace, toy_source), **IN_GUEST,
                  provider_plugin=provider)


class AbruptInterrupt:
    """A second Ctrl-C: KeyboardInterrupt raised in the middle of a phase."""

    @hookimpl(wrapper=True)
    def fruix_run_phase(self, request, env, phase):
        result = yield
        if phase.name == "buildkernel":
            raise KeyboardInterrupt
        return result


def test_an_abrupt_interrupt_keeps_the_run_id(fruix_workspace, toy_source):
    with pytest.raises(Cancelled) as info:
        run_build(_config(fruix_workspace, toy_source), extra_plugins=(AbruptInterrupt(),))
    (root,) = list_runs(fruix_workspace.results)
    assert info.value.run_id == root.run_id and info.value.result_root == str(root.path)
    assert info.value.stage == "buildkernel"
    assert str(root.status()) == "failed (buildkernel)"


def test_the_outcome_status_is_the_result_roots(fruix_workspace, toy_source):
    outcome = run_build(_config(fruix_workspace, toy_source))
    assert outcome.status == str(ResultRoot(outcome.result_root).status()) == "ok"


class InterruptedRelease(RecordingProvider):
    """A provider whose release is interrupted ``count`` times (deterministic: the
    signal is raised from inside the hook, where the core's shield is in force)."""

    def __init__(self, count: int):
        super().__init__()
        self.count = count
        self.finished = False

    @hookimpl
    def fruix_release_guest(self, guest, outcome):
        import os
        import signal

        self.released.append((guest.name, outcome))
        for _ in range(self.count):
            os.kill(os.getpid(), signal.SIGINT)  # handled before the next bytecode
        self.finished = True


def test_one_interrupt_during_release_is_answered_and_release_finishes(fruix_workspace,
                                                                      toy_source):
    from structlog.testing import capture_logs

    provider = InterruptedRelease(count=1)
    with capture_logs() as logs:
        outcome = run_build(_config(fruix_workspace, toy_source), **IN_GUEST,
                            provider_plugin=provider)
    assert outcome.status == "ok" and provider.finished
    assert any(e["event"].startswith("still releasing guest g1") for e in logs)


def test_two_quick_interrupts_abandon_the_release(fruix_workspace, toy_source):
    from structlog.testing import capture_logs

    provider = InterruptedRelease(count=2)
    with capture_logs() as logs, pytest.raises(Cancelled) as info:
        run_build(_config(fruix_workspace, toy_source), **IN_GUEST,
                  provider_plugin=provider)
    assert not provider.finished and info.value.stage == "release-guest"
    assert ResultRoot(fruix_workspace.results / info.value.run_id).status().state == "failed"
    assert any(e["event"].startswith(
        "interrupted twice within 3 s: asking to stop releasing guest g1") for e in logs)
