"""The host-initiated executor against a real sshd and a guest system root.

Most tests drive the real CLI (``fruix native-build run``) in a subprocess, as
an operator would; the cancel test uses the runner API to hold the token.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fruix_core.config import load_config
from fruix_core.errors import Cancelled, ExitCode
from fruix_core.model import CancelToken
from fruix_core.promotion import promote
from fruix_core.promotion.layout import MANIFEST_FILE
from fruix_core.promotion.nar import tree_signature
from fruix_core.resultroot import ResultRoot
from fruix_core.testkit import (
    TeardownRecorder,
    Workspace,
    cli_process,
    live_processes,
    make_tree_writable,
    run_cli,
    run_host_killed_in_phase,
    wait_for,
    wait_gone,
)
from fruix_core.testkit.guest import GuestRoot, make_base_system, make_guest_root
from fruix_core.testkit.sshd import SshServer

KINDS = ("world", "kernel", "headers", "bootloader")


@dataclass
class Lab:
    """A guest root, the sshd reaching it, and a workspace with a config for both."""

    server: SshServer
    root: GuestRoot
    ws: Workspace

    def config(self, guest_extra: str = "", executor_extra: str = "", **build) -> Path:
        s = self.server
        text = (f'[guests.ssh]\nhost = "{s.host}"\nport = {s.port}\nuser = "{s.user}"\n'
                f'identity_file = "{s.client_key}"\nknown_hosts = "{s.known_hosts}"\n'
                f'system_root = "{self.root.path}"\n{guest_extra}\n'
                f'[executors.host-initiated]\n{executor_extra}\n')
        build.setdefault("promote", False)
        build.setdefault("jobs", 2)
        return self.ws.write_config(text, executor="host-initiated", guest="ssh", **build)

    def run(self, *extra: str, config: Path | None = None, **build) -> subprocess.CompletedProcess:
        conf = config or self.config(**build)
        return run_cli("native-build", "run", "--config", str(conf), "--json", *extra,
                       cwd=self.ws.root, timeout=300)

    def guest_run_root(self, run_id: str) -> Path:
        return self.root.results_dir / run_id

    def only_run_id(self) -> str:
        runs = [p.name for p in self.ws.results.iterdir() if not p.name.startswith(".")
                and p.name != "latest"]
        assert len(runs) == 1, runs
        return runs[0]


def _lab(tmp_path: Path, workspace: Workspace, source: Path, *, base: Path | None = None,
         **kw) -> Lab:
    # The guest is FreeBSD-shaped: dash as sh, bsdtar, bmake, a tcsh login shell, no Python.
    root = make_guest_root(tmp_path / "guest", source, **kw)
    server = SshServer(tmp_path / "sshd", system_root=root.path,
                       base_system=base or make_base_system(tmp_path / "base"))
    server.start()
    return Lab(server=server, root=root, ws=workspace)


@pytest.fixture
def toy_lab(tmp_path, fruix_workspace, fruix_toy_source, fruix_base_system):
    lab = _lab(tmp_path, fruix_workspace, fruix_toy_source, base=fruix_base_system)
    yield lab
    lab.server.stop()






def _store_is_empty(ws: Workspace) -> bool:
    return not ws.store.exists() or not [p for p in ws.store.iterdir()
                                         if not p.name.startswith(".")]


# -- the full chain ----------------------------------------------------------------------------


def _local_result_root(tmp_path: Path, source: Path) -> Path:
    """The result root of a ``local`` build of ``source``: the reference artifacts."""
    local_ws = Workspace(tmp_path / "local")
    local_ws.root.mkdir()
    conf = local_ws.write_config(source=source, promote=False, jobs=2)
    local = run_cli("native-build", "run", "--config", str(conf), "--json", cwd=local_ws.root)
    assert local.returncode == 0, local.stderr
    return Path(json.loads(local.stdout)["result_root"])


def _assert_same_trees(result_root: Path, local_root: Path) -> None:
    for kind in KINDS:
        assert tree_signature(result_root / "artifacts" / kind) == \
            tree_signature(local_root / "artifacts" / kind), kind


def test_full_chain_matches_the_local_executor(tmp_path, fruix_workspace, fruix_sample_source):
    lab = _lab(tmp_path, fruix_workspace, fruix_sample_source)
    try:
        proc = lab.run(promote=True)
    finally:
        lab.server.stop()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["executor"] == "host-initiated" and doc["status"] == "ok"
    assert sorted(doc["artifacts"]) == sorted(KINDS)
    for path in [doc["bundle"], *doc["artifacts"].values()]:
        assert Path(path).parent == fruix_workspace.store and Path(path).is_dir()
    host_root = Path(doc["result_root"])
    assert (host_root / "status").read_text() == "ok\n"
    guest_root = lab.guest_run_root(doc["run_id"])
    assert (guest_root / "status").read_text() == "ok\n"
    assert (lab.root.results_dir / "latest").resolve() == guest_root.resolve()
    assert not (lab.root.path / "var/tmp/fruix-native-builds" / doc["run_id"]).exists()
    assert (host_root / "promotion.scm").read_bytes() == \
        (guest_root / "promotion.scm").read_bytes()
    # The core keeps the guest's metadata and adds its own stamps (provenance, timings).
    metadata = ResultRoot(host_root).read_metadata()
    guest_metadata = ResultRoot(guest_root).read_metadata()
    assert {k: metadata[k] for k in guest_metadata if k != "finished"} == \
        {k: v for k, v in guest_metadata.items() if k != "finished"}
    assert metadata["executor_distribution"] == "fruix-executor-host-initiated"
    # The run records the guest it used and what its promotion published (show reads them).
    assert metadata["guest"] == "ssh" and metadata["bundle"] == doc["bundle"]
    assert {k: metadata[f"artifact_{k}"] for k in KINDS} == doc["artifacts"]
    assert metadata["source_store"] == lab.root.source_store
    assert metadata["source_signature"] == "sha256:" + tree_signature(fruix_sample_source)
    assert sorted(p.name for p in (host_root / "logs").iterdir()) == sorted(
        f"{p}.log" for p in ("buildworld", "buildkernel", "installworld", "distribution",
                             "installkernel"))

    local_root = _local_result_root(tmp_path, fruix_sample_source)
    _assert_same_trees(host_root, local_root)
    local_meta = ResultRoot(local_root).read_metadata()
    for key, value in local_meta.items():
        if key.startswith(("sha256_", "size_")):
            assert metadata[key] == value, key
    # Installed unprivileged in the guest too: the same METALOGs, so the same manifests
    # (owners, groups, set-user-ID modes and file flags included).
    for stage in ("world", "kernel"):
        assert (host_root / "metalog" / f"{stage}.METALOG").read_bytes() == \
            (local_root / "metalog" / f"{stage}.METALOG").read_bytes(), stage
    local_objects = promote(local_root, tmp_path / "local-store").artifacts
    for kind in KINDS:
        assert (Path(doc["artifacts"][kind]) / MANIFEST_FILE).read_bytes() == \
            (local_objects[kind] / MANIFEST_FILE).read_bytes(), kind
    world_manifest = (Path(doc["artifacts"]["world"]) / MANIFEST_FILE).read_text()
    assert re.search(r"^\./usr/bin/passwd type=file uname=root gname=wheel mode=4555 .*"
                     r" flags=schg$", world_manifest, re.MULTILINE)


# -- bad input and faults ------------------------------------------------------------------------


def test_failing_phase_is_a_build_failure(toy_lab: Lab) -> None:
    (toy_lab.root.source_dir / "fail-buildkernel").write_text("")
    proc = toy_lab.run(promote=True)
    assert proc.returncode == ExitCode.BUILD_FAILED, proc.stderr
    assert "buildkernel" in proc.stderr and "Traceback" not in proc.stderr
    run_id = toy_lab.only_run_id()
    host = ResultRoot(toy_lab.ws.results / run_id)
    assert host.status().state == "failed" and host.status().phase == "buildkernel"
    assert "failing on purpose" in host.log_path("buildkernel").read_text()
    guest = toy_lab.guest_run_root(run_id)
    assert (guest / "status").read_text() == "failed buildkernel\n"
    assert "failing on purpose" in (guest / "logs/buildkernel.log").read_text()
    assert _store_is_empty(toy_lab.ws)


def test_missing_overlay_is_refused(tmp_path, fruix_workspace, fruix_toy_source) -> None:
    lab = _lab(tmp_path, fruix_workspace, fruix_toy_source, with_overlay=False)
    try:
        proc = lab.run()
    finally:
        lab.server.stop()
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "development overlay" in proc.stderr and "/usr/include" in proc.stderr
    assert "Traceback" not in proc.stderr
    run_id = lab.only_run_id()
    assert ResultRoot(fruix_workspace.results / run_id).status().state == "failed"


def test_missing_store_layout(toy_lab: Lab) -> None:
    toy_lab.root.layout_file.unlink()
    proc = toy_lab.run()
    assert proc.returncode == ExitCode.USAGE
    assert "store-layout.scm" in proc.stderr and "missing" in proc.stderr


def test_malformed_store_layout(toy_lab: Lab) -> None:
    toy_lab.root.layout_file.write_text('(fruix-store-layout (version 1) #.(evil))')
    proc = toy_lab.run()
    assert proc.returncode == ExitCode.USAGE
    assert "store-layout.scm" in proc.stderr and "not accepted" in proc.stderr


def test_source_store_without_makefile(toy_lab: Lab) -> None:
    (toy_lab.root.source_dir / "Makefile").unlink()
    proc = toy_lab.run()
    assert proc.returncode == ExitCode.USAGE and "Makefile" in proc.stderr


def test_unknown_host_key(toy_lab: Lab) -> None:
    toy_lab.server.known_hosts.write_text("")
    proc = toy_lab.run()
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "host key" in proc.stderr and "unknown" in proc.stderr


def test_changed_host_key(toy_lab: Lab, tmp_path: Path) -> None:
    other = SshServer(tmp_path / "impostor")
    other._write_files()
    conf = toy_lab.config(guest_extra="")
    text = conf.read_text().replace(f'known_hosts = "{toy_lab.server.known_hosts}"',
                                    f'host_key = "{other.host_key_line}"')
    conf.write_text(text)
    proc = toy_lab.run(config=conf)
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "does not match" in proc.stderr


def test_wrong_user_key(toy_lab: Lab, tmp_path: Path) -> None:
    stranger = tmp_path / "id_stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)],
                   check=True)
    conf = toy_lab.config()
    conf.write_text(conf.read_text().replace(str(toy_lab.server.client_key), str(stranger)))
    proc = toy_lab.run(config=conf)
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "authentication refused" in proc.stderr


def test_unreachable_guest(toy_lab: Lab) -> None:
    conf = toy_lab.config(guest_extra="connect_timeout = 2")
    toy_lab.server.stop()
    proc = toy_lab.run(config=conf)
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "unreachable" in proc.stderr and "Traceback" not in proc.stderr


def test_executor_needs_a_guest(toy_lab: Lab) -> None:
    conf = toy_lab.config()
    proc = run_cli("native-build", "run", "--config", str(conf), "--guest", "",
                   cwd=toy_lab.ws.root)
    assert proc.returncode == ExitCode.USAGE and "guest" in proc.stderr


def test_bad_executor_setting_names_the_key(toy_lab: Lab) -> None:
    proc = toy_lab.run(config=toy_lab.config(executor_extra='work_dir = "relative"'))
    assert proc.returncode == ExitCode.USAGE
    assert "executors.host-initiated.work_dir" in proc.stderr


def test_sshd_killed_mid_attached_phase(toy_lab: Lab) -> None:
    # detach = false: the phase runs in the SSH session and ends with it.
    (toy_lab.root.source_dir / "sleep-buildworld").write_text("308")
    conf = toy_lab.config(executor_extra="detach = false")
    proc = subprocess.Popen([sys.executable, "-m", "fruix_core.cli.main", "native-build", "run",
                             "--config", str(conf)], cwd=toy_lab.ws.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not live_processes("sleep 308") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_processes("sleep 308"), "the phase never started"
        toy_lab.server.kill()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.INFRASTRUCTURE, err
    assert "connection lost" in err and "Traceback" not in err
    host = ResultRoot(toy_lab.ws.results / toy_lab.only_run_id())
    assert host.status().state == "failed" and host.status().phase == "buildworld"
    assert _store_is_empty(toy_lab.ws)
    toy_lab.server.stop()
    assert wait_gone("sleep 308") == []


def test_cancel_leaves_no_process_in_the_guest(toy_lab: Lab) -> None:
    from fruix_core.runner import run_build

    (toy_lab.root.source_dir / "sleep-buildkernel").write_text("309")
    cancel = CancelToken()

    def watch(phase: str, line: str) -> None:
        if "sleeping" in line:
            threading.Timer(0.5, cancel.cancel).start()

    started = time.monotonic()
    with pytest.raises(Cancelled):
        run_build(load_config(toy_lab.config()), cancel=cancel, on_output=watch)
    assert time.monotonic() - started < 60
    assert wait_gone("sleep 309") == []
    assert toy_lab.server.command_pids() == []
    run_id = toy_lab.only_run_id()
    assert ResultRoot(toy_lab.ws.results / run_id).status().state == "failed"
    assert (toy_lab.guest_run_root(run_id) / "status").read_text() == "failed buildkernel\n"


def test_sigint_stops_the_run_and_the_guest_command(toy_lab: Lab) -> None:
    (toy_lab.root.source_dir / "sleep-installworld").write_text("310")
    proc = subprocess.Popen([sys.executable, "-m", "fruix_core.cli.main", "native-build", "run",
                             "--config", str(toy_lab.config())], cwd=toy_lab.ws.root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not live_processes("sleep 310") and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert wait_gone("sleep 310") == []


def test_phase_timeout_stops_the_guest_command(toy_lab: Lab) -> None:
    (toy_lab.root.source_dir / "sleep-distribution").write_text("311")
    proc = toy_lab.run(phase_timeout=2)
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "timeout" in proc.stderr
    assert wait_gone("sleep 311") == []


def test_resume_after_a_failed_phase(toy_lab: Lab) -> None:
    fail = toy_lab.root.source_dir / "fail-installworld"
    fail.write_text("")
    first = toy_lab.run()
    assert first.returncode == ExitCode.BUILD_FAILED
    run_id = toy_lab.only_run_id()
    assert (toy_lab.root.path / "var/tmp/fruix-native-builds" / run_id / "obj").is_dir()
    fail.unlink()
    second = toy_lab.run("--resume", run_id)
    assert second.returncode == 0, second.stderr
    doc = json.loads(second.stdout)
    assert doc["run_id"] == run_id
    host = Path(doc["result_root"])
    assert (host / "status").read_text() == "ok\n"
    assert (host / "artifacts/world/bin/sh").is_file()
    assert (host / "logs/buildworld.log").is_file()  # from the first attempt, kept in the guest


def _sessions_gone(lab: Lab) -> bool:
    """No command and no per-connection sshd left under the lab's sshd."""
    from fruix_core.testkit.sshd import _descendants

    assert lab.server.process is not None
    return _descendants(lab.server.process.pid) == []


def test_teardown_once_after_success(toy_lab: Lab) -> None:
    from fruix_core.runner import run_build

    recorder = TeardownRecorder()
    outcome = run_build(load_config(toy_lab.config()), extra_plugins=(recorder,))
    assert recorder.calls == [(outcome.run_id, "ok", None)]
    assert not (toy_lab.root.path / "var/tmp/fruix-native-builds" / outcome.run_id).exists()
    assert wait_for(lambda: _sessions_gone(toy_lab))


def test_cancel_between_phases_leaves_nothing_and_both_statuses_agree(toy_lab: Lab) -> None:
    from fruix_core.runner import run_build

    cancel = CancelToken()
    recorder = TeardownRecorder(cancel_after="buildworld", cancel=cancel)
    with pytest.raises(Cancelled):
        run_build(load_config(toy_lab.config()), cancel=cancel, extra_plugins=(recorder,))
    assert [c[1:] for c in recorder.calls] == [("interrupted", "buildkernel")]
    run_id = toy_lab.only_run_id()
    assert str(ResultRoot(toy_lab.ws.results / run_id).status()) == "failed (buildkernel)"
    assert (toy_lab.guest_run_root(run_id) / "status").read_text() == "failed buildkernel\n"
    # The SSH session is closed: no command and no session process left in the guest.
    assert wait_for(lambda: _sessions_gone(toy_lab))


def test_conformance_with_attached_phases(fruix_executor_conformance) -> None:
    from fruix_core.testkit.conformance import all_passed

    results = fruix_executor_conformance("host-initiated", {"detach": False})
    assert all_passed(results), "\n".join(r.line() for r in results)


def test_jobs_come_from_the_guest(tmp_path, fruix_workspace, fruix_toy_source) -> None:
    # -j is the build machine's (FreeBSD: sysctl -n hw.ncpu), not the host's CPU count.
    lab = _lab(tmp_path, fruix_workspace, fruix_toy_source,
               base=make_base_system(tmp_path / "base-3cpu", ncpu=3))
    try:
        proc = lab.run(jobs=0)
    finally:
        lab.server.stop()
    assert proc.returncode == 0, proc.stderr
    root = Path(json.loads(proc.stdout)["result_root"])
    assert ResultRoot(root).read_metadata()["build_jobs"] == "3"
    assert (root / "logs/buildworld.log").read_text().splitlines()[0].startswith(
        "# bmake -j3 buildworld")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching the guest's build user needs root")
def test_full_chain_as_an_unprivileged_guest_user(tmp_path, fruix_workspace,
                                                  fruix_sample_source, fruix_base_system):
    # The guest's builder is not root: installs are -DNO_ROOT, owners live in the METALOG.
    import shutil
    import tempfile

    nobody = 65534
    top = Path(tempfile.mkdtemp(prefix="fruix-guest-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        root = make_guest_root(top / "guest", fruix_sample_source)
        for writable in (root.results_dir, root.work_dir):
            os.chown(writable, nobody, nobody)
        server = SshServer(tmp_path / "sshd", system_root=root.path,
                           base_system=fruix_base_system, build_user=nobody)
        server.start()
        lab = Lab(server=server, root=root, ws=fruix_workspace)
        try:
            proc = lab.run(promote=True)
        finally:
            server.stop()
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        guest_root = lab.guest_run_root(doc["run_id"])
        assert guest_root.stat().st_uid == nobody
        assert (guest_root / "metalog/world.METALOG").stat().st_uid == nobody
        world = (Path(doc["artifacts"]["world"]) / MANIFEST_FILE).read_text()
        assert re.search(r"^\./usr/bin/passwd type=file uname=root gname=wheel mode=4555 .*"
                         r" flags=schg$", world, re.MULTILINE)
        local_ws = Workspace(tmp_path / "local")
        local_ws.root.mkdir()
        conf = local_ws.write_config(source=fruix_sample_source, jobs=2)
        local = run_cli("native-build", "run", "--config", str(conf), "--json",
                        cwd=local_ws.root)
        assert local.returncode == 0, local.stderr
        local_artifacts = json.loads(local.stdout)["artifacts"]
        for kind in KINDS:
            assert (Path(doc["artifacts"][kind]) / MANIFEST_FILE).read_bytes() == \
                (Path(local_artifacts[kind]) / MANIFEST_FILE).read_bytes(), kind
    finally:
        make_tree_writable(top)
        shutil.rmtree(top, ignore_errors=True)


# -- detached phases (the default): a dropped connection does not fail the run -------------


def _guest_phase_log(lab: Lab, phase: str) -> list[Path]:
    work = lab.root.path / "var/tmp/fruix-native-builds"
    return sorted(work.glob(f"*/phases/{phase}.log"))


def test_detached_run_survives_killed_ssh_sessions(toy_lab: Lab) -> None:
    # Kill the sshd session process serving the run in the middle of a phase: the host
    # reconnects and follows the phase on; the run completes ok.
    (toy_lab.root.source_dir / "sleep-buildworld").write_text("3")
    with cli_process("native-build", "run", "--config", str(toy_lab.config()), "--json",
                     cwd=toy_lab.ws.root) as proc:
        deadline = time.monotonic() + 60
        following: list[int] = []
        while time.monotonic() < deadline and not following:
            logs = _guest_phase_log(toy_lab, "buildworld")
            # The host follows the phase: the guest's tail of its log runs.
            if logs and "sleeping" in logs[0].read_text():
                following = live_processes(f"-f {logs[0]}")
            time.sleep(0.05)
        assert following and "sleeping" in logs[0].read_text(), "the phase never started"
        killed = toy_lab.server.session_pids()
        assert killed
        for pid in killed:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["status"] == "ok"
    host_log = (Path(doc["result_root"]) / "logs/buildworld.log").read_text()
    assert host_log.count("toy: buildworld sleeping") == 1   # nothing lost, nothing twice
    assert "built world" in host_log


def test_detached_phase_timeout_stops_the_guest_process_group(toy_lab: Lab) -> None:
    (toy_lab.root.source_dir / "sleep-buildworld").write_text("347")
    proc = toy_lab.run(phase_timeout=2)
    assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stderr
    assert "timed out" in proc.stderr or "timeout" in proc.stderr
    assert wait_gone("sleep 347") == []
    host = ResultRoot(toy_lab.ws.results / toy_lab.only_run_id())
    assert host.status().state == "failed" and host.status().phase == "buildworld"


def test_conformance_detached_in_a_freebsd_shaped_guest(tmp_path: Path,
                                                        fruix_executor_conformance) -> None:
    # The whole contract with detached phases (the default), in a guest with dash as sh,
    # bsdtar and bmake
    # and no Python: cancel during and between phases, the phase timeout and resume
    # stop or continue the detached process groups.
    from fruix_core.testkit.conformance import all_passed

    results = fruix_executor_conformance("host-initiated", {},
                                         base_system=make_base_system(tmp_path / "base"))
    assert all_passed(results), "\n".join(r.line() for r in results)


# -- fruix native-build attach: the host went away, the guest went on ----------------------


def _attach(lab: Lab, run_id: str, conf: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("native-build", "attach", run_id, "--config", str(conf), *extra,
                   cwd=lab.ws.root, timeout=300)


def _killed_in(lab: Lab, conf: Path, phase: str) -> str:
    """Start a run whose host process is SIGKILLed once ``phase`` runs in the guest."""
    return run_host_killed_in_phase(conf, phase, cwd=lab.ws.root, results=lab.ws.results)


def test_attach_imports_a_run_whose_host_was_killed(tmp_path, fruix_workspace,
                                                    fruix_sample_source) -> None:
    # The host dies in buildkernel; the detached phase goes on in the guest. attach
    # follows it, runs the remaining phases and imports the result as a run would.
    lab = _lab(tmp_path, fruix_workspace, fruix_sample_source)
    try:
        conf = lab.config(promote=True)
        run_id = _killed_in(lab, conf, "buildkernel")
        proc = _attach(lab, run_id, conf, "--json")
    finally:
        lab.server.stop()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["run_id"] == run_id and doc["status"] == "ok" and doc["attached"] is True
    assert sorted(doc["artifacts"]) == sorted(KINDS)
    host_root = Path(doc["result_root"])
    assert ResultRoot(host_root).status().state == "ok"
    assert (fruix_workspace.results / "latest").resolve() == host_root.resolve()
    metadata = ResultRoot(host_root).read_metadata()
    assert metadata["attached_at"] == "buildkernel"
    assert metadata["guest_host"] == lab.server.host
    assert metadata["guest_identity_file"] == str(lab.server.client_key)  # a path, never a key
    assert not any("PRIVATE KEY" in value for value in metadata.values())
    assert (lab.guest_run_root(run_id) / "status").read_text() == "ok\n"
    local_root = _local_result_root(tmp_path, fruix_sample_source)
    _assert_same_trees(host_root, local_root)
    assert "attached to the detached phase" in (host_root / "logs/buildkernel.log").read_text()


def test_attach_follows_a_phase_still_running(toy_lab: Lab) -> None:
    source = toy_lab.root.source_dir
    (source / "wait-buildworld").write_text("")
    conf = toy_lab.config()
    run_id = _killed_in(toy_lab, conf, "buildworld")
    host_log = toy_lab.ws.results / run_id / "logs/buildworld.log"
    with cli_process("native-build", "attach", run_id, "--config", str(conf),
                     cwd=toy_lab.ws.root) as proc:
        # The barrier holds the phase: attach is following it when its log says so.
        def following() -> bool:
            text = host_log.read_text() if host_log.exists() else ""
            return "attached to the detached phase" in text and "waiting for go-buildworld" in text

        assert wait_for(following, seconds=60)
        # While attach follows, the run is live: a second attach is refused.
        again = _attach(toy_lab, run_id, conf)
        assert again.returncode == ExitCode.USAGE
        assert "is live" in again.stderr and "Traceback" not in again.stderr
        (source / "go-buildworld").write_text("")
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert f"run {run_id}: ok (attached at buildworld" in out
    log_text = host_log.read_text()
    assert log_text.count("waiting for go-buildworld") == 1 and "built world" in log_text
    assert ResultRoot(toy_lab.ws.results / run_id).status().state == "ok"
    # Nothing to do once it is ok.
    done = _attach(toy_lab, "latest", conf)
    assert done.returncode == 0 and "nothing to attach" in done.stdout


def test_attach_records_a_failure_in_the_guest_and_says_how_to_resume(toy_lab: Lab) -> None:
    source = toy_lab.root.source_dir
    (source / "wait-buildworld").write_text("")
    (source / "fail-installworld").write_text("")
    (source / "go-buildworld").write_text("")
    conf = toy_lab.config()
    run_id = _killed_in(toy_lab, conf, "buildworld")
    proc = _attach(toy_lab, run_id, conf, "--json")
    assert proc.returncode == ExitCode.BUILD_FAILED, proc.stderr
    assert f"fruix native-build run --resume {run_id}" in proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["run_id"], doc["status"], doc["phase"], doc["exit_code"], doc["attached"]) == \
        (run_id, "failed", "installworld", ExitCode.BUILD_FAILED, True)
    assert str(ResultRoot(toy_lab.ws.results / run_id).status()) == "failed (installworld)"
    assert (toy_lab.guest_run_root(run_id) / "status").read_text() == "failed installworld\n"


def test_attach_refuses_a_changed_host_key_then_takes_up_the_failed_run(toy_lab: Lab,
                                                                        tmp_path: Path) -> None:
    (toy_lab.root.source_dir / "wait-buildworld").write_text("")
    conf = toy_lab.config()
    run_id = _killed_in(toy_lab, conf, "buildworld")
    impostor = SshServer(tmp_path / "impostor")
    impostor._write_files()
    known = toy_lab.server.known_hosts
    genuine = known.read_text()
    known.write_text(genuine.split()[0] + " " + impostor.host_key_line + "\n")
    proc = _attach(toy_lab, run_id, conf)
    assert proc.returncode == ExitCode.INFRASTRUCTURE, proc.stderr
    assert "does not match" in proc.stderr and "Traceback" not in proc.stderr
    # The run failed where it was, and the guest's phase went on: once the key question
    # is settled, attach takes it up from there.
    assert str(ResultRoot(toy_lab.ws.results / run_id).status()) == "failed (buildworld)"
    known.write_text(genuine)
    (toy_lab.root.source_dir / "go-buildworld").write_text("")
    again = _attach(toy_lab, run_id, conf)
    assert again.returncode == 0, again.stderr
    assert ResultRoot(toy_lab.ws.results / run_id).status().state == "ok"


def test_attach_refuses_a_run_without_a_guest(tmp_path, fruix_workspace,
                                             fruix_toy_source) -> None:
    conf = fruix_workspace.write_config(source=fruix_toy_source, promote=False)
    first = run_cli("native-build", "run", "--config", str(conf), "--json",
                    cwd=fruix_workspace.root)
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run_id"]
    ResultRoot(fruix_workspace.results / run_id).set_failed("buildkernel")
    proc = run_cli("native-build", "attach", run_id, "--config", str(conf),
                   cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.USAGE
    assert "did not run in a guest" in proc.stderr and f"--resume {run_id}" in proc.stderr
    missing = run_cli("native-build", "attach", "no-such-run", "--config", str(conf),
                      cwd=fruix_workspace.root)
    assert missing.returncode == ExitCode.USAGE and "no run" in missing.stderr


def test_interrupting_attach_stops_the_phase_in_the_guest(toy_lab: Lab) -> None:
    (toy_lab.root.source_dir / "sleep-buildworld").write_text("3517")
    conf = toy_lab.config()
    run_id = _killed_in(toy_lab, conf, "buildworld")
    assert wait_for(lambda: live_processes("sleep 3517"))   # the phase went on, hostless
    host_log = toy_lab.ws.results / run_id / "logs/buildworld.log"
    with cli_process("native-build", "attach", run_id, "--config", str(conf),
                     cwd=toy_lab.ws.root) as proc:
        assert wait_for(lambda: host_log.exists() and "attached to the detached phase"
                        in host_log.read_text() and "sleeping" in host_log.read_text(),
                        seconds=60)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert wait_gone("sleep 3517") == []
    assert str(ResultRoot(toy_lab.ws.results / run_id).status()) == "failed (buildworld)"


def test_attach_refuses_settings_that_moved_the_guest_result_root(toy_lab: Lab) -> None:
    (toy_lab.root.source_dir / "wait-buildworld").write_text("")
    run_id = _killed_in(toy_lab, toy_lab.config(), "buildworld")
    moved = toy_lab.config(executor_extra='results_dir = "/var/lib/fruix/elsewhere"')
    proc = _attach(toy_lab, run_id, moved)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "guest result root was" in proc.stderr and "Traceback" not in proc.stderr
    assert str(ResultRoot(toy_lab.ws.results / run_id).status()) == "failed (buildworld)"
    (toy_lab.root.source_dir / "go-buildworld").write_text("")  # let the guest's phase end


def test_attach_imports_a_run_whose_host_died_before_the_import(toy_lab: Lab) -> None:
    conf = toy_lab.config(promote=True)
    run_id = _killed_in(toy_lab, conf, "import")
    assert (toy_lab.guest_run_root(run_id) / "status").read_text() == "ok\n"
    proc = _attach(toy_lab, run_id, conf, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "ok" and sorted(doc["artifacts"]) == sorted(KINDS)
    host_root = Path(doc["result_root"])
    assert (host_root / "artifacts/world/bin/sh").is_file()
    metadata = ResultRoot(host_root).read_metadata()
    assert metadata["attached_at"] == "import" and metadata["status_value"] == "ok"
    assert metadata["phase_buildworld_started"]     # the host's own stamps are kept
    guest_metadata = ResultRoot(toy_lab.guest_run_root(run_id)).read_metadata()
    assert all(metadata[k] == v for k, v in guest_metadata.items() if k != "finished")


def test_attach_after_the_phases_needs_the_guest_to_say_ok(toy_lab: Lab) -> None:
    conf = toy_lab.config()
    run_id = _killed_in(toy_lab, conf, "import")
    (toy_lab.guest_run_root(run_id) / "status").write_text("failed stage\n")
    proc = _attach(toy_lab, run_id, conf)
    assert proc.returncode == ExitCode.USAGE, proc.stderr
    assert "says 'failed stage', not ok" in proc.stderr and f"--resume {run_id}" in proc.stderr


def test_a_detached_phase_killed_in_the_guest_fails_the_run(toy_lab: Lab) -> None:
    # No exit-status file will ever come: the follow notices the phase's process is gone.
    (toy_lab.root.source_dir / "sleep-buildworld").write_text("3519")
    with cli_process("native-build", "run", "--config", str(toy_lab.config()),
                     cwd=toy_lab.ws.root) as proc:
        assert wait_for(lambda: bool(live_processes("sleep 3519")), seconds=60)
        (pid_file,) = (toy_lab.root.path / "var/tmp/fruix-native-builds").glob(
            "*/phases/buildworld.pid")
        os.killpg(os.getpgid(int(pid_file.read_text())), signal.SIGKILL)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.BUILD_FAILED, err
    assert "exit status 255" in err
    assert str(ResultRoot(toy_lab.ws.results / toy_lab.only_run_id()).status()) == \
        "failed (buildworld)"
