"""The lab speaks XAPI: the real XenAPI.Session over real HTTP(S) gets XAPI's answers."""

from __future__ import annotations

import re
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest
import XenAPI
from fruix_xapi_lab import LabFaults, VmFaults, XapiLab
from fruix_xapi_lab.fixtures import LAB_PASSWORD as PASSWORD
from fruix_xapi_lab.fixtures import LAB_USER as USER


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


def test_guest_metrics_are_deleted_at_start_not_at_halt(xapi_lab: XapiLab,
                                                        session: XenAPI.Session) -> None:
    # xen-api ocaml/xapi/xapi_vm.ml (start): "Clear out any VM guest metrics record"
    # before the domain starts; a halted VM keeps its last metrics record.
    vm = xapi_lab.add_vm("build", ip_delay=0)
    api = session.xenapi
    agent = xapi_lab.faults.hold("agent:build")
    api.VM.start(vm.ref, False, False)
    assert agent.wait_reached(5)
    assert api.VM.get_guest_metrics(vm.ref) == "OpaqueRef:NULL"
    agent.release()
    assert xapi_lab.state.wait_for(lambda: vm.guest_metrics != "OpaqueRef:NULL")
    metrics = api.VM.get_guest_metrics(vm.ref)
    networks = api.VM_guest_metrics.get_networks(metrics)
    assert networks["0/ipv4/0"] == "127.0.0.2" and networks["1/ipv4/0"].startswith("169.254")
    assert isinstance(api.VM_guest_metrics.get_record(metrics)["last_updated"],
                      xmlrpc.client.DateTime)
    api.VM.hard_shutdown(vm.ref)
    assert api.VM.get_guest_metrics(vm.ref) == metrics  # kept at halt
    xapi_lab.faults.hold("agent:build")
    api.VM.start(vm.ref, False, False)
    assert api.VM.get_guest_metrics(vm.ref) == "OpaqueRef:NULL"  # deleted at start
    assert details(api.VM_guest_metrics.get_networks, metrics)[0] == "HANDLE_INVALID"


@pytest.mark.parametrize(("agent", "networks"), [
    # FreeBSD sysutils/xe-guest-utilities before its 2024 fix: every address of the
    # interface in one value, separated by spaces
    ("old", {"0/ip": "127.0.0.2 192.0.2.10", "1/ip": "169.254.77.1"}),
    ("empty", {"0/ip": "", "0/ipv6/0": ""}),
])
def test_agent_formats(xapi_lab: XapiLab, session: XenAPI.Session, agent: str,
                       networks: dict[str, str]) -> None:
    vm = xapi_lab.add_vm("build", ip_delay=0, agent=agent)
    session.xenapi.VM.start(vm.ref, False, False)
    assert xapi_lab.state.wait_for(lambda: vm.guest_metrics != "OpaqueRef:NULL")
    assert session.xenapi.VM_guest_metrics.get_networks(vm.guest_metrics) == networks


def test_guest_without_agent_lacks_clean_shutdown(xapi_lab: XapiLab,
                                                  session: XenAPI.Session) -> None:
    # xen-api ocaml/xapi/xapi_vm_lifecycle.ml: clean_shutdown without feature-shutdown /
    # feature-poweroff is VM_LACKS_FEATURE [vm], and not in allowed_operations.
    vm = xapi_lab.add_vm("build", ip_delay=0, agent="none")
    api = session.xenapi
    api.VM.start(vm.ref, False, False)
    record = api.VM.get_record(vm.ref)
    assert "clean_shutdown" not in record["allowed_operations"]
    assert "hard_shutdown" in record["allowed_operations"]
    assert record["resident_on"] == xapi_lab.master.ref
    assert details(api.VM.clean_shutdown, vm.ref) == ["VM_LACKS_FEATURE", vm.ref]
    assert vm.guest_metrics == "OpaqueRef:NULL"  # no agent ever reports
    api.VM.hard_shutdown(vm.ref)
    assert api.VM.get_record(vm.ref)["resident_on"] == "OpaqueRef:NULL"


def test_event_from_semantics(xapi_lab: XapiLab, session: XenAPI.Session) -> None:
    vm = xapi_lab.add_vm("build", ip_delay=0)
    ref = vm.ref
    event_from = getattr(session.xenapi.event, "from")
    first = event_from(["vm"], "", 1.0)
    # xen-api ocaml/xapi/xapi_event.ml: tokens are "%020Ld,%020Ld"
    assert re.fullmatch(r"\d{20},\d{20}", first["token"])
    assert {e["ref"] for e in first["events"]} >= {ref}
    assert all(e["operation"] == "add" for e in first["events"])
    quiet = event_from(["vm"], first["token"], 0.05)
    assert quiet["events"] == [] and quiet["token"] == first["token"]

    def start() -> None:
        other = XenAPI.Session(xapi_lab.url)
        other.xenapi.login_with_password(USER, PASSWORD, "1.0", "t2")
        other.xenapi.VM.start(ref, False, False)
        other.xenapi.session.logout()

    # the VM starts once our event.from call has reached the lab
    xapi_lab.faults.on("call:event.from", lambda: threading.Thread(target=start).start())
    woke = event_from([f"vm/{ref}"], quiet["token"], 10.0)
    assert woke["events"][0]["class"] == "vm" and woke["events"][0]["ref"] == ref
    assert xapi_lab.state.wait_for(lambda: vm.guest_metrics != "OpaqueRef:NULL")
    now = event_from(["vm"], "", 0.0)["token"]
    xapi_lab.state.publish_networks(vm, {"0/ip": "127.0.0.2 192.0.2.7"})  # the agent again
    own = event_from([f"vm_guest_metrics/{vm.guest_metrics}"], now, 5.0)
    assert own["events"][-1]["snapshot"]["networks"]["0/ip"] == "127.0.0.2 192.0.2.7"
    other = xapi_lab.add_vm("other", ip_delay=0)
    xapi_lab.state.call("start", other.ref, False, False)
    assert xapi_lab.state.wait_for(lambda: other.guest_metrics != "OpaqueRef:NULL")
    # a subscription to one metrics record does not see another VM's
    assert event_from([f"vm_guest_metrics/{vm.guest_metrics}"], own["token"], 0.05)[
        "events"] == []
    assert details(event_from, ["vm"], "garbage", 0.1)[0] == "EVENT_FROM_TOKEN_PARSE_FAILURE"


def test_snapshot_and_revert_restore_the_root(xapi_lab: XapiLab, session: XenAPI.Session
                                              ) -> None:
    vm = xapi_lab.add_vm("build", snapshots=(), ip_delay=0)
    root = Path(vm.root)  # type: ignore[arg-type]
    (root / "etc").mkdir()
    (root / "etc/rc.conf").write_text("sshd_enable=YES\n")
    api = session.xenapi
    snap = api.VM.snapshot(vm.ref, "before-build")
    record = api.VM.get_record(snap)
    # xen-api: a snapshot is a template too, and dates are XML-RPC dateTime values
    assert record["is_a_snapshot"] is True and record["is_a_template"] is True
    assert record["snapshot_of"] == vm.ref
    assert isinstance(record["snapshot_time"], xmlrpc.client.DateTime)
    api.VM.start(vm.ref, False, False)
    (vif,) = api.VM.get_VIFs(vm.ref)
    mac = api.VIF.get_MAC(vif)
    (root / "etc/rc.conf").write_text("damaged\n")
    (root / "var-junk").write_text("build leftovers")
    api.VM.revert(snap)  # also on a running VM: it ends halted
    assert api.VM.get_power_state(vm.ref) == "Halted"
    assert (root / "etc/rc.conf").read_text() == "sshd_enable=YES\n"
    assert not (root / "var-junk").exists()
    # xen-api xapi_vm_snapshot.ml revert: the VIFs are recreated from the snapshot's,
    # with their MAC addresses (a DHCP reservation by MAC survives every revert)
    (new_vif,) = api.VM.get_VIFs(vm.ref)
    assert new_vif != vif and api.VIF.get_MAC(new_vif) == mac
    assert details(api.VIF.get_MAC, vif)[0] == "HANDLE_INVALID"
    # xen-api ocaml/xapi-consts/api_errors.ml: only_revert_snapshot, no parameters;
    # xapi_vm_lifecycle.ml check_snapshot: VM_IS_SNAPSHOT [vm, op]
    assert details(api.VM.revert, vm.ref) == ["REVERT_ONLY_ALLOWED_ON_SNAPSHOT"]
    assert details(api.VM.start, snap, False, False) == ["VM_IS_SNAPSHOT", snap, "start"]


def test_checkpoint_reverts_to_suspended(xapi_lab: XapiLab, session: XenAPI.Session) -> None:
    vm = xapi_lab.add_vm("build", snapshots=(), checkpoints=("with-memory",))
    api = session.xenapi
    (checkpoint,) = vm.snapshots
    assert api.VM.get_power_state(checkpoint) == "Suspended"
    api.VM.revert(checkpoint)
    assert api.VM.get_power_state(vm.ref) == "Suspended"
    api.VM.hard_shutdown(vm.ref)
    assert api.VM.get_power_state(vm.ref) == "Halted"


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
        time.sleep(0.3)
        assert lab.live_sessions() == []
        session.xenapi.VM.get_all()  # renewed
        session.xenapi.session.logout()
        assert lab.live_sessions() == [] and lab.state.logins == 2


def test_start_fault(xapi_lab: XapiLab, session: XenAPI.Session) -> None:
    vm = xapi_lab.add_vm("build", faults=VmFaults(start_fails="BOOTLOADER_FAILED"))
    assert details(session.xenapi.VM.start, vm.ref, False, False) == ["BOOTLOADER_FAILED",
                                                                       vm.ref]
    assert vm.power_state == "Halted" and vm.current_operations == {}


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
