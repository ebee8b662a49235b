"""``fruix native-build run --guest xcpng`` against the lab, through the real CLI.

The full chain: boot → address → build in the guest (``host-initiated`` and
``guest-self-hosted``) → import → promote → shutdown → revert, with artifacts
identical to the ``local`` executor's; and on every way a run can go wrong
(a failing phase, a dropped SSH connection, SIGTERM) a clear error, the VM
halted and reverted (or kept when configured), every session logged out and
the login in no log.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fruix_xapi_lab import LabVM, XapiLab
from fruix_xapi_lab.fixtures import LAB_PASSWORD, LAB_USER, fast_settings

from fruix_core.errors import PluginLoadError, UnknownPluginError
from fruix_core.plugins import load_plugin

EXECUTORS = ["host-initiated", "guest-self-hosted"]


def require_executor(name: str) -> None:
    try:
        load_plugin("executor", name)
    except (PluginLoadError, UnknownPluginError) as exc:
        pytest.fail(f"executor {name} is not usable: {exc}", pytrace=False)


def write_config(path: Path, work: Path, executor: str, guest: dict[str, Any] | None, *,
                 select: bool = True) -> Path:
    """A config; ``select=False`` leaves choosing executor and guest to the command line."""
    lines = ["[build]", "jobs = 2"]
    if select:
        lines.append(f"executor = {json.dumps(executor)}")
    if guest is not None and select:
        lines.append('guest = "xcpng"')
    if executor == "guest-self-hosted":
        # The lab's guests run on this machine: the helper is this environment's.
        helper = Path(sys.executable).with_name("fruix-self-hosted-native-build")
        lines += ["[executors.guest-self-hosted]", f"helper = {json.dumps(str(helper))}"]
    lines += ["[paths]", f"store = {json.dumps(str(work / 'store'))}",
              f"results = {json.dumps(str(work / 'results'))}",
              f"build_root = {json.dumps(str(work / 'build'))}"]
    if guest is not None:
        lines.append("[guests.xcpng]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in guest.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def fruix(config: Path, *extra: str, level: str = "info") -> list[str]:
    return [sys.executable, "-m", "fruix_core.cli.main", "--log-level", level,
            "--log-format", "json", "native-build", "run", "--config", str(config), "--json",
            *extra]


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(FRUIX_XCPNG_USERNAME=LAB_USER, FRUIX_XCPNG_PASSWORD=LAB_PASSWORD)
    return env


def signatures(result_root: Path) -> dict[str, str]:
    from fruix_core.promotion.nar import tree_signature

    artifacts = result_root / "artifacts"
    return {kind.name: tree_signature(kind) for kind in sorted(artifacts.iterdir())}


def assert_released(lab: XapiLab, vm: LabVM) -> None:
    assert vm.power_state == "Halted", "the VM must be halted"
    assert vm.reverts == 1, "the VM must be reverted"
    builds = Path(vm.root) / "var/lib/fruix/native-builds"  # type: ignore[arg-type]
    assert not any(builds.iterdir()), "the revert must remove the run's result root"
    assert lab.live_sessions() == []


def one_error(stderr: str) -> str:
    """The run's single error line (no traceback); with ``--log-format json`` every line
    of stderr is JSON and the error is the record with an ``exit_code``.

    The line that says where a failed run stands and how to resume it
    (``fruix: run ID failed in PHASE; ...``) is not an error line.
    """
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    errors = [f"fruix: error: {r['message']}" for r in records if "exit_code" in r]
    errors += [line for line in stderr.splitlines()
               if line.startswith("fruix: ") and not line.startswith("fruix: run ")]
    assert len(errors) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return errors[0]


def assert_no_login(*texts: str) -> None:
    for text in texts:
        assert LAB_PASSWORD not in text and LAB_USER not in text


def lab_settings(lab: XapiLab, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"ip_timeout": 20, "ssh_timeout": 20}
    values.update(overrides)
    return lab.provider_settings("build", **fast_settings(**values))


def wait_for(path_glob: str, root: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(root.glob(path_glob)):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path_glob} never appeared under {root}")


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_full_chain_matches_the_local_executor(lab: XapiLab, tmp_path: Path,
                                               executor: str) -> None:
    require_executor(executor)
    vm = lab.add_vm("build", ip_delay=0.1)
    config = write_config(tmp_path / "fruix.toml", tmp_path / "guest-run", executor,
                          lab_settings(lab))
    done = subprocess.run(fruix(config, level="debug"), capture_output=True, text=True,
                          env=environment(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["guest"] == "xcpng"
    assert set(result["artifacts"]) == {"world", "kernel", "headers", "bootloader"}
    assert_released(lab, vm)
    assert_no_login(done.stdout, done.stderr)
    events = [json.loads(line)["event"] for line in done.stderr.splitlines()
              if line.startswith("{")]
    reverted = f"VM 'build' ({vm.uuid}) was shut down and reverted to clean"
    assert events.index("guest acquired") < events.index(reverted)
    # stderr is JSON lines only, and the progress events tell the whole story in order
    records = [json.loads(line) for line in done.stderr.splitlines()]
    story = [r for r in records if r.get("logger") == "fruix.progress"]
    assert [r["kind"] for r in story if r["kind"] != "guest-step"
            and not r["kind"].startswith("phase-")] == [
        "run-started", "guest-acquiring", "guest-acquired", "staging-started",
        "staging-finished", "teardown-started",
        "teardown-finished", "import-started", "import-finished", "guest-releasing",
        "guest-released", "promotion-started", "promotion-finished", "run-finished"]
    steps = [r["message"] for r in story if r["kind"] == "guest-step"]
    assert steps == [f"booting VM 'build' ({vm.uuid})…", "waiting for address…",
                     f"waiting for SSH on {vm.address}:{vm.ssh_port}…",
                     "shutting down VM build…", "reverting to clean…"]

    local_config = write_config(tmp_path / "local.toml", tmp_path / "local-run", "local", None)
    local = subprocess.run(fruix(local_config), capture_output=True, text=True, timeout=300)
    assert local.returncode == 0, local.stderr[-3000:]
    local_root = Path(json.loads(local.stdout)["result_root"])
    assert signatures(Path(result["result_root"])) == signatures(local_root)


@pytest.mark.slow
@pytest.mark.parametrize(("executor", "keep"), [("host-initiated", "never"),
                                                ("host-initiated", "on-failure"),
                                                ("guest-self-hosted", "never")])
def test_failing_phase_releases_or_keeps_the_vm(lab: XapiLab, tmp_path: Path, executor: str,
                                                keep: str) -> None:
    require_executor(executor)
    from fruix_xapi_lab.guests import sample_source_dir

    broken = tmp_path / "broken-source"
    shutil.copytree(sample_source_dir(), broken)
    (broken / "sys/kern/kern_module.c").write_text("this is not C;\n")
    vm = lab.add_vm("build", ip_delay=0.1, source=broken)
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", executor,
                          lab_settings(lab, keep=keep))
    done = subprocess.run(fruix(config), capture_output=True, text=True, env=environment(),
                          timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "buildkernel" in one_error(done.stderr)
    assert_no_login(done.stdout, done.stderr)
    if keep == "never":
        assert_released(lab, vm)
    else:
        assert vm.power_state == "Running" and vm.reverts == 0
        assert "KEEPING VM 'build'" in done.stderr
        assert f"RUNNING at {vm.address}" in done.stderr
        assert lab.live_sessions() == []


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_dropped_ssh_connection_releases_the_vm(lab: XapiLab, tmp_path: Path,
                                                executor: str) -> None:
    require_executor(executor)
    vm = lab.add_vm("build", ip_delay=0.1)
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", executor,
                          lab_settings(lab))
    process = subprocess.Popen(fruix(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment())

    def drop_when_building() -> None:
        wait_for("var/lib/fruix/native-builds/*/logs", Path(vm.root))  # type: ignore[arg-type]
        lab.drop_ssh("build")

    dropper = threading.Thread(target=drop_when_building, daemon=True)
    dropper.start()
    out, err = process.communicate(timeout=300)
    dropper.join(5)
    assert process.returncode == 3, err[-3000:]
    one_error(err)
    assert_released(lab, vm)
    assert_no_login(out, err)


@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_sigterm_to_fruix_releases_the_vm(lab: XapiLab, tmp_path: Path, executor: str) -> None:
    require_executor(executor)
    vm = lab.add_vm("build", ip_delay=0.1)
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", executor,
                          lab_settings(lab))
    process = subprocess.Popen(fruix(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment())
    try:
        wait_for("var/lib/fruix/native-builds/*/logs", Path(vm.root))  # type: ignore[arg-type]
    finally:
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    one_error(err)
    assert_released(lab, vm)
    assert_no_login(out, err)


@pytest.mark.slow
def test_sigterm_while_waiting_for_the_address(lab: XapiLab, tmp_path: Path) -> None:
    require_executor("host-initiated")
    vm = lab.add_vm("build", ip_delay=0)
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", "host-initiated",
                          lab_settings(lab, ip_timeout=60))
    agent = lab.faults.hold("agent:build")  # the address never comes while held
    process = subprocess.Popen(fruix(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment())
    assert agent.wait_reached(60)
    assert lab.state.wait_for(lambda: any(
        s[0] == f"vm/{vm.ref}" for s in lab.state.subscriptions))  # it is waiting
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-3000:]
    assert vm.power_state == "Halted" and vm.reverts == 1 and lab.live_sessions() == []
    assert_no_login(out, err)


@pytest.mark.slow
def test_acquire_failure_through_the_cli_is_one_line(lab: XapiLab, tmp_path: Path) -> None:
    require_executor("host-initiated")
    vm = lab.add_vm("build", ip_delay=0.1)
    settings = lab_settings(lab, host_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEH6R1q1l0O9o1o"
                                          "Ww4Y0G3B3lO0x3ZC2Fq2Yj3u7bL4e")
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", "host-initiated", settings,
                          select=False)
    done = subprocess.run(fruix(config, "--executor", "host-initiated", "--guest", "xcpng"),
                          capture_output=True, text=True, env=environment(), timeout=120)
    assert done.returncode == 3
    assert "presented host key" in one_error(done.stderr)
    assert vm.power_state == "Halted" and vm.reverts == 1 and lab.live_sessions() == []


@pytest.mark.slow
def test_second_ctrl_c_during_release_still_ends_halted_and_reverted(lab: XapiLab,
                                                                     tmp_path: Path) -> None:
    require_executor("host-initiated")
    vm = lab.add_vm("build", ip_delay=0.1)
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", "host-initiated",
                          lab_settings(lab))
    hold = lab.faults.hold("VM.clean_shutdown")
    process = subprocess.Popen(fruix(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment())
    lines: list[str] = []
    assert process.stderr is not None
    stream = process.stderr

    def read() -> None:
        for line in stream:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for("var/lib/fruix/native-builds/*/logs", Path(vm.root))  # type: ignore[arg-type]
        process.send_signal(signal.SIGINT)  # the run stops; release begins
        assert hold.wait_reached(120)
        process.send_signal(signal.SIGINT)  # a second Ctrl-C while shutting down
        assert lab.state.wait_for(lambda: any("still releasing" in line for line in lines),
                                  timeout=60)
    finally:
        hold.release()
        assert process.stdout is not None
        out = process.stdout.read()  # stderr is the reader's alone
        process.wait(timeout=120)
        reader.join(10)
    err = "".join(lines)
    assert process.returncode == 130, err[-3000:]
    assert "interrupted" in one_error(err)  # the run's own error, not hidden
    assert f"VM 'build' ({vm.uuid}) was shut down and reverted to clean" in err
    assert_released(lab, vm)
    assert_no_login(out, err)


@pytest.fixture
def pool(tmp_path: Path, lab_credentials: dict[str, str]):  # type: ignore[no-untyped-def]
    from fruix_xapi_lab.fixtures import quick_faults

    with XapiLab(tmp_path / "pool", users={LAB_USER: LAB_PASSWORD}, hosts=2,
                 faults=quick_faults()) as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["no-agent", "old-agent", "member-url", "master-change"])
def test_pool_true_builds(pool: XapiLab, tmp_path: Path, scenario: str) -> None:
    """Whole builds through the CLI on a two-host pool, each with one real-pool trait."""
    require_executor("host-initiated")
    agent = {"no-agent": "none", "old-agent": "old"}.get(scenario, "modern")
    vm = pool.add_vm("build", ip_delay=0.1, agent=agent)
    overrides: dict[str, Any] = {"ip_timeout": 20, "ssh_timeout": 20}
    if scenario == "no-agent":
        overrides["address"] = vm.address  # an operator-declared address
    if scenario == "member-url":
        overrides["url"] = pool.url_of("xcp-host2")
    settings = pool.provider_settings("build", **fast_settings(**overrides))
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", "host-initiated", settings)
    process = subprocess.Popen(fruix(config), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment())
    if scenario == "master-change":
        try:
            wait_for("var/lib/fruix/native-builds/*/logs", Path(vm.root))  # type: ignore[arg-type]
        finally:
            pool.change_master("xcp-host2")  # during the build
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    result = json.loads(out)
    assert result["status"] == "ok" and result["executor"] == "host-initiated"
    assert_released(pool, vm)
    assert_no_login(out, err)
    if scenario in ("member-url", "master-change"):
        assert "following the pool master" in err
    if scenario == "no-agent":
        assert pool.state.calls_of("Async.VM.clean_shutdown") == []  # forced off instead


def guests_release(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fruix_core.cli.main", "guests", "release",
                           "--config", str(config), *extra], capture_output=True, text=True,
                          env=environment(), timeout=120)


@pytest.mark.slow
def test_guests_release_brings_a_kept_vm_back(lab: XapiLab, tmp_path: Path) -> None:
    """``keep = "always"`` leaves the VM running; ``fruix guests release`` halts and reverts it.

    The same path as a run's release (find, shut down, revert, log out); ``keep``
    does not apply to an explicit release.
    """
    require_executor("host-initiated")
    vm = lab.add_vm("build", ip_delay=0.1)
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", "host-initiated",
                          lab_settings(lab, keep="always"))
    done = subprocess.run(fruix(config), capture_output=True, text=True, env=environment(),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["status"] == "ok"
    assert vm.power_state == "Running" and vm.reverts == 0
    assert "KEEPING VM 'build'" in done.stderr and "fruix guests release" in done.stderr
    builds = Path(vm.root) / "var/lib/fruix/native-builds"  # type: ignore[arg-type]
    assert any(builds.iterdir()), "a kept VM still holds the run's result root"

    released = guests_release(config)
    assert released.returncode == 0, released.stderr[-3000:]
    assert released.stdout == f"VM 'build' ({vm.uuid}): halted and reverted to clean\n"
    assert_released(lab, vm)  # halted, reverted once, the result root gone, no session
    assert lab.state.calls_of("Async.VM.revert") or lab.state.calls_of("VM.revert")
    assert_no_login(released.stdout, released.stderr)

    again = guests_release(config, "--json")  # a halted VM: reverted again, still exit 0
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout) == {
        "schema": "fruix.guest-release/1", "ok": True, "guest": "xcpng",
        "distribution": "fruix-guest-xcpng",
        "version": json.loads(again.stdout)["version"],
        "released": f"VM 'build' ({vm.uuid}): halted and reverted to clean"}
    assert vm.power_state == "Halted" and vm.reverts == 2 and lab.live_sessions() == []


#: A well-formed host key, so that only the changed key is wrong (release never uses SSH).
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEH6R1q1l0O9o1oWw4Y0G3B3lO0x3ZC2Fq2Yj3u7bL4e"


@pytest.mark.parametrize(("change", "words"), [
    (('keep = "always"', 'keep = "maybe"'), "guests.xcpng.keep"),
    (('snapshot = "clean"', 'snapshot = 7'), "guests.xcpng.snapshot"),
    (('guest = "xcpng"', 'guest = "xcp-ng"'), "xcp-ng"),
])
def test_guests_release_with_a_bad_config_is_one_line_and_exit_2(
        xapi_lab: XapiLab, tmp_path: Path, change: tuple[str, str], words: str) -> None:
    vm = xapi_lab.add_vm("build")
    xapi_lab.state.call("start", vm.ref, False, False)  # kept running by an earlier run
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", "host-initiated",
                          xapi_lab.provider_settings("build", keep="always", host_key=KEY))
    text = config.read_text()
    assert change[0] in text
    config.write_text(text.replace(change[0], change[1]))
    done = guests_release(config)
    assert done.returncode == 2, done.stderr
    assert words in one_error(done.stderr) and str(config) in done.stderr
    assert done.stdout == ""
    assert vm.power_state == "Running" and vm.reverts == 0  # nothing was touched
    assert xapi_lab.live_sessions() == []


def test_ctrl_c_during_guests_release_still_ends_halted_and_reverted(
        xapi_lab: XapiLab, tmp_path: Path) -> None:
    """The command's release is shielded like a run's: Ctrl-C twice, and it still finishes."""
    vm = xapi_lab.add_vm("build")
    xapi_lab.state.call("start", vm.ref, False, False)
    config = write_config(tmp_path / "fruix.toml", tmp_path / "run", "host-initiated",
                          xapi_lab.provider_settings("build", host_key=KEY))
    hold = xapi_lab.faults.hold("VM.clean_shutdown")
    process = subprocess.Popen([sys.executable, "-m", "fruix_core.cli.main", "guests", "release",
                                "--config", str(config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment())
    lines: list[str] = []
    assert process.stderr is not None
    stream = process.stderr
    reader = threading.Thread(target=lambda: lines.extend(stream), daemon=True)
    reader.start()

    def said(text: str) -> bool:
        return any(text in line for line in list(lines))

    try:
        assert hold.wait_reached(60)  # shutting down, held on the server
        process.send_signal(signal.SIGINT)
        assert xapi_lab.state.wait_for(lambda: said("still releasing"), timeout=60)
        process.send_signal(signal.SIGINT)
        assert xapi_lab.state.wait_for(
            lambda: sum("still releasing" in line for line in list(lines)) >= 2, timeout=60)
    finally:
        hold.release()
        assert process.stdout is not None
        out = process.stdout.read()
        process.wait(timeout=120)
        reader.join(10)
    err = "".join(lines)
    assert process.returncode == 0, err[-3000:]
    assert out == f"VM 'build' ({vm.uuid}): halted and reverted to clean\n"
    assert "ABANDONED" not in err and "Traceback" not in err
    assert vm.power_state == "Halted" and vm.reverts == 1 and xapi_lab.live_sessions() == []
