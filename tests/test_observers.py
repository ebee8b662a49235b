"""Observers: run and phase events, and the shipped ``command`` observer, installed."""

from __future__ import annotations

import json
import sys

import pytest

from fruix_core import hookimpl
from fruix_core.config import load_config
from fruix_core.errors import BuildFailed
from fruix_core.plugins import discover
from fruix_core.runner import run_build
from fruix_core.testkit import run_cli


class Recorder:
    """Keeps every event it hears."""

    def __init__(self):
        self.events = []

    @hookimpl
    def fruix_observe(self, event):
        self.events.append(event)


class Broken:
    """An observer that fails on every event; the run must not notice."""

    @hookimpl
    def fruix_observe(self, event):
        raise RuntimeError("observer down")


def test_events_of_a_run_in_order_with_durations(fruix_workspace, toy_source):
    recorder = Recorder()
    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    outcome = run_build(config, extra_plugins=(recorder, Broken()))
    kinds = [(e.kind, e.phase) for e in recorder.events]
    phases = ["buildworld", "buildkernel", "installworld", "distribution", "installkernel"]
    assert kinds == [("run-started", None)] + [
        (k, p) for p in phases for k in ("phase-started", "phase-finished")] + [
        ("run-finished", None)]
    assert all(e.run_id == outcome.run_id and e.executor == "local" for e in recorder.events)
    finished = [e for e in recorder.events if e.kind == "phase-finished"]
    assert all(e.seconds is not None and e.seconds >= 0 for e in finished)
    assert recorder.events[-1].status == "ok" and recorder.events[-1].seconds >= 0


def test_a_failed_run_is_reported(fruix_workspace, toy_source):
    (toy_source / "fail-buildkernel").touch()
    recorder = Recorder()
    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    with pytest.raises(BuildFailed):
        run_build(config, extra_plugins=(recorder,))
    failed, last = recorder.events[-2:]
    assert (failed.kind, failed.phase) == ("phase-failed", "buildkernel")
    assert failed.seconds >= 0 and "phase buildkernel failed" in failed.error
    assert (last.kind, last.phase, last.status) == ("run-failed", "buildkernel",
                                                    "failed (buildkernel)")
    assert "phase buildkernel failed" in last.error


def test_the_command_observer_is_installed():
    infos = {i.name: i for i in discover(["observer"])}
    assert infos["command"].error is None
    assert infos["command"].distribution == "fruix-core"


def test_the_command_observer_gets_the_final_event_on_stdin(fruix_workspace, toy_source,
                                                            tmp_path):
    sink = tmp_path / "events.jsonl"
    script = tmp_path / "notify.py"
    script.write_text(f"import sys\nopen({str(sink)!r}, 'a').write(sys.stdin.read() + '\\n')\n")
    conf = fruix_workspace.write_config(
        f'[observers.command]\ncommand = "{sys.executable} {script}"\n',
        source=toy_source, promote=False, observers=["command"])
    proc = run_cli("native-build", "run", "--config", str(conf), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    (line,) = sink.read_text().splitlines()
    event = json.loads(line)
    assert (event["kind"], event["run_id"], event["status"]) == ("run-finished", run_id, "ok")
    assert event["executor"] == "local" and event["seconds"] > 0
