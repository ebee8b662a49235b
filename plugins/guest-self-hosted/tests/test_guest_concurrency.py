"""Concurrency and crashes inside the guest: parallel helpers, killed helpers, stale runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from fruix_core.errors import ExitCode
from fruix_core.resultroot import ResultRoot, list_runs
from fruix_core.testkit import run_cli


def _start(kit, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*kit.helper_command(), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)


def _wait_for_line(proc: subprocess.Popen[str], fragment: str, timeout: float = 30) -> None:
    """Read the helper's output until ``fragment`` shows up (the phase is under way)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if fragment in line:
            return
    raise AssertionError(f"{fragment!r} never appeared:\n{''.join(seen)}")


def test_two_helpers_at_once(kit, tmp_path):
    guest = kit.make_toy_guest(tmp_path, sleep_buildworld="1")
    latest = guest.results_dir / "latest"
    seen_targets: set[str] = set()
    problems: list[str] = []
    stop = threading.Event()

    def watch_latest() -> None:
        # Whenever `latest` exists, it names a complete result root.
        while not stop.is_set():
            try:
                target = os.readlink(latest)
            except FileNotFoundError:
                time.sleep(0.005)
                continue
            seen_targets.add(target)
            state = ResultRoot(guest.results_dir / target).status().state
            if state != "ok":
                problems.append(f"latest -> {target} while its status is {state}")
            time.sleep(0.005)

    watcher = threading.Thread(target=watch_latest, daemon=True)
    watcher.start()
    procs = [_start(kit, "--system-root", str(guest.path), "--json", "--jobs", "1")
             for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    finally:
        stop.set()
        watcher.join()
    assert [p.returncode for p in procs] == [0, 0], outputs
    docs = [json.loads(out[out.index("{\n"):]) for out in outputs]
    run_ids = {d["run_id"] for d in docs}
    build_roots = {d["build_root"] for d in docs}
    assert len(run_ids) == 2 and len(build_roots) == 2
    for doc in docs:
        assert ResultRoot(doc["result_root"]).status().state == "ok"
        assert Path(doc["result_root"], "artifacts/world/bin/sh").is_file()
    assert os.readlink(latest) in run_ids
    assert seen_targets <= run_ids and not problems


def test_killed_helper_leaves_a_stale_running_status(kit, tmp_path, fruix_workspace):
    guest = kit.make_toy_guest(tmp_path, sleep_buildworld="30")
    proc = _start(kit, "--system-root", str(guest.path), "--run-id", "doomed")
    try:
        _wait_for_line(proc, "toy: buildworld sleeping")
        root = ResultRoot(guest.results_dir / "doomed")
        assert root.status().state == "running" and not root.status().stale
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        status = root.status()
        assert status.state == "running" and status.stale and status.pid == proc.pid
        assert "stale" in str(status)
        assert not (guest.results_dir / "latest").exists()
        assert not (root.path / "promotion.scm").exists()
        # The operator's view of the guest's results says so too.
        conf = fruix_workspace.write_config(promote=False)
        conf.write_text(conf.read_text().replace(
            f'results = "{fruix_workspace.results}"', f'results = "{guest.results_dir}"'))
        listing = run_cli("native-build", "list", "--json", "--config", str(conf),
                          cwd=fruix_workspace.root)
        assert listing.returncode == 0, listing.stderr
        runs = json.loads(listing.stdout)["runs"]
        assert [(r["run_id"], r["status"]) for r in runs] == [("doomed", "stale")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kit.kill_processes_in(guest.source_dir)


def test_terminated_helper_records_failure_and_stops_make(kit, tmp_path):
    guest = kit.make_toy_guest(tmp_path, sleep_buildworld="30")
    proc = _start(kit, "--system-root", str(guest.path), "--run-id", "stopped", "--json")
    try:
        _wait_for_line(proc, "toy: buildworld sleeping")
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0]
        assert time.monotonic() - started < 10
        assert proc.returncode == ExitCode.INTERRUPTED, output
        doc = json.loads(output[output.index("{\n"):])
        assert doc["status"] == "interrupted" and doc["failed_phase"] == "buildworld"
        root = ResultRoot(guest.results_dir / "stopped")
        assert root.status().state == "failed" and root.status().phase == "buildworld"
        assert [r.run_id for r in list_runs(guest.results_dir)] == ["stopped"]
        assert not (guest.results_dir / "latest").exists()
        deadline = time.monotonic() + 5
        while kit.processes_in(guest.source_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kit.processes_in(guest.source_dir) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kit.kill_processes_in(guest.source_dir)
