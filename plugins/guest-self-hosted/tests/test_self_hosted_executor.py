"""The host-side ``guest-self-hosted`` executor through a real OpenSSH sshd on loopback."""

from __future__ import annotations

import json
import shlex
import threading
import time
from pathlib import Path

import pytest
from fruix_guest_self_hosted import __version__

from fruix_core.config import load_config
from fruix_core.errors import (
    BuildFailed,
    Cancelled,
    ConfigError,
    ExitCode,
    GuestError,
    MetadataError,
    UsageError,
)
from fruix_core.model import CancelToken
from fruix_core.resultroot import ResultRoot
from fruix_core.runner import run_build
from fruix_core.testkit import TeardownRecorder, live_processes, run_cli, wait_for

PHASES = ["buildworld", "buildkernel", "installworld", "distribution", "installkernel"]

#: A developer shell gone wrong, wrapped around the helper in the guest.
POLLUTION = ("env MAKEFLAGS=-e CC=/bin/false CXX=/bin/false CFLAGS=-DPOLLUTED_CFLAGS=1 "
             "LDFLAGS=-Wl,--polluted FRUIX_DEVELOPMENT_PROFILE=/nonexistent/profile ")


def _config(ws, sshd, guest, *, helper: str | None = None, executor: str = "guest-self-hosted",
            extra: str = "", **build):
    """A fruix.toml building in ``guest`` (a system root) through ``sshd``."""
    helper = helper if helper is not None else shlex.join(_helper_words())
    text = "\n".join([
        "[guests.ssh]",
        f'host = "{sshd.host}"',
        f"port = {sshd.port}",
        f'user = "{sshd.user}"',
        f'identity_file = "{sshd.client_key}"',
        f'known_hosts = "{sshd.known_hosts}"',
        f'system_root = "{guest.path}"',
        "",
        "[executors.guest-self-hosted]",
        f"helper = {json.dumps(helper)}",
        extra,
        "",
    ])
    build.setdefault("promote", False)
    return ws.write_config(text, executor=executor, guest="ssh", jobs=2, **build)


def _helper_words() -> list[str]:
    import sys

    script = Path(sys.executable).parent / "fruix-self-hosted-native-build"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fruix_guest_self_hosted.helper"]


# -- the full chain ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory, fruix_sshd_shared, sample_guest):
    """``fruix native-build run --executor guest-self-hosted --guest ssh`` on the sample base."""
    from fruix_core.testkit import Workspace

    ws = Workspace(tmp_path_factory.mktemp("chain"))
    conf = _config(ws, fruix_sshd_shared, sample_guest,
                   helper=POLLUTION + shlex.join(_helper_words()), promote=True,
                   executor="local")
    proc = run_cli("native-build", "run", "--executor", "guest-self-hosted", "--guest", "ssh",
                   "--config", str(conf), "--json", cwd=ws.root)
    return ws, proc


def test_full_chain_builds_imports_and_promotes(chain, sample_guest):
    from fruix_core.promotion import read_promotion

    ws, proc = chain
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["status"] == "ok" and doc["executor"] == "guest-self-hosted"
    assert doc["guest"] == "ssh"
    host_root = Path(doc["result_root"])
    assert host_root == ws.results / doc["run_id"]
    assert (host_root / "status").read_text() == "ok\n"
    assert sorted(p.name for p in (host_root / "logs").iterdir()) == \
        sorted(f"{p}.log" for p in PHASES)
    promotion = read_promotion(host_root / "promotion.scm")
    assert promotion.executor == "guest-self-hosted"
    assert promotion.executor_version == __version__
    assert promotion.run_id == doc["run_id"]
    assert promotion.source.path == sample_guest.source_store
    # The guest keeps its own result root under the same run id, and its latest.
    guest_root = sample_guest.results_dir / doc["run_id"]
    assert (guest_root / "status").read_text() == "ok\n"
    # Other runs share this guest, so latest may name a later one, but always a complete one.
    assert ResultRoot((sample_guest.results_dir / "latest").resolve()).status().state == "ok"
    # Promoted by the core, named after the executor.
    assert set(doc["artifacts"]) == {"world", "kernel", "headers", "bootloader"}
    for path in doc["artifacts"].values():
        assert Path(path).is_dir() and Path(path).name.endswith("-guest-self-hosted")
    verify = run_cli("store", "verify", "--config", str(ws.root / "fruix.toml"), "--json",
                     cwd=ws.root)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_full_chain_pollution_does_not_reach_make(chain):
    ws, proc = chain
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    host_root = Path(json.loads(proc.stdout)["result_root"])
    logs = "".join(p.read_text() for p in (host_root / "logs").iterdir())
    assert "POLLUTED" not in logs and "polluted" not in logs and "/bin/false" not in logs


def test_full_chain_signatures_equal_the_local_executor(chain, kit, local_reference):
    ws, proc = chain
    assert proc.returncode == ExitCode.OK, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert kit.signatures(Path(doc["result_root"])) == local_reference
    from fruix_core.promotion.records import read_object_record

    # The store objects record exactly those trees.
    stored = {kind: read_object_record(Path(path) / ".fruix-native-build-object.scm")
              .tree_signature for kind, path in doc["artifacts"].items()}
    assert stored == local_reference


def test_signatures_equal_the_host_initiated_executor(tmp_path, kit, fruix_workspace,
                                                     fruix_sshd_shared, sample_guest,
                                                     local_reference):
    conf = _config(fruix_workspace, fruix_sshd_shared, sample_guest, executor="host-initiated")
    outcome = run_build(load_config(conf))
    assert outcome.executor == "host-initiated"
    assert kit.signatures(outcome.result_root) == local_reference


# -- the hooks on the toy base -------------------------------------------------------------


def test_each_phase_is_followed_and_logged(fruix_workspace, fruix_sshd_shared, toy_guest):
    seen: list[tuple[str, str]] = []
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest,
                   extra="keep_work = true", promote=True)
    outcome = run_build(load_config(conf), on_output=lambda phase, line: seen.append(
        (phase, line)))
    assert outcome.status == "ok" and outcome.bundle is not None
    phases_in_order = list(dict.fromkeys(phase for phase, _ in seen))
    assert phases_in_order == PHASES
    assert ("buildworld", "built world") in seen
    assert not any(line.startswith("@@fruix-self-hosted@@") for _, line in seen)
    root = ResultRoot(outcome.result_root)
    assert root.status().state == "ok"
    assert "built world" in root.log_path("buildworld").read_text()
    meta = root.read_metadata()
    assert meta["executor"] == "guest-self-hosted" and meta["executor_version"] == __version__
    # keep_work = true: the guest's work area is still there.
    assert (toy_guest.path / "var/tmp/fruix-self-hosted-native-builds" / outcome.run_id).is_dir()


def test_failing_phase_stops_the_run(fruix_workspace, fruix_sshd_shared, tmp_path, kit):
    guest = kit.make_toy_guest(tmp_path, fail_buildkernel="")
    conf = _config(fruix_workspace, fruix_sshd_shared, guest)
    with pytest.raises(BuildFailed) as info:
        run_build(load_config(conf))
    assert info.value.phase == "buildkernel" and info.value.exit_code == ExitCode.BUILD_FAILED
    host_root = ResultRoot(info.value.result_root)  # type: ignore[attr-defined]
    assert host_root.status().phase == "buildkernel"
    assert "failing on purpose" in host_root.log_path("buildkernel").read_text()
    guest_root = ResultRoot(guest.results_dir / host_root.run_id)
    assert guest_root.status().state == "failed" and guest_root.status().phase == "buildkernel"


def test_cancel_on_the_host_stops_the_helper_in_the_guest(fruix_workspace, fruix_sshd_shared,
                                                          tmp_path, kit):
    guest = kit.make_toy_guest(tmp_path, sleep_buildworld="60")
    conf = _config(fruix_workspace, fruix_sshd_shared, guest)
    cancel = CancelToken()
    sleeping = threading.Event()
    result: dict[str, BaseException] = {}

    def on_output(phase: str, line: str) -> None:
        if "sleeping" in line:
            sleeping.set()

    def build() -> None:
        try:
            run_build(load_config(conf), cancel=cancel, on_output=on_output)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            result["error"] = exc

    worker = threading.Thread(target=build)
    worker.start()
    try:
        assert sleeping.wait(30), "the helper never reached the sleeping phase"
        started = time.monotonic()
        cancel.cancel("interrupted")
        worker.join(30)
        assert not worker.is_alive()
        assert time.monotonic() - started < 15
        assert isinstance(result.get("error"), Cancelled), result
        run_id = Path(result["error"].result_root).name  # type: ignore[attr-defined]
        # The helper saw SIGTERM, stopped make and said so in the guest.
        guest_root = ResultRoot(guest.results_dir / run_id)
        assert guest_root.status().state == "failed"
        assert guest_root.status().phase == "buildworld"
        deadline = time.monotonic() + 5
        while kit.processes_in(guest.source_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert kit.processes_in(guest.source_dir) == []
    finally:
        cancel.cancel()
        worker.join(30)
        kit.kill_processes_in(guest.source_dir)


# -- unfit guests and helpers -------------------------------------------------------------


def test_missing_helper(fruix_workspace, fruix_sshd_shared, toy_guest):
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest,
                   helper="/nonexistent/bin/fruix-self-hosted-native-build")
    proc = run_cli("native-build", "run", "--config", str(conf), cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    assert "is not installed" in proc.stderr and "/nonexistent/bin" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(toy_guest.results_dir.iterdir())


def test_older_helper_is_refused(fruix_workspace, fruix_sshd_shared, toy_guest, tmp_path):
    old = tmp_path / "old-helper"
    old.write_text("#!/bin/sh\necho 'fruix-self-hosted-native-build 0.0.9'\n")
    old.chmod(0o755)
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest, helper=str(old))
    with pytest.raises(GuestError) as info:
        run_build(load_config(conf))
    message = str(info.value)
    assert "version 0.0.9" in message and f"expects {__version__}" in message
    assert not any(toy_guest.results_dir.iterdir())


def test_a_helper_of_another_version_is_refused(fruix_workspace, fruix_sshd_shared, toy_guest,
                                               tmp_path):
    # The helper's version becomes executor-version, which the core takes from this
    # distribution: any other helper version is refused before anything is built.
    other = tmp_path / "other-helper"
    other.write_text("#!/bin/sh\necho fruix-self-hosted-native-build 9.9.9\n")
    other.chmod(0o755)
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest, helper=str(other))
    with pytest.raises(GuestError, match=rf"version 9\.9\.9, but this host expects {__version__}"):
        run_build(load_config(conf))


def test_not_the_helper_is_refused(fruix_workspace, fruix_sshd_shared, toy_guest):
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest, helper="/bin/echo")
    with pytest.raises(GuestError, match="is not the Fruix self-hosted helper"):
        run_build(load_config(conf))


def test_missing_overlay_over_ssh(fruix_workspace, fruix_sshd_shared, tmp_path, kit):
    guest = kit.make_toy_guest(tmp_path, with_overlay=False)
    conf = _config(fruix_workspace, fruix_sshd_shared, guest, promote=True)
    proc = run_cli("native-build", "run", "--config", str(conf), "--json",
                   cwd=fruix_workspace.root)
    assert proc.returncode == ExitCode.INFRASTRUCTURE
    doc = json.loads(proc.stdout)
    assert doc["status"] == "failed" and doc["exit_code"] == ExitCode.INFRASTRUCTURE
    assert "/usr/include is missing" in doc["error"] and "/usr/share/mk" in doc["error"]
    assert "Traceback" not in proc.stderr
    assert not fruix_workspace.store.exists() or not any(fruix_workspace.store.iterdir())


def test_missing_metadata_over_ssh(fruix_workspace, fruix_sshd_shared, toy_guest):
    toy_guest.layout_file.unlink()
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest)
    with pytest.raises(MetadataError, match="store-layout.scm") as info:
        run_build(load_config(conf))
    assert info.value.exit_code == ExitCode.USAGE


def test_bad_settings_name_the_key(fruix_workspace, fruix_sshd_shared, toy_guest):
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest, extra="helpr = 'x'")
    with pytest.raises(ConfigError, match="executors.guest-self-hosted.helpr"):
        run_build(load_config(conf))


def test_needs_a_guest(fruix_workspace, toy_guest):
    conf = fruix_workspace.write_config(executor="guest-self-hosted", promote=False)
    with pytest.raises(UsageError, match="builds in a guest"):
        run_build(load_config(conf))


def test_helper_killed_in_the_guest(fruix_workspace, fruix_sshd_shared, toy_guest, tmp_path):
    real = shlex.join(_helper_words())
    dying = tmp_path / "dying-helper"
    dying.write_text(
        "#!/bin/sh\n"
        f'case " $* " in *" --version "*|*" --prepare "*) exec {real} "$@";; esac\n'
        'echo "@@fruix-self-hosted@@ phase-start buildworld"\n'
        'echo "compiling the world"\n'
        "kill -9 $$\n")
    dying.chmod(0o755)
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest, helper=str(dying))
    seen: list[tuple[str, str]] = []
    with pytest.raises(GuestError, match="without a summary") as info:
        run_build(load_config(conf), on_output=lambda phase, line: seen.append((phase, line)))
    assert ("buildworld", "compiling the world") in seen
    host_root = ResultRoot(info.value.result_root)  # type: ignore[attr-defined]
    assert host_root.status().state == "failed" and host_root.status().phase == "buildworld"


def test_phase_timeout_is_enforced_in_the_guest(fruix_workspace, fruix_sshd_shared, tmp_path,
                                                kit):
    from fruix_core.errors import PhaseTimeout

    guest = kit.make_toy_guest(tmp_path, sleep_buildkernel="30")
    conf = _config(fruix_workspace, fruix_sshd_shared, guest, phase_timeout=1)
    try:
        with pytest.raises(PhaseTimeout) as info:
            run_build(load_config(conf))
        assert info.value.phase == "buildkernel" and info.value.timeout == 1
        run_id = Path(info.value.result_root).name  # type: ignore[attr-defined]
        assert ResultRoot(guest.results_dir / run_id).status().phase == "buildkernel"
    finally:
        kit.kill_processes_in(guest.source_dir)


def test_the_phase_outlives_a_lost_connection(fruix_workspace, fruix_sshd, tmp_path, kit):
    """The host going away does not stop the phase in the guest: it completes there.

    The host drives the helper phase by phase, so the rest of the run waits for
    the host: ``--resume`` continues it (the conformance suite checks resume).
    """
    from fruix_core.errors import ConnectionLostError

    guest = kit.make_toy_guest(tmp_path, sleep_buildworld="2")
    conf = _config(fruix_workspace, fruix_sshd, guest)
    sleeping = threading.Event()
    result: dict[str, BaseException] = {}

    def build() -> None:
        try:
            run_build(load_config(conf), on_output=lambda phase, line: (
                sleeping.set() if "sleeping" in line else None))
        except BaseException as exc:  # noqa: BLE001 - inspected below
            result["error"] = exc

    worker = threading.Thread(target=build)
    worker.start()
    try:
        assert sleeping.wait(30)
        fruix_sshd.kill()
        worker.join(30)
        assert isinstance(result.get("error"), ConnectionLostError), result
        assert result["error"].exit_code == ExitCode.INFRASTRUCTURE
        run_id = Path(result["error"].result_root).name  # type: ignore[attr-defined]
        guest_root = ResultRoot(guest.results_dir / run_id)
        log = guest_root.log_path("buildworld")
        assert wait_for(lambda: log.is_file() and "built world" in log.read_text(), 30)
        assert wait_for(lambda: not live_processes(f"--run-id {run_id}"), 30)
        # Still open for the host (its helper is gone, so it can be resumed).
        assert guest_root.status().state == "running" and guest_root.status().stale
    finally:
        worker.join(30)
        kit.kill_processes_in(guest.source_dir)


# -- teardown -----------------------------------------------------------------------------


def test_teardown_once_after_success(fruix_workspace, fruix_sshd_shared, toy_guest):
    recorder = TeardownRecorder()
    conf = _config(fruix_workspace, fruix_sshd_shared, toy_guest)
    outcome = run_build(load_config(conf), extra_plugins=(recorder,))
    assert recorder.calls == [(outcome.run_id, "ok", None)]
    assert (toy_guest.results_dir / outcome.run_id / "status").read_text() == "ok\n"


def test_cancel_between_phases_stops_the_helper_and_both_statuses_agree(
        fruix_workspace, fruix_sshd_shared, tmp_path, kit):
    # buildkernel sleeps, so the helper is busy in the guest when the host cancels.
    guest = kit.make_toy_guest(tmp_path, sleep_buildkernel="312")
    conf = _config(fruix_workspace, fruix_sshd_shared, guest)
    cancel = CancelToken()
    recorder = TeardownRecorder(cancel_after="buildworld", cancel=cancel)
    try:
        with pytest.raises(Cancelled) as info:
            run_build(load_config(conf), cancel=cancel, extra_plugins=(recorder,))
        assert [c[1:] for c in recorder.calls] == [("interrupted", "buildkernel")]
        run_id = info.value.run_id
        host = ResultRoot(fruix_workspace.results / run_id)
        guest_root = ResultRoot(guest.results_dir / run_id)
        assert str(host.status()) == str(guest_root.status()) == "failed (buildkernel)"
        # Nothing of the run is left in the guest: no helper, no make, no sleep.
        assert wait_for(lambda: not live_processes("sleep 312"))
        assert wait_for(lambda: not kit.processes_in(guest.source_dir))
        assert wait_for(lambda: not live_processes(f"--run-id {run_id}"))
    finally:
        kit.kill_processes_in(guest.source_dir)


def test_conformance(fruix_executor_conformance):
    from fruix_core.testkit.conformance import all_passed

    results = fruix_executor_conformance("guest-self-hosted",
                                         {"helper": shlex.join(_helper_words())})
    assert all_passed(results), "\n".join(r.line() for r in results)
