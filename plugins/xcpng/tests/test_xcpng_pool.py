"""The provider on a real-like pool: masters move, work is cancelled server-side, guests
without an agent, old agent formats, re-sent calls, shielded release and TLS per host.

Everything goes through the real ``XenAPI.Session`` against the lab; the
semantics the lab models are cited in test_xcpng_lab_pool.py.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fruix_xapi_lab import LabVM, VmFaults, XapiLab
from fruix_xapi_lab.fixtures import LAB_PASSWORD, LAB_USER, guest_request, quick_faults
from fruix_xcpng import XcpngGuestProvider
from fruix_xcpng.lifecycle import release_vm
from fruix_xcpng.settings import load_credentials, parse_settings
from structlog.testing import capture_logs

from fruix_core.errors import Cancelled, GuestError
from fruix_core.model import CancelToken


def released(lab: XapiLab, vm: LabVM, reverts: int = 1, orphans: int = 0) -> None:
    """Halted, reverted, no XAPI session left, no task pending or left undestroyed.

    ``orphans``: finished tasks whose reference never reached us (a lost answer);
    XAPI removes them after 65 minutes (xen-api db_gc_util.ml timeout_tasks).
    """
    assert lab.state.wait_for(lambda: vm.power_state == "Halted" and vm.reverts == reverts)
    assert lab.live_sessions() == []
    left = [t for t in lab.state.tasks.values() if t.visible]
    assert all(t.status != "pending" for t in left) and len(left) == orphans


@pytest.fixture
def pool(tmp_path: Path, lab_credentials: dict[str, str]) -> Iterator[XapiLab]:
    with XapiLab(tmp_path / "pool", users={LAB_USER: LAB_PASSWORD}, hosts=2,
                 faults=quick_faults()) as running:
        yield running


def in_thread(work: Any) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


# -- following the master ---------------------------------------------------------------------


def test_a_run_through_a_pool_member_follows_the_master(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    with capture_logs() as logs:
        guest = provider.fruix_acquire_guest(guest_request(pool, url=pool.url_of("xcp-host2")))
        provider.fruix_release_guest(guest, "ok")
    released(pool, vm)
    assert any(e["event"] == "following the pool master" for e in logs)
    assert set(pool.state.calls_of("Async.VM.start")) == {"xcp-host1"}


def test_master_change_during_the_build_still_releases(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(pool))
    pool.change_master("xcp-host2")  # e.g. pool.designate_new_master during the build
    provider.fruix_release_guest(guest, "ok")
    released(pool, vm)
    assert pool.state.calls_of("Async.VM.revert") == ["xcp-host2"]


def test_master_change_just_before_logout_still_logs_out(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    pool.faults.on("call:session.logout", lambda: pool.change_master("xcp-host2"))
    guest = provider.fruix_acquire_guest(guest_request(pool))
    assert pool.live_sessions() == []
    assert pool.state.calls_of("session.logout") == ["xcp-host1", "xcp-host2"]
    provider.fruix_release_guest(guest, "ok")
    released(pool, vm)


def test_master_change_in_the_middle_of_release(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(pool))
    # the master moves just as the clean shutdown is asked for: that call answers
    # HOST_IS_SLAVE (nothing done) and must be made again on the new master
    pool.faults.on("call:Async.VM.clean_shutdown", lambda: pool.change_master("xcp-host2"))
    provider.fruix_release_guest(guest, "ok")
    released(pool, vm)
    assert pool.state.calls_of("Async.VM.clean_shutdown") == ["xcp-host1", "xcp-host2"]


# -- server-side work is cancelled ------------------------------------------------------------


def test_interrupt_during_a_slow_start_cancels_the_task(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    hold = pool.faults.hold("VM.start")
    cancel = CancelToken()
    in_thread(lambda: hold.wait_reached() and cancel.cancel("interrupted"))
    with pytest.raises(Cancelled, match="task was cancelled"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(pool, cancel=cancel))
    assert len(pool.state.cancelled) == 1  # task.cancel reached the pool
    assert vm.boots == 0
    released(pool, vm)


def test_start_deadline_cancels_the_task(pool: XapiLab) -> None:
    vm = pool.add_vm("build")
    pool.faults.hold("VM.start")
    with pytest.raises(GuestError, match="VM.start did not finish within 1 s; the task "
                                         "was cancelled"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(pool, timeout=1,
                                                               shutdown_timeout=1))
    assert len(pool.state.cancelled) == 1 and vm.boots == 0
    released(pool, vm)


def test_vm_busy_with_someone_elses_operation_is_refused_untouched(pool: XapiLab) -> None:
    vm = pool.add_vm("build")
    hold = pool.faults.hold("VM.start")
    in_thread(lambda: pool.state.call("start", vm.ref, False, False))
    assert hold.wait_reached()
    with pytest.raises(GuestError, match="busy with another operation \\(start\\)"):
        XcpngGuestProvider().fruix_acquire_guest(guest_request(pool))
    assert pool.state.calls_of("Async.VM.start") == [] and pool.state.cancelled == []
    hold.release()
    assert pool.state.wait_for(lambda: vm.power_state == "Running")
    assert vm.reverts == 0 and pool.live_sessions() == []


# -- calls whose answer was lost are not re-sent blindly --------------------------------------


@pytest.mark.parametrize("method", ["Async.VM.start", "Async.VM.clean_shutdown",
                                    "Async.VM.revert"])
def test_lost_answer_while_the_pool_still_works_adopts_its_task(pool: XapiLab,
                                                                method: str) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    hold = pool.faults.hold(method.removeprefix("Async."))
    pool.faults.reset_after(method)
    # the operation goes on once the provider asks about the task it found in the VM's
    # current_operations
    pool.faults.on(f"answer:{method}",
                   lambda: pool.faults.on("call:task.get_record", hold.release))
    guest = provider.fruix_acquire_guest(guest_request(pool))
    provider.fruix_release_guest(guest, "ok")
    released(pool, vm)
    assert pool.state.calls_of(method) == ["xcp-host1"]  # sent once, never twice
    assert vm.boots == 1


@pytest.mark.parametrize("method", ["Async.VM.start", "Async.VM.clean_shutdown",
                                    "Async.VM.revert"])
def test_lost_answer_after_the_pool_finished(pool: XapiLab, method: str) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    pool.faults.reset_after(method)
    name = method
    pool.faults.on(f"answer:{method}", lambda: pool.state.wait_for(
        lambda: all(t.status != "pending" for t in pool.state.tasks.values()
                    if t.name_label == name)))
    guest = provider.fruix_acquire_guest(guest_request(pool))
    provider.fruix_release_guest(guest, "ok")
    if method == "Async.VM.revert":
        # a finished revert leaves no trace to tell it from a lost call: it is sent
        # again, which is harmless (reverting twice gives the same VM)
        released(pool, vm, reverts=2, orphans=1)
        assert pool.state.calls_of(method) == ["xcp-host1", "xcp-host1"]
    else:
        # the VM is in the state asked for: done, not sent again
        released(pool, vm, orphans=1)
        assert pool.state.calls_of(method) == ["xcp-host1"]
    assert vm.boots == 1


# -- finding the guest ------------------------------------------------------------------------


def test_guest_without_agent_builds_with_a_declared_address(pool: XapiLab) -> None:
    vm = pool.add_vm("build", agent="none")
    provider = XcpngGuestProvider()
    with capture_logs() as logs:
        guest = provider.fruix_acquire_guest(guest_request(pool, address=vm.address,
                                                           ip_timeout=0.5))
        assert (guest.host, guest.port) == (vm.address, vm.ssh_port)
        provider.fruix_release_guest(guest, "ok")
    released(pool, vm)
    # no clean shutdown is offered without the agent: forced off, not refused
    assert pool.state.calls_of("Async.VM.clean_shutdown") == []
    assert any("offers no clean shutdown" in e["event"] for e in logs)


def test_guest_without_agent_and_no_address_says_what_to_do(pool: XapiLab) -> None:
    vm = pool.add_vm("build", agent="none")
    with pytest.raises(GuestError) as info:
        XcpngGuestProvider().fruix_acquire_guest(guest_request(pool, ip_timeout=0.3))
    message = str(info.value)
    assert "xenguest_enable" in message and "guests.xcpng.address" in message
    assert "every 60 s" in message
    released(pool, vm)


def test_old_agent_with_space_separated_addresses_builds(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05, agent="old")
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(pool))
    assert guest.host == vm.address
    provider.fruix_release_guest(guest, "ok")
    released(pool, vm)


def test_waiting_for_the_address_watches_only_this_vm(pool: XapiLab) -> None:
    other = pool.add_vm("other", ip_delay=0)
    pool.state.call("start", other.ref, False, False)
    vm = pool.add_vm("build", ip_delay=0.05)
    agent = pool.faults.hold("agent:build")
    provider = XcpngGuestProvider()

    def agents() -> None:
        # once the provider waits for its VM, another VM's agent reports, then ours
        assert agent.wait_reached() and pool.state.wait_for(lambda: any(
            s[0] == f"vm/{vm.ref}" for s in pool.state.subscriptions))
        pool.state.publish_networks(other, {"0/ip": "192.0.2.99"})
        agent.release()

    in_thread(agents)
    guest = provider.fruix_acquire_guest(guest_request(pool))
    assert guest.host == vm.address
    subscriptions = [s for s in pool.state.subscriptions if not any(c.startswith("task/")
                                                                     for c in s)]
    assert subscriptions and all("vm_guest_metrics" not in s for s in subscriptions)
    assert all(c in (f"vm/{vm.ref}", f"vm_guest_metrics/{vm.guest_metrics}")
               or c.startswith("vm_guest_metrics/") for s in subscriptions for c in s)
    assert all(c != f"vm/{other.ref}" for s in subscriptions for c in s)
    provider.fruix_release_guest(guest, "ok")
    released(pool, vm)


def test_checkpoint_snapshot_ends_halted(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05, snapshots=(), checkpoints=("clean",))
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(pool))
    provider.fruix_release_guest(guest, "ok")
    released(pool, vm)


# -- release is shielded ----------------------------------------------------------------------


def _interrupt_when_logged(logs: list[dict[str, Any]], count: int, hold: Any) -> None:
    """Ctrl-C the main thread ``count`` times while the shutdown is held, then let it go."""
    assert hold.wait_reached()
    for n in range(count):
        _thread.interrupt_main()
        # the main thread has seen this interrupt once it said so
        assert _wait(lambda n=n: sum("still releasing" in e["event"] or
                                     "ABANDONED" in e["event"] for e in logs) > n)
    hold.release()


def _wait(condition: Any, timeout: float = 10.0) -> bool:
    """Wait for ``condition()`` with a deadline (checked every 20 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.02)
    return True


def test_second_interrupt_during_release_still_ends_halted_and_reverted(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(pool))
    hold = pool.faults.hold("VM.clean_shutdown")
    with capture_logs() as logs:
        worker = in_thread(lambda: _interrupt_when_logged(logs, 1, hold))
        try:
            provider.fruix_release_guest(guest, "interrupted")
        except KeyboardInterrupt:  # pragma: no cover - the shield is broken
            pytest.fail("a Ctrl-C during release abandoned it")
        worker.join(10)
    released(pool, vm)
    messages = [e["event"] for e in logs]
    assert any(m.startswith(f"still releasing VM 'build' ({vm.uuid}): shutting down VM build")
               for m in messages)
    assert f"VM 'build' ({vm.uuid}) was shut down and reverted to clean" in messages


def test_third_interrupt_abandons_release_with_one_line_naming_the_vm(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(pool))
    hold = pool.faults.hold("VM.clean_shutdown")
    with capture_logs() as logs:
        in_thread(lambda: _interrupt_when_logged(logs, 2, hold))
        with pytest.raises(GuestError) as info:
            provider.fruix_release_guest(guest, "interrupted")
    message = str(info.value)
    assert "\n" not in message and "ABANDONED while shutting down VM build" in message
    assert f"xe vm-shutdown uuid={vm.uuid} force=true" in message
    # the worker was not killed: the pool still finishes what it was asked
    assert pool.state.wait_for(lambda: vm.reverts == 1)


# -- releasing a kept VM ----------------------------------------------------------------------


def test_release_vm_brings_a_kept_vm_back(pool: XapiLab) -> None:
    vm = pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    request = guest_request(pool, keep="always")
    guest = provider.fruix_acquire_guest(request)
    provider.fruix_release_guest(guest, "ok")
    assert vm.power_state == "Running" and vm.reverts == 0
    settings = parse_settings(request.settings, file=request.config_file)
    lease = release_vm(settings, load_credentials(settings))
    assert lease.released
    released(pool, vm)


# -- TLS per host -----------------------------------------------------------------------------


@pytest.fixture
def tls_pool(tmp_path: Path, lab_credentials: dict[str, str]) -> Iterator[XapiLab]:
    with XapiLab(tmp_path / "tls-pool", users={LAB_USER: LAB_PASSWORD}, hosts=2, tls=True,
                 cert_style="8.2", faults=quick_faults()) as running:
        yield running


def _bundle(lab: XapiLab, path: Path) -> str:
    path.write_text("".join(c.pem for c in lab.certificates.values()))
    return str(path)


def test_ca_file_with_an_ip_url_and_a_dns_only_certificate(tls_pool: XapiLab,
                                                           tmp_path: Path) -> None:
    vm = tls_pool.add_vm("build", ip_delay=0.05)
    provider = XcpngGuestProvider()
    ca = _bundle(tls_pool, tmp_path / "pool-ca.pem")
    with pytest.raises(GuestError) as info:
        provider.fruix_acquire_guest(guest_request(tls_pool, pinned_cert_sha256="", ca_file=ca))
    assert "trusted by ca_file but has no IP address entry for 127.0.0.1 (it names " \
           "localhost); use that name in url, or list it in tls_server_names" in str(info.value)
    assert vm.boots == 0
    by_name = f"https://localhost:{tls_pool.port}/"
    for overrides in ({"url": by_name},
                      {"tls_server_names": ["localhost", "xcp-host2.lab"]}):
        guest = provider.fruix_acquire_guest(guest_request(tls_pool, pinned_cert_sha256="",
                                                           ca_file=ca, **overrides))
        provider.fruix_release_guest(guest, "ok")
    released(tls_pool, vm, reverts=2)


def test_pins_for_every_host_survive_a_master_change(tls_pool: XapiLab) -> None:
    vm = tls_pool.add_vm("build", ip_delay=0.05)
    request = guest_request(tls_pool)
    assert len(request.settings["pinned_cert_sha256"]) == 2
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(request)
    tls_pool.change_master("xcp-host2")
    provider.fruix_release_guest(guest, "ok")
    released(tls_pool, vm)


def test_the_new_masters_certificate_is_learned_from_the_pool(tls_pool: XapiLab) -> None:
    vm = tls_pool.add_vm("build", ip_delay=0.05)
    first_only = tls_pool.certificates["xcp-host1"].sha256
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(tls_pool, pinned_cert_sha256=first_only))
    tls_pool.change_master("xcp-host2")
    provider.fruix_release_guest(guest, "ok")  # host2's pin came from host.get_server_certificate
    released(tls_pool, vm)
    # without that, a second host with an unknown certificate is refused
    tls_pool.change_master("xcp-host1")
    with pytest.raises(GuestError, match="does not match pinned_cert_sha256"):
        provider.fruix_acquire_guest(guest_request(
            tls_pool, url=tls_pool.url_of("xcp-host2"), pinned_cert_sha256=first_only))


def test_a_vm_without_agent_is_never_cleanly_shut_down_by_mistake(pool: XapiLab) -> None:
    vm = pool.add_vm("build", agent="none", faults=VmFaults())
    provider = XcpngGuestProvider()
    guest = provider.fruix_acquire_guest(guest_request(pool, address=vm.address))
    provider.fruix_release_guest(guest, "failed")
    released(pool, vm)


def test_guests_release_for_a_kept_vm(pool: XapiLab, tmp_path: Path,
                                       lab_credentials: dict[str, str]) -> None:
    import os
    import subprocess
    import sys

    vm = pool.add_vm("build", ip_delay=0.05)
    pool.state.call("start", vm.ref, False, False)  # kept running by an earlier run
    config = tmp_path / "fruix.toml"
    config.write_text(pool.fruix_config("build", url=pool.url_of("xcp-host2")))
    command = [sys.executable, "-m", "fruix_core.cli.main", "guests", "release",
               "--config", str(config)]
    env = {**os.environ, **lab_credentials}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"VM 'build' ({vm.uuid}): halted and reverted to clean\n"
    released(pool, vm)
    assert LAB_PASSWORD not in done.stdout + done.stderr
    config.write_text(config.read_text().replace('snapshot = "clean"', 'snapshot = "gone"'))
    failed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert failed.returncode == 3 and "has no snapshot 'gone'" in failed.stderr
    config.write_text("[guests.xcpng]\nkeep = \"maybe\"\n")
    bad = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "guests.xcpng" in bad.stderr


@pytest.mark.parametrize(("url", "address", "expected"), [
    ("https://xcp-host2.example:443/", "10.0.0.1", "https://10.0.0.1:443/"),
    ("https://xcp-host2.example", "xcp-host1.example", "https://xcp-host1.example/"),
    ("http://127.0.1.1:8080/", "fd00::1", "http://[fd00::1]:8080/"),
])
def test_master_url_keeps_scheme_and_port(url: str, address: str, expected: str) -> None:
    from fruix_xcpng.xapi import master_url

    assert master_url(url, address) == expected


@pytest.mark.parametrize("address", ["evil.example/x?y=", "a@b", "", "host name"])
def test_master_address_from_the_pool_must_be_a_host(address: str) -> None:
    from fruix_xcpng.xapi import master_url

    with pytest.raises(GuestError, match="neither an IP address nor a host name"):
        master_url("https://xcp-host2.example/", address)
