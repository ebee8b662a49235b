"""What ``fruix native-build run`` says on stderr: off a terminal, on one, and as JSON."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from fruix_core.cli.progress import LINE_PREFIX, describe, duration
from fruix_core.config import load_config
from fruix_core.errors import BuildFailed, ExitCode
from fruix_core.model import OBSERVED_KINDS, RunEvent
from fruix_core.runner import run_build
from fruix_core.testkit import Workspace, copy_sample_source, run_cli, wait_for

PHASES = ["buildworld", "buildkernel", "installworld", "distribution", "installkernel"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fruix_core.cli.main", *args]


# -- the events a run sends --------------------------------------------------------------------


def test_every_step_of_a_run_reaches_the_listener(fruix_workspace: Workspace,
                                                   toy_source: Path) -> None:
    events: list[RunEvent] = []
    config = load_config(fruix_workspace.write_config(source=toy_source))
    outcome = run_build(config, on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds == (["run-started"] + ["phase-started", "phase-finished"] * 5
                     + ["staging-started", "staging-finished",
                        "teardown-started", "teardown-finished", "promotion-started",
                        "promotion-finished", "run-finished"])
    started = [e for e in events if e.kind == "phase-started"]
    assert [(e.phase, e.number, e.count) for e in started] == [
        (p, n, 5) for n, p in enumerate(PHASES, 1)]
    assert started[1].log == str(outcome.result_root / "logs" / "buildkernel.log")
    assert events[0].log == str(outcome.result_root / "logs")
    promoted = events[-2]
    assert promoted.bundle == str(outcome.bundle) and promoted.seconds is not None
    staged = next(e for e in events if e.kind == "staging-finished")
    assert staged.seconds is not None and describe(staged).startswith("artifacts staged in ")


def test_a_failure_is_the_last_event(fruix_workspace: Workspace, toy_source: Path) -> None:
    (toy_source / "fail-buildkernel").touch()
    events: list[RunEvent] = []
    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    with pytest.raises(BuildFailed):
        run_build(config, on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds[-4:] == ["phase-failed", "teardown-started", "teardown-finished", "run-failed"]
    assert (events[-1].phase, events[-1].status) == ("buildkernel", "failed (buildkernel)")


def test_a_broken_display_does_not_change_the_run(fruix_workspace: Workspace,
                                                  toy_source: Path) -> None:
    heard: list[str] = []

    def broken(event: RunEvent) -> None:
        heard.append(event.kind)
        raise OSError("stderr went away")

    config = load_config(fruix_workspace.write_config(source=toy_source, promote=False))
    assert run_build(config, on_event=broken).status == "ok"
    assert heard == ["run-started"]  # dropped after its first error


def test_observers_hear_only_run_and_phase_events() -> None:
    assert set(OBSERVED_KINDS) == {"run-started", "phase-started", "phase-finished",
                                   "phase-failed", "run-finished", "run-failed"}


@pytest.mark.parametrize(("seconds", "shown"), [(0.42, "0.4s"), (42, "42s"), (62, "1m02s"),
                                                (3725, "1h02m"), (None, "?")])
def test_durations(seconds: float | None, shown: str) -> None:
    assert duration(seconds) == shown


def test_lines_name_the_phase_and_its_place() -> None:
    event = RunEvent("phase-finished", "R", "local", phase="buildkernel", number=2, count=5,
                     seconds=62)
    assert describe(event) == "phase 2/5 buildkernel finished in 1m02s"
    failed = RunEvent("run-failed", "R", "local", phase="buildkernel", seconds=3,
                      status="failed (buildkernel)", error="phase buildkernel failed\nmore")
    assert describe(failed) == "run R failed (buildkernel) at buildkernel after 3.0s: " \
                               "phase buildkernel failed"


# -- off a terminal: one timestamped line per event, while the build goes on -------------------


def _held_source(tmp_path: Path, barrier: Path) -> Path:
    """A copy of the sample base whose installworld waits until ``barrier`` exists."""
    src = copy_sample_source(tmp_path / "src", read_only=False)
    makefile = src / "Makefile"
    text = makefile.read_text()
    hold = (f"\t@n=0; while [ ! -e '{barrier}' ] && [ $$n -lt 1200 ]; do sleep 0.1; "
            "n=$$((n+1)); done\n")
    makefile.write_text(text.replace("installworld: .PHONY\n", "installworld: .PHONY\n" + hold,
                                     1))
    return src


def test_lines_are_in_the_file_while_the_build_goes_on(fruix_workspace: Workspace,
                                                       tmp_path: Path) -> None:
    barrier = tmp_path / "go-on"
    config = fruix_workspace.write_config(source=_held_source(tmp_path, barrier))
    err_file, out_file = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    with open(err_file, "w") as err, open(out_file, "w") as out:
        proc = subprocess.Popen(_cli("native-build", "run", "--config", str(config)),
                                stdout=out, stderr=err, cwd=fruix_workspace.root)
    try:
        held = "phase 3/5 installworld started"
        assert wait_for(lambda: held in err_file.read_text(), 120), err_file.read_text()
        assert proc.poll() is None  # the build is still going
        lines = err_file.read_text().splitlines()
        assert all(LINE_PREFIX.match(line) for line in lines), lines
        told = [LINE_PREFIX.sub("", line) for line in lines]
        assert told[0].startswith("run ") and "logs in " + str(fruix_workspace.results) in told[0]
        assert [t.split(" (log ")[0] for t in told[1:]] == [
            "phase 1/5 buildworld started", told[2], "phase 2/5 buildkernel started", told[4],
            held]
        assert re.fullmatch(r"phase 1/5 buildworld finished in \S+", told[2])
        assert re.fullmatch(r"phase 2/5 buildkernel finished in \S+", told[4])
        barrier.touch()
        assert proc.wait(timeout=120) == 0, err_file.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    told = [LINE_PREFIX.sub("", line) for line in err_file.read_text().splitlines()]
    finished = [t for t in told if " finished in " in t and t.startswith("phase ")]
    assert [t.split()[2] for t in finished] == PHASES
    assert any(t.startswith("promoted in ") and "bundle " + str(fruix_workspace.store) in t
               for t in told)
    assert re.fullmatch(r"run \S+ ok in \S+", told[-1])


# -- --log-format json: stderr is JSON lines only ------------------------------------------------


def _json_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines()]  # every line, or it fails


def test_json_log_format_success(fruix_workspace: Workspace, toy_source: Path) -> None:
    config = fruix_workspace.write_config(source=toy_source)
    proc = run_cli("--log-format", "json", "--log-level", "info", "native-build", "run",
                   "--config", str(config), cwd=fruix_workspace.root)
    assert proc.returncode == 0, proc.stderr
    records = _json_lines(proc.stderr)
    kinds = [r["kind"] for r in records if r.get("logger") == "fruix.progress"]
    assert kinds[0] == "run-started" and kinds[-1] == "run-finished"
    assert "promotion-finished" in kinds
    assert {r["event"] for r in records} >= {"run started", "phase finished"}  # structlog's
    assert all({"timestamp", "level", "event"} <= set(r) for r in records)


def test_json_log_format_failure(fruix_workspace: Workspace, toy_source: Path) -> None:
    (toy_source / "fail-buildkernel").touch()
    config = fruix_workspace.write_config(source=toy_source, promote=False)
    proc = run_cli("--log-format", "json", "native-build", "run", "--config", str(config),
                   cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.BUILD_FAILED, proc.stderr
    records = _json_lines(proc.stderr)
    final = records[-1]
    assert final["level"] == "error" and final["exit_code"] == ExitCode.BUILD_FAILED
    assert "phase buildkernel failed" in str(final["message"])
    assert final["run_id"] == records[0]["run_id"] and final["stage"] == "buildkernel"
    assert "failing on purpose" in str(final["log_tail"])
    # the console's "resume with:" line is a key of the error record here
    assert final["resume"] == (f"fruix native-build run --resume {final['run_id']} "
                               f"--config {config}")
    assert [r["kind"] for r in records[:-1]][-2:] == ["teardown-finished", "run-failed"]


def test_json_log_format_bad_input(fruix_workspace: Workspace, toy_source: Path) -> None:
    config = fruix_workspace.write_config(source=toy_source, executor="no-such")
    proc = run_cli("--log-format", "json", "native-build", "run", "--config", str(config),
                   cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.USAGE
    (record,) = _json_lines(proc.stderr)
    assert record["exit_code"] == ExitCode.USAGE and "run_id" not in record
    assert "unknown executor 'no-such'" in str(record["message"])


def test_json_log_format_interrupted(fruix_workspace: Workspace, toy_source: Path,
                                    tmp_path: Path) -> None:
    (toy_source / "sleep-buildworld").write_text("60")
    config = fruix_workspace.write_config(source=toy_source, promote=False)
    err_file = tmp_path / "stderr.txt"
    with open(err_file, "w") as err:
        proc = subprocess.Popen(_cli("--log-format", "json", "native-build", "run", "--config",
                                     str(config)), stdout=subprocess.DEVNULL, stderr=err,
                                cwd=fruix_workspace.root)
    try:
        assert wait_for(lambda: '"kind": "phase-started"' in err_file.read_text(), 60)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == ExitCode.INTERRUPTED
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = _json_lines(err_file.read_text())
    assert (records[-2]["kind"], records[-2]["phase"]) == ("run-failed", "buildworld")
    assert records[-1]["exit_code"] == ExitCode.INTERRUPTED
    assert str(records[-1]["message"]).startswith("interrupted")


def test_shield_warnings_are_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """A Ctrl-C during a teardown is told as a JSON log record, like every other line."""
    from fruix_core.logconfig import configure_logging
    from fruix_core.runner import _shielded

    configure_logging("json")
    try:
        with _shielded("tearing down the build environment"):
            signal.raise_signal(signal.SIGINT)  # handled before the next bytecode
    finally:
        structlog.reset_defaults()
    (record,) = _json_lines(capsys.readouterr().err)
    assert record["level"] == "warning"
    assert str(record["event"]).startswith("still tearing down the build environment")


@pytest.mark.parametrize("words", [("--log-format", "json"), ("--log-format=json",)])
def test_json_log_format_usage_error(tmp_path: Path, words: tuple[str, ...]) -> None:
    proc = run_cli(*words, "native-build", "run", "--no-such-option", cwd=tmp_path)
    assert proc.returncode == ExitCode.USAGE and proc.stdout == ""
    (record,) = _json_lines(proc.stderr)
    assert record["message"] == "unrecognized arguments: --no-such-option"
    assert record["exit_code"] == ExitCode.USAGE and "usage: fruix" in str(record["usage"])


# -- on a terminal -------------------------------------------------------------------------------


def _on_a_terminal(config: Path, cwd: Path) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; its exit status and what it drew."""
    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="120", LC_ALL="C.UTF-8")
    proc = subprocess.Popen(_cli("native-build", "run", "--config", str(config)), cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        code = proc.wait(timeout=120)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, seen.decode("utf-8", "replace")


def test_terminal_shows_finished_phases(fruix_workspace: Workspace, toy_source: Path) -> None:
    (toy_source / "sleep-buildworld").write_text("1")
    code, drawn = _on_a_terminal(fruix_workspace.write_config(source=toy_source),
                                 fruix_workspace.root)
    assert code == 0, drawn
    assert "Traceback" not in drawn
    for phase in PHASES:
        assert re.search(rf"✓ {phase} +\S+s", drawn), (phase, drawn)
    assert "phase 1/5 buildworld" in drawn and "buildworld.log" in drawn  # the live area
    assert "toy: buildworld sleeping" in drawn  # the last output line
    assert re.search(r"✓ artifacts staged in \S+s", drawn), drawn  # staging: its own step
    assert re.search(r"run \S+ ok in ", drawn)


def test_terminal_shows_the_failed_phase(fruix_workspace: Workspace, toy_source: Path) -> None:
    (toy_source / "fail-installworld").touch()
    code, drawn = _on_a_terminal(fruix_workspace.write_config(source=toy_source, promote=False),
                                 fruix_workspace.root)
    assert code == ExitCode.BUILD_FAILED
    assert "Traceback" not in drawn
    assert "✓ buildkernel" in drawn and re.search(r"✗ installworld +\S+s", drawn)
    assert "fruix: error: phase installworld failed" in drawn
