"""fruix_teardown_env: called exactly once for every prepared environment, whatever happens."""

from __future__ import annotations

import pytest

from fruix_core import hookimpl
from fruix_core.config import load_config
from fruix_core.errors import BuildFailed, Cancelled, PhaseTimeout, SourceTreeError
from fruix_core.model import CancelToken
from fruix_core.resultroot import list_runs
from fruix_core.runner import run_build
from fruix_core.testkit import TeardownRecorder, processes_in


def _run(ws, source, recorder, **kw):
    config = load_config(ws.write_config(source=source, promote=False, **kw.pop("build", {})))
    return run_build(config, extra_plugins=(recorder, *kw.pop("extra", ())), **kw)


def _status(ws) -> str:
    (root,) = list_runs(ws.results)
    return str(root.status())


def test_after_success(fruix_workspace, toy_source):
    recorder = TeardownRecorder()
    outcome = _run(fruix_workspace, toy_source, recorder)
    assert recorder.calls == [(outcome.run_id, "ok", None)]


def test_after_a_failed_phase(fruix_workspace, toy_source):
    (toy_source / "fail-installworld").touch()
    recorder = TeardownRecorder()
    with pytest.raises(BuildFailed):
        _run(fruix_workspace, toy_source, recorder)
    assert [c[1:] for c in recorder.calls] == [("failed", "installworld")]
    assert _status(fruix_workspace) == "failed (installworld)"


def test_after_cancel_during_a_phase(fruix_workspace, toy_source):
    (toy_source / "sleep-buildkernel").touch()
    cancel = CancelToken()
    recorder = TeardownRecorder()

    def on_output(phase, line):
        if "sleeping" in line:
            cancel.cancel("interrupted")

    with pytest.raises(Cancelled):
        _run(fruix_workspace, toy_source, recorder, cancel=cancel, on_output=on_output)
    assert [c[1:] for c in recorder.calls] == [("interrupted", "buildkernel")]
    assert _status(fruix_workspace) == "failed (buildkernel)"
    assert processes_in(toy_source) == []


def test_after_cancel_between_two_phases(fruix_workspace, toy_source):
    cancel = CancelToken()
    recorder = TeardownRecorder(cancel_after="buildworld", cancel=cancel)
    with pytest.raises(Cancelled) as info:
        _run(fruix_workspace, toy_source, recorder, cancel=cancel)
    assert info.value.run_id and info.value.stage == "buildkernel"
    assert [c[1:] for c in recorder.calls] == [("interrupted", "buildkernel")]
    assert _status(fruix_workspace) == "failed (buildkernel)"
    (root,) = list_runs(fruix_workspace.results)
    assert not root.log_path("buildkernel").exists()  # never started


def test_after_a_timeout(fruix_workspace, toy_source):
    (toy_source / "sleep-buildworld").write_text("30")
    recorder = TeardownRecorder()
    with pytest.raises(PhaseTimeout):
        _run(fruix_workspace, toy_source, recorder, build={"phase_timeout": 1})
    assert [c[1:] for c in recorder.calls] == [("failed", "buildworld")]
    assert processes_in(toy_source) == []


def test_not_called_when_prepare_never_returned(fruix_workspace, toy_source):
    (toy_source / "Makefile").unlink()
    recorder = TeardownRecorder()
    with pytest.raises(SourceTreeError):
        _run(fruix_workspace, toy_source, recorder)
    assert recorder.calls == []
    assert _status(fruix_workspace) == "failed (prepare)"


class FailingTeardown:
    """Its teardown fails; the executor's own teardown must still run."""

    @hookimpl
    def fruix_teardown_env(self, request, env, outcome):
        raise RuntimeError("cannot let go")


def test_a_failing_teardown_fails_a_good_run_but_never_hides_a_bad_one(fruix_workspace,
                                                                        toy_source):
    from fruix_core.errors import PluginContractError

    recorder = TeardownRecorder()
    with pytest.raises(PluginContractError,
                       match="'FailingTeardown' .*: fruix_teardown_env raised RuntimeError"):
        _run(fruix_workspace, toy_source, recorder, extra=(FailingTeardown(),))
    assert [c[1] for c in recorder.calls] == ["ok"]
    assert _status(fruix_workspace) == "failed (teardown)"
    (toy_source / "fail-buildworld").touch()
    with pytest.raises(BuildFailed):
        _run(fruix_workspace, toy_source, FailingTeardown())
