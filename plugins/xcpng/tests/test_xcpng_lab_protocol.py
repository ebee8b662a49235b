"""The lab speaks XAPI: the real XenAPI.Session over real HTTP(S) gets XAPI's answers."""

from __future__ import annotations

import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest
import XenAPI
from fruix_xcpng.lab import LabFaults, VmFaults, XapiLab
from fruix_xcpng.lab.fixtures import LAB_PASSWORD as PASSWORD
from fruix_xcpng.lab.fixtures import LAB_USER as USER

from fruix_core.testkit import wait_for


@pytest.fixture
def session(xapi_lab: XapiLab) -> Iterator[XenAPI.Session]:
    session = XenAPI.Session(xapi_lab.url)
    session.xenapi.login_with_password(USER, PASSWORD, "1.0", "tests")
    yield session
    if session._session is not None:
        session.xenapi.session.logout()


def details(call, *args) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return list(info.value.details)


def test_wire_format_is_status_value(xapi_lab: XapiLab) -> None:
    proxy = xmlrpc.client.ServerProxy(xapi_lab.url, allow_none=True)
    answer = proxy.session.login_with_password(USER, PASSWORD, "1.0", "raw")
    assert answer["Status"] == "Success" and answer["Value"].startswith("OpaqueRef:")
    bad = proxy.session.login_with_password(USER, "wrong", "1.0", "raw")
    assert bad == {"Status": "Failure",
                   "ErrorDescription": ["SESSION_AUTHENTICATION_FAILED", USER,
                                        "Authentication failure"]}
    assert proxy.VM.get_all(answer["Value"])["Status"] == "Success"
    assert proxy.VM.get_all("OpaqueRef:bogus")["ErrorDescription"] == ["SESSION_INVALID",
                                                                        "OpaqueRef:bogus"]
    assert proxy.VM.frobnicate(answer["Value"])["ErrorDescription"][0] == \
        "MESSAGE_METHOD_UNKNOWN"
    assert proxy.VM.get_record(answer["Value"])["ErrorDescription"][0] == \
        "MESSAGE_PARAMETER_COUNT_MISMATCH"
    proxy.session.logout(answer["Value"])
    assert xapi_lab.live_sessions() == []


def test_login_failure_and_logout(xapi_lab: XapiLab) -> None:
    session = XenAPI.Session(xapi_lab.url)
    assert details(session.xenapi.login_with_password, USER, "nope", "1.0", "t")[0] == \
        "SESSION_AUTHENTICATION_FAILED"
    session.xenapi.login_with_password(USER, PASSWORD, "1.0", "t")
    assert [s.originator for s in xapi_lab.live_sessions()] == ["t"]
    session.xenapi.session.logout()
    assert xapi_lab.live_sessions() == []


def test_refs_uuids_and_errors(xapi_lab: XapiLab, session: XenAPI.Session) -> None:
    vm = xapi_lab.add_vm("build")
    api = session.xenapi
    ref = api.VM.get_by_uuid(vm.uuid)
    assert ref.startswith("OpaqueRef:") and ref == vm.ref
    record = api.VM.get_record(ref)
    assert record["uuid"] == vm.uuid and record["power_state"] == "Halted"
    assert record["guest_metrics"] == "OpaqueRef:NULL"
    assert [api.VM.get_record(r)["name_label"] for r in record["snapshots"]] == ["clean"]
    assert sorted(api.VM.get_by_name_label("build")) == [ref]  # the snapshot is named clean
    assert details(api.VM.get_by_uuid, "00000000-0000-0000-0000-000000000000") == \
        ["UUID_INVALID", "VM", "00000000-0000-0000-0000-000000000000"]
    assert details(api.VM.get_record, "OpaqueRef:nope") == ["HANDLE_INVALID", "VM",
                                                              "OpaqueRef:nope"]
    assert details(api.VM_guest_metrics.get_networks, "OpaqueRef:NULL")[0] == "HANDLE_INVALID"


def test_power_state_machine(xapi_lab: XapiLab, session: XenAPI.Session) -> None:
    ref = xapi_lab.add_vm("build", ip_delay=0).ref
    api = session.xenapi
    assert details(api.VM.clean_shutdown, ref) == ["VM_BAD_POWER_STATE", ref, "running",
                                                    "halted"]
    assert details(api.VM.hard_shutdown, ref)[0] == "VM_BAD_POWER_STATE"
    api.VM.start(ref, False, False)
    assert details(api.VM.start, ref, False, False) == ["VM_BAD_POWER_STATE", ref, "halted",
                                                         "running"]
    api.VM.pause(ref)
    assert api.VM.get_power_state(ref) == "Paused"
    assert details(api.VM.clean_shutdown, ref)[0] == "VM_BAD_POWER_STATE"
    api.VM.unpause(ref)
    api.VM.suspend(ref)
    assert api.VM.get_power_state(ref) == "Suspended"
    api.VM.resume(ref, False, False)
    api.VM.clean_shutdown(ref)
    assert api.VM.get_power_state(ref) == "Halted"
    api.VM.start(ref, True, False)
    assert api.VM.get_power_state(ref) == "Paused"
    api.VM.hard_shutdown(ref)
    assert api.VM.get_power_state(ref) == "Halted"


def test_guest_metrics_appear_after_the_delay(xapi_lab: XapiLab, session: XenAPI.Session
                                              ) -> None:
    ref = xapi_lab.add_vm("build", ip_delay=0.3).ref
    api = session.xenapi
    api.VM.start(ref, False, False)
    assert api.VM.get_guest_metrics(ref) == "OpaqueRef:NULL"
    assert wait_for(lambda: api.VM.get_guest_metrics(ref) != "OpaqueRef:NULL")
    metrics = api.VM.get_guest_metrics(ref)
    networks = api.VM_guest_metrics.get_networks(metrics)
    assert networks["0/ipv4/0"] == "127.0.0.2" and networks["1/ipv4/0"].startswith("169.254")
    api.VM.hard_shutdown(ref)
    assert api.VM.get_guest_metrics(ref) == "OpaqueRef:NULL"
    assert details(api.VM_guest_metrics.get_networks, metrics)[0] == "HANDLE_INVALID"


def test_event_from_semantics(xapi_lab: XapiLab, session: XenAPI.Session) -> None:
    ref = xapi_lab.add_vm("build", ip_delay=0.2).ref
    event_from = getattr(session.xenapi.event, "from")
    first = event_from(["vm"], "", 1.0)
    assert {e["ref"] for e in first["events"]} >= {ref}
    assert all(e["operation"] == "add" for e in first["events"])
    started = time.monotonic()
    quiet = event_from(["vm"], first["token"], 0.3)
    assert quiet["events"] == [] and time.monotonic() - started >= 0.25

    def start_later() -> None:
        time.sleep(0.2)
        other = XenAPI.Session(xapi_lab.url)
        other.xenapi.login_with_password(USER, PASSWORD, "1.0", "t2")
        other.xenapi.VM.start(ref, False, False)
        other.xenapi.session.logout()

    thread = threading.Thread(target=start_later)
    thread.start()
    woke = event_from([f"vm/{ref}"], quiet["token"], 10.0)
    thread.join()
    assert woke["events"][0]["snapshot"]["power_state"] == "Running"
    metrics = event_from(["vm_guest_metrics"], woke["token"], 5.0)
    assert metrics["events"][0]["snapshot"]["networks"]["0/ip"] == "127.0.0.2"
    assert details(event_from, ["vm"], "garbage", 0.1)[0] == "EVENT_FROM_TOKEN_PARSE_FAILURE"


def test_snapshot_and_revert_restore_the_root(xapi_lab: XapiLab, session: XenAPI.Session
                                              ) -> None:
    vm = xapi_lab.add_vm("build", snapshots=())
    root = Path(vm.root)  # type: ignore[arg-type]
    (root / "etc").mkdir()
    (root / "etc/rc.conf").write_text("sshd_enable=YES\n")
    api = session.xenapi
    snap = api.VM.snapshot(vm.ref, "before-build")
    assert api.VM.get_record(snap)["is_a_snapshot"] is True
    assert api.VM.get_record(snap)["snapshot_of"] == vm.ref
    api.VM.start(vm.ref, False, False)
    (root / "etc/rc.conf").write_text("damaged\n")
    (root / "var-junk").write_text("build leftovers")
    api.VM.revert(snap)  # also on a running VM: it ends halted
    assert api.VM.get_power_state(vm.ref) == "Halted"
    assert (root / "etc/rc.conf").read_text() == "sshd_enable=YES\n"
    assert not (root / "var-junk").exists()
    assert details(api.VM.revert, vm.ref)[0] == "VM_REVERT_FAILED"
    assert details(api.VM.start, snap, False, False)[0] == "OPERATION_NOT_ALLOWED"


def test_session_expiry_is_renewed_by_the_sdk(xapi_lab: XapiLab, session: XenAPI.Session
                                              ) -> None:
    vm = xapi_lab.add_vm("build")
    before = session._session
    assert xapi_lab.expire_sessions() == 1
    # SESSION_INVALID: the SDK logs in again with the stored login and retries.
    assert session.xenapi.VM.get_power_state(vm.ref) == "Halted"
    assert session._session != before
    assert [s.ref for s in xapi_lab.live_sessions()] == [session._session]


def test_session_ttl_fault(tmp_path: Path) -> None:
    with XapiLab(tmp_path, users={USER: PASSWORD}, booter="none",
                 faults=LabFaults(session_ttl=0.2)) as lab:
        session = XenAPI.Session(lab.url)
        session.xenapi.login_with_password(USER, PASSWORD, "1.0", "t")
        assert wait_for(lambda: lab.live_sessions() == [])
        session.xenapi.VM.get_all()  # renewed
        session.xenapi.session.logout()
        assert lab.live_sessions() == [] and lab.state.logins == 2


def test_start_fault_and_clean_shutdown_hang(xapi_lab: XapiLab, session: XenAPI.Session
                                             ) -> None:
    vm = xapi_lab.add_vm("build", faults=VmFaults(start_fails="BOOTLOADER_FAILED"))
    api = session.xenapi
    assert details(api.VM.start, vm.ref, False, False) == ["BOOTLOADER_FAILED", vm.ref]
    vm.faults.start_fails = ""
    vm.faults.clean_shutdown_hangs = True
    api.VM.start(vm.ref, False, False)
    outcome: list[str] = []

    def clean() -> None:
        other = XenAPI.Session(xapi_lab.url)
        other.xenapi.login_with_password(USER, PASSWORD, "1.0", "t")
        try:
            other.xenapi.VM.clean_shutdown(vm.ref)
        except XenAPI.Failure as exc:
            outcome.append(exc.details[0])
        finally:
            other.xenapi.session.logout()

    thread = threading.Thread(target=clean)
    thread.start()
    assert vm.shutdown_hanging.wait(10), "the clean shutdown never reached its hang"
    assert thread.is_alive() and api.VM.get_power_state(vm.ref) == "Running"
    api.VM.hard_shutdown(vm.ref)
    thread.join(5)
    assert outcome == ["VM_BAD_POWER_STATE"]
    assert api.VM.get_power_state(vm.ref) == "Halted"


def test_events_unsupported_fault(xapi_lab: XapiLab, session: XenAPI.Session) -> None:
    xapi_lab.faults.events_unsupported = True
    assert details(getattr(session.xenapi.event, "from"), ["vm"], "", 1.0)[0] == \
        "MESSAGE_METHOD_UNKNOWN"


def test_https_with_pinned_or_ca_verified_certificate(tmp_path: Path) -> None:
    import ssl

    with XapiLab(tmp_path, users={USER: PASSWORD}, booter="none", tls=True) as lab:
        assert lab.url.startswith("https://")
        context = ssl.create_default_context(cafile=str(lab.certificate.cert_file))
        session = XenAPI.Session(lab.url, transport=xmlrpc.client.SafeTransport(context=context))
        session.xenapi.login_with_password(USER, PASSWORD, "1.0", "tls")
        session.xenapi.session.logout()
        untrusted = XenAPI.Session(lab.url)
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusted.xenapi.login_with_password(USER, PASSWORD, "1.0", "tls")
        assert lab.live_sessions() == []
