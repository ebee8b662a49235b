"""The provider against the lab: acquire, release, every fault, and no credential leaks."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from fruix_xapi_lab import LabVM, VmFaults, XapiLab
from fruix_xapi_lab.fixtures import LAB_PASSWORD, LAB_USER, guest_request
from fruix_xcpng import XcpngGuestProvider
from structlog.testing import capture_logs

from fruix_core.errors import Cancelled, ConfigError, GuestError, HostKeyError
from fruix_core.model import CancelToken, Guest


def released(lab: XapiLab, vm: LabVM, reverts: int = 1) -> None:
    """The VM is halted and reverted, and no XAPI session is left behind."""
    assert vm.power_state == "Halted"
    assert vm.reverts == reverts
    assert lab.live_sessions() == []
    assert not (Path(vm.root) / "build-leftover").exists()  # type: ignore[arg-type]


def dirty(vm: LabVM) -> None:
    (Path(vm.root) / "build-leftover").write_text("objects\n")  # type: ignore[arg-type]


def no_secrets(*texts: Any) -> None:
    blob = json.dumps(texts, default=repr)
    assert LAB_PASSWORD not in blob
    assert LAB_USER not in blob


def run_command(guest: Guest, command: str) -> str:
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    key_type, key_b64 = guest.host_key.split()  # type: ignore[union-attr]
    host = guest.host if guest.port == 22 else f"[{guest.host}]:{guest.port}"
    client.get_host_keys().add(host, key_type, paramiko.PKey.from_type_string(
        key_type, __import__("base64").b64decode(key_b64)))
    client.connect(guest.host, guest.port, username=guest.user,
                   key_filename=guest.identity_file, look_for_keys=False, allow_agent=False,
                   timeout=5)
    try:
        _stdin, stdout, _stderr = client.exec_command(command, timeout=5)
        return stdout.read().decode()
    finally:
        client.close()


# -- the normal path ---------------------------------------------------------------------


def test_acquire_gives_a_usable_guest_and_release_reverts(lab: XapiLab,
                                                          capfd: pytest.CaptureFixture[str]
                                                          ) -> None:
    vm = lab.add_vm("build", ip_delay=0.1)
    provider = XcpngGuestProvider()
    with capture_logs() as logs:
        guest = provider.fruix_acquire_guest(guest_request(lab))
        assert vm.power_state == "Running" and lab.live_sessions() == []
        assert (guest.host, guest.port) == (vm.address, vm.ssh_port)
        assert guest.provider == "xcpng" and guest.name == "build"
        assert guest.host_key == lab.host_key("build")
        assert guest.system_root == str(vm.root)
        assert guest.details["vm_uuid"] == vm.uuid
        assert run_command(guest, "echo hello") == "hello\n"
        dirty(vm)
        provider.fruix_release_guest(guest, "ok")
    released(lab, vm)
    out, err = capfd.readouterr()
    no_secrets(logs, out, err, guest)
    events = [entry["event"] for entry in logs]
    assert f"VM 'build' ({vm.uuid}) was shut down and reverted to clean" in events
    # every call was authenticated, and every login was matched by a logout
    assert lab.state.logins == len(lab.state.logged_out) == 2
    assert {s.originator for s in lab.state.history} == {"fruix-native-build"}


def test_vm_by_name_and_snapshot_by_uuid(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05, snapshots=("clean", "older"))
    snap = lab.snapshot_of("build", "older")
    provider = XcpngGuestProvider()
    settings = lab.provider_settings("build", vm_uuid="", vm_name="build", snapshot=snap.uuid,
                                     ip_timeout=5, ssh_timeout=5, poll_interval=0.1)
    from fruix_core.model import GuestRequest

    guest = provider.fruix_acquire_guest(GuestRequest("xcpng", "r", settings))
    assert guest.details["snapshot_uuid"] == snap.uuid
    provider.fruix_release_guest(guest, "failed")
    released(lab, vm)


def test_events_unavailable_falls_back_to_polling(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.3)
    lab.faults.events_unsupported = True
    provider = XcpngGuestProvider()
    with capture_logs() as logs:
        guest = provider.fruix_acquire_guest(guest_request(lab))
    assert any(e["event"] == "event.from unavailable, polling instead" for e in logs)
    provider.fruix_release_guest(guest, "ok")
    released(lab, vm)


# -- finding the VM -------------------------------------------------------------------------


def test_unknown_vm_and_snapshot_leave_everything_untouched(xapi_lab: XapiLab) -> None:
    vm = xapi_lab.add_vm("build", snapshots=("clean", "golden"))
    provider = XcpngGuestProvider()
    with pytest.raises(GuestError, match="no VM has uuid"):
        provider.fruix_acquire_guest(guest_request(
            xapi_lab, vm_uuid="5f0c1b7e-0000-4000-8000-000000000000", host_key=KEY))
    with pytest.raises(GuestError, match="no VM is named 'nope'"):
        provider.fruix_acquire_guest(guest_request(xapi_lab, vm_uuid="", vm_name="nope",
                                                   host_key=KEY))
    with pytest.raises(GuestError, match="no snapshot 'gone'.*'clean', 'golden'"):
        provider.fruix_acquire_guest(guest_request(xapi_lab, snapshot="gone", host_key=KEY))
    xapi_lab.add_vm("build", snapshots=())
    with pytest.raises(GuestError, match="2 VMs are named 'build'"):
        provider.fruix_acquire_guest(guest_request(xapi_lab, vm_uuid="", vm_name="build",
                                                   host_key=KEY))
    assert vm.power_state == "Halted" and vm.boots == 0 and vm.reverts == 0
    assert xapi_lab.live_sessions() == []


KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEH6R1q1l0O9o1oWw4Y0G3B3lO0x3ZC2Fq2Yj3u7bL4e"


# -- power-state policies -------------------------------------------------------------------


def test_running_vm_is_refused_by_default_and_untouched(lab: XapiLab) -> None:
    vm = lab.add_vm("build", power_state="Running", ip_delay=0.05)
    with pytest.raises(GuestError, match=r"already Running.*running = \"use\""):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab))
    assert vm.power_state == "Running" and vm.reverts == 0 and lab.live_sessions() == []


def test_running_vm_is_used_when_allowed_and_then_reverted(lab: XapiLab) -> None:
    vm = lab.add_vm("build", power_state="Running", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(lab, running="use"))
    assert vm.boots == 1 and guest.details["power_state_found"] == "Running"
    provider.fruix_release_guest(guest, "ok")
    released(lab, vm)


@pytest.mark.parametrize(("state", "key", "value"), [("Paused", "paused", "unpause"),
                                                     ("Suspended", "suspended", "resume")])
def test_paused_and_suspended_policies(lab: XapiLab, state: str, key: str, value: str) -> None:
    vm = lab.add_vm("build", power_state=state, ip_delay=0.05)
    provider = XcpngGuestProvider()
    with pytest.raises(GuestError, match=f"is {state}"):
        provider.fruix_acquire_guest(guest_request(lab))
    assert vm.power_state == state
    guest = provider.fruix_acquire_guest(guest_request(lab, **{key: value}))
    assert vm.power_state == "Running"
    provider.fruix_release_guest(guest, "ok")
    released(lab, vm)


def test_steps_arrive_in_order(lab: XapiLab) -> None:
    """Acquire and release tell each slow step through the core's step callbacks."""
    vm = lab.add_vm("build", ip_delay=0.1)
    steps: list[str] = []
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(
        dataclasses.replace(guest_request(lab), on_step=steps.append))
    acquired = list(steps)
    provider.fruix_release_guest(dataclasses.replace(guest, on_step=steps.append), "ok")
    label = f"VM 'build' ({vm.uuid})"
    assert acquired == [f"booting {label}…", "waiting for address…",
                        f"waiting for SSH on {vm.address}:{vm.ssh_port}…"]
    assert steps[len(acquired):] == ["shutting down VM build…", "reverting to clean…"]
    released(lab, vm)


def test_steps_of_a_failed_acquire_include_its_release(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05, faults=VmFaults(ip_never=True))
    steps: list[str] = []
    with pytest.raises(GuestError):
        XcpngGuestProvider().fruix_acquire_guest(
            dataclasses.replace(guest_request(lab, ip_timeout=0.5), on_step=steps.append))
    assert steps[:2] == [f"booting VM 'build' ({vm.uuid})…", "waiting for address…"]
    assert steps[-1] == "reverting to clean…" and "waiting for SSH" not in " ".join(steps)
    released(lab, vm)


# -- injected faults: a clear error, the VM released every time --------------------------------


def test_ip_that_never_comes(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05, faults=VmFaults(ip_never=True))
    dirty(vm)
    started = time.monotonic()
    with pytest.raises(GuestError) as info:
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab, ip_timeout=0.8))
    assert time.monotonic() - started < 8
    message = str(info.value)
    assert "no usable address within 0.8 s" in message and "xe-guest-utilities" in message
    assert "169.254.77.1" in message  # what the agent did report
    released(lab, vm)


def test_start_that_fails(lab: XapiLab) -> None:
    vm = lab.add_vm("build", faults=VmFaults(start_fails="BOOTLOADER_FAILED"))
    with pytest.raises(GuestError, match="VM.start failed: BOOTLOADER_FAILED"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab))
    # XAPI refused the start: the VM never ran, so there is nothing to shut down or revert.
    assert vm.power_state == "Halted" and vm.reverts == 0 and lab.live_sessions() == []


def test_two_runs_racing_for_one_vm(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.3)
    provider = XcpngGuestProvider()
    barrier = threading.Barrier(2)
    outcomes: list[Any] = []

    def run() -> None:
        barrier.wait()
        try:
            outcomes.append(provider.fruix_acquire_guest(guest_request(lab)))
        except GuestError as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    guests = [o for o in outcomes if isinstance(o, Guest)]
    errors = [str(o) for o in outcomes if isinstance(o, GuestError)]
    assert len(guests) == 1 and len(errors) == 1
    assert any(words in errors[0] for words in ("taken by another operation", "already Running",
                                                  "busy with another operation"))
    # the loser did not take the winner's VM down
    assert vm.power_state == "Running" and vm.reverts == 0
    provider.fruix_release_guest(guests[0], "ok")
    released(lab, vm)


def test_clean_shutdown_that_hangs_is_forced(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05, faults=VmFaults(clean_shutdown_hangs=True))
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(lab, shutdown_timeout=0.5))
    dirty(vm)
    started = time.monotonic()
    with capture_logs() as logs:
        provider.fruix_release_guest(guest, "ok")
    assert time.monotonic() - started < 5
    assert any(e["event"].startswith("clean shutdown took too long") for e in logs)
    assert any(e["event"] == "forcing VM build off…" for e in logs)
    # the clean shutdown's task was cancelled on the pool, not left waiting there
    assert lab.state.cancelled and all(not t.visible or t.status != "pending"
                                        for t in lab.state.tasks.values())
    released(lab, vm)


def test_session_that_expires_mid_run(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(lab))
    lab.expire_sessions()  # e.g. the pool master restarted during the build
    dirty(vm)
    provider.fruix_release_guest(guest, "ok")
    released(lab, vm)


def test_session_that_expires_while_waiting_for_the_address(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.6)
    lab.faults.session_ttl = 0.2
    lab.faults.events_unsupported = True  # poll, so the dead session is noticed
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(lab))
    assert len(lab.state.expired) >= 1  # the SDK renewed it transparently
    lab.faults.session_ttl = 0
    provider.fruix_release_guest(guest, "ok")
    released(lab, vm)


def test_sshd_that_never_answers(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05, faults=VmFaults(ssh_never=True))
    with pytest.raises(GuestError, match=r"sshd on 127\.0\.0\.\d+:\d+ did not answer within "
                                         r"0\.6 s \(last: TCP"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab, ssh_timeout=0.6))
    released(lab, vm)


def test_wrong_host_key_is_refused_at_once(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05)
    started = time.monotonic()
    with pytest.raises(HostKeyError, match="presented host key ssh-ed25519 SHA256:.*pinned is"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab, host_key=KEY,
                                                               ssh_timeout=30))
    assert time.monotonic() - started < 10
    released(lab, vm)


def test_interrupt_while_acquiring_releases_the_vm(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=5, faults=VmFaults(ip_never=True))
    cancel = CancelToken()
    threading.Timer(0.4, cancel.cancel).start()
    with capture_logs() as logs, pytest.raises(Cancelled, match="interrupted while waiting"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab, cancel=cancel,
                                                               ip_timeout=30))
    released(lab, vm)
    assert any(e.get("outcome") == "interrupted" for e in logs)


def test_keyboard_interrupt_while_acquiring_releases_the_vm(lab: XapiLab,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    vm = lab.add_vm("build", ip_delay=0.05)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("fruix_xcpng.lifecycle.wait_for_ssh", interrupted)
    with pytest.raises(KeyboardInterrupt):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab))
    released(lab, vm)


# -- keep policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(("keep", "outcome", "kept"), [
    ("always", "ok", True), ("on-failure", "failed", True), ("on-failure", "ok", False),
    ("on-failure", "interrupted", False), ("never", "failed", False)])
def test_keep_policy(lab: XapiLab, keep: str, outcome: str, kept: bool) -> None:
    vm = lab.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(lab, keep=keep))
    with capture_logs() as logs:
        provider.fruix_release_guest(guest, outcome)
    if kept:
        assert vm.power_state == "Running" and vm.reverts == 0
        warning = [e for e in logs if e["log_level"] == "warning"][0]
        assert warning["event"].startswith("KEEPING VM 'build'")
        assert vm.address in warning["event"] and warning["address"] == vm.address
        assert f"snapshot-uuid={guest.details['snapshot_uuid']}" in warning["event"]
    else:
        released(lab, vm)
    assert lab.live_sessions() == []


def test_failed_acquire_keeps_the_vm_on_failure_when_asked(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05, faults=VmFaults(ssh_never=True))
    with pytest.raises(GuestError):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab, keep="on-failure",
                                                               ssh_timeout=0.3))
    assert vm.power_state == "Running" and vm.reverts == 0 and lab.live_sessions() == []


# -- the pool itself misbehaves --------------------------------------------------------------------


def test_bad_login_names_the_variables_not_the_values(lab: XapiLab,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    lab.add_vm("build")
    monkeypatch.setenv("FRUIX_XCPNG_PASSWORD", "wrong-" + LAB_PASSWORD)
    with capture_logs() as logs, pytest.raises(GuestError) as info:
        XcpngGuestProvider().fruix_acquire_guest(guest_request(lab))
    message = str(info.value)
    assert "SESSION_AUTHENTICATION_FAILED" in message
    assert "$FRUIX_XCPNG_USERNAME / $FRUIX_XCPNG_PASSWORD" in message
    out, err = capfd.readouterr()
    no_secrets(message, logs, out, err, repr(info.value.__cause__),
               repr(info.value.__context__))


def test_credentials_file_is_used_and_never_logged(lab: XapiLab, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    vm = lab.add_vm("build", ip_delay=0.05)
    monkeypatch.delenv("FRUIX_XCPNG_USERNAME")
    monkeypatch.delenv("FRUIX_XCPNG_PASSWORD")
    cred = tmp_path / "pool.cred"
    cred.write_text(f'username = "{LAB_USER}"\npassword = "{LAB_PASSWORD}"\n')
    os.chmod(cred, 0o600)
    provider = XcpngGuestProvider()
    structlog.configure(processors=[structlog.processors.JSONRenderer()])
    try:
        guest = provider.fruix_acquire_guest(guest_request(lab, credentials_file=str(cred)))
        provider.fruix_release_guest(guest, "ok")
    finally:
        structlog.reset_defaults()
    released(lab, vm)
    out, err = capfd.readouterr()
    assert "was shut down and reverted to clean" in out + err  # the rendered lines
    no_secrets(out, err, guest)


def test_unreachable_pool(xapi_lab: XapiLab) -> None:
    xapi_lab.add_vm("build")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(GuestError, match="connection refused"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(
            xapi_lab, url=f"http://127.0.0.1:{port}/", host_key=KEY))


def test_pool_that_never_answers_times_out(xapi_lab: XapiLab) -> None:
    xapi_lab.add_vm("build")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        started = time.monotonic()
        with pytest.raises(GuestError, match="session.login_with_password got no answer "
                                             "within 0.5 s"):
            XcpngGuestProvider().fruix_acquire_guest(guest_request(
                xapi_lab, url=url, timeout=0.5, host_key=KEY))
        assert time.monotonic() - started < 3


def test_release_when_the_pool_is_gone_says_what_to_do(lab: XapiLab) -> None:
    vm = lab.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(lab))
    lab.host_gone("xcp-host1")
    with pytest.raises(GuestError) as info:
        provider.fruix_release_guest(guest, "ok")
    assert f"xe vm-shutdown uuid={vm.uuid} force=true" in str(info.value)
    assert "connection refused" in str(info.value)


def test_release_of_an_unknown_lease_is_an_error() -> None:
    guest = Guest(name="x", provider="xcpng", host="10.0.0.1", details={"vm_uuid": "u"})
    with pytest.raises(GuestError, match="no lease for VM u"):
        XcpngGuestProvider().fruix_release_guest(guest, "ok")
    XcpngGuestProvider().fruix_release_guest(Guest(name="x", provider="ssh", host="h"), "ok")


def test_config_errors_surface_before_any_call(xapi_lab: XapiLab,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    xapi_lab.add_vm("build")
    with pytest.raises(ConfigError, match="guests.xcpng.keep"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(xapi_lab, keep="maybe",
                                                               host_key=KEY))
    monkeypatch.delenv("FRUIX_XCPNG_PASSWORD")
    with pytest.raises(ConfigError, match="FRUIX_XCPNG_PASSWORD is not set"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(xapi_lab, host_key=KEY))
    assert xapi_lab.state.logins == 0


# -- TLS -------------------------------------------------------------------------------------------


@pytest.fixture
def tls_lab(tmp_path: Path, lab_credentials: dict[str, str]):  # type: ignore[no-untyped-def]
    with XapiLab(tmp_path / "tls-lab", users={LAB_USER: LAB_PASSWORD}, tls=True) as running:
        yield running


def test_tls_pinned_certificate(tls_lab: XapiLab) -> None:
    vm = tls_lab.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(tls_lab))  # pinned by default
    provider.fruix_release_guest(guest, "ok")
    released(tls_lab, vm)
    with pytest.raises(GuestError, match="does not match pinned_cert_sha256"):
        provider.fruix_acquire_guest(guest_request(tls_lab, pinned_cert_sha256="ab" * 32))
    assert vm.boots == 1


def test_tls_ca_file_default_and_insecure(tls_lab: XapiLab) -> None:
    vm = tls_lab.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    with pytest.raises(GuestError, match="TLS certificate not trusted.*ca_file or "
                                         "pinned_cert_sha256"):
        provider.fruix_acquire_guest(guest_request(tls_lab, pinned_cert_sha256=""))
    for overrides in ({"pinned_cert_sha256": "", "ca_file": str(tls_lab.certificate.cert_file)},
                      {"pinned_cert_sha256": "", "insecure": True}):
        guest = provider.fruix_acquire_guest(guest_request(tls_lab, **overrides))
        provider.fruix_release_guest(guest, "ok")
    assert vm.boots == 2 and vm.reverts == 2 and tls_lab.live_sessions() == []
