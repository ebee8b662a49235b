"""The lab answers like a real pool: masters, tasks, server-side waits, cancels, resets.

Each behaviour is checked with the real ``XenAPI.Session`` over HTTP and cites
where xen-api (tags v1.249.41 for XCP-ng 8.2, v26.x for 8.3) does the same.
"""

from __future__ import annotations

import socket
import threading
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest
import XenAPI
from fruix_xapi_lab import VmFaults, XapiLab
from fruix_xapi_lab.fixtures import LAB_PASSWORD as PASSWORD
from fruix_xapi_lab.fixtures import LAB_USER as USER
from fruix_xapi_lab.fixtures import quick_faults


def details(call, *args) -> list[str]:  # type: ignore[no-untyped-def]
    with pytest.raises(XenAPI.Failure) as info:
        call(*args)
    return list(info.value.details)


def login(url: str) -> XenAPI.Session:
    session = XenAPI.Session(url)
    session.xenapi.login_with_password(USER, PASSWORD, "1.0", "tests")
    return session


@pytest.fixture
def pool(tmp_path: Path, lab_credentials: dict[str, str]) -> Iterator[XapiLab]:
    with XapiLab(tmp_path / "pool", users={USER: PASSWORD}, booter="none", hosts=2,
                 faults=quick_faults()) as running:
        yield running


# -- pool master ---------------------------------------------------------------------------


def test_member_refuses_login_naming_the_master(pool: XapiLab) -> None:
    # xen-api ocaml/xapi/xapi_session.ml (login_with_password): on a supporter,
    # Server_error (host_is_slave, [Pool_role.get_master_address ()]) before any auth.
    member = XenAPI.Session(pool.url_of("xcp-host2"))
    assert details(member.xenapi.login_with_password, USER, PASSWORD, "1.0", "t") == \
        ["HOST_IS_SLAVE", "127.0.0.1"]
    assert details(member.xenapi.login_with_password, USER, "wrong", "1.0", "t") == \
        ["HOST_IS_SLAVE", "127.0.0.1"]
    assert pool.live_sessions() == []


def test_sessions_survive_a_master_change_on_the_new_master(pool: XapiLab) -> None:
    # xen-api ocaml/xapi/session_check.ml: a non-pool session used on a supporter is
    # Non_master_login_on_slave -> HOST_IS_SLAVE [address of the pool's master].
    vm = pool.add_vm("build")
    session = login(pool.url)
    pool.change_master("xcp-host2")
    assert details(session.xenapi.VM.get_power_state, vm.ref) == ["HOST_IS_SLAVE", "127.0.1.1"]
    # the session lives in the pool database: the new master knows it
    raw = xmlrpc.client.ServerProxy(pool.url_of("xcp-host2"), allow_none=True)
    answer = raw.VM.get_power_state(session._session, vm.ref)
    assert answer == {"Status": "Success", "Value": "Halted"}
    assert raw.session.logout(session._session)["Status"] == "Success"
    assert pool.live_sessions() == []
    assert pool.state.calls_of("VM.get_power_state") == ["xcp-host1", "xcp-host2"]


# -- tasks and server-side work ----------------------------------------------------------------


def test_async_call_returns_a_task_that_can_be_cancelled(pool: XapiLab) -> None:
    # xen-api ocaml/xapi/server_helpers.ml: "Async." calls return a task at once;
    # ocaml/xapi/xapi_task.ml cancel; helpers.ml retry marks the task cancellable.
    vm = pool.add_vm("build")
    api = login(pool.url).xenapi
    hold = pool.faults.hold("VM.start")
    task = api.Async.VM.start(vm.ref, False, False)
    assert task.startswith("OpaqueRef:") and api.task.get_status(task) == "pending"
    assert hold.wait_reached()
    assert api.VM.get_record(vm.ref)["current_operations"] == {task: "start"}
    assert "cancel" in api.task.get_record(task)["allowed_operations"]
    api.task.cancel(task)
    assert pool.state.wait_for(lambda: pool.state.tasks[task].status != "pending")
    assert api.task.get_status(task) == "cancelled"
    assert api.task.get_error_info(task) == ["TASK_CANCELLED", task]
    assert vm.power_state == "Halted" and api.VM.get_record(vm.ref)["current_operations"] == {}
    assert details(api.task.cancel, task)[0] == "OPERATION_NOT_ALLOWED"
    api.task.destroy(task)
    assert details(api.task.get_status, task) == ["HANDLE_INVALID", "task", task]
    hold.release()
    done = api.Async.VM.start(vm.ref, False, False)
    assert pool.state.wait_for(lambda: pool.state.tasks[done].status != "pending")
    assert api.task.get_record(done)["status"] == "success"
    assert api.task.get_result(done) == "" and vm.power_state == "Running"


def test_a_blocking_call_completes_after_the_client_hung_up(pool: XapiLab) -> None:
    # xen-api runs a synchronous call to its end in the request's thread; the answer
    # to a client that went away is simply lost.
    vm = pool.add_vm("build")
    session = login(pool.url)
    hold = pool.faults.hold("VM.start")
    impatient = XenAPI.Session(pool.url, transport=_ShortTimeout(0.2))
    impatient._session = session._session
    with pytest.raises(TimeoutError):
        impatient.xenapi.VM.start(vm.ref, False, False)
    assert hold.wait_reached() and vm.power_state == "Halted"
    hold.release()
    assert pool.state.wait_for(lambda: vm.power_state == "Running")


class _ShortTimeout(xmlrpc.client.Transport):
    def __init__(self, timeout: float):
        super().__init__()
        self._timeout = timeout

    def make_connection(self, host):  # type: ignore[no-untyped-def]
        connection = super().make_connection(host)
        connection.timeout = self._timeout
        return connection


@pytest.mark.parametrize(("style", "shape"), [
    # v1.249.41 xapi_vm_lifecycle.ml report_concurrent_operations_error: ["VM.<op>"; ref]
    ("8.2", lambda vm, task: ["OTHER_OPERATION_IN_PROGRESS", "VM.clean_shutdown", vm]),
    # v26 (8.3): ["VM"; ref; op; task]
    ("8.3", lambda vm, task: ["OTHER_OPERATION_IN_PROGRESS", "VM", vm, "clean_shutdown",
                              task]),
])
def test_conflicting_operation_waits_on_the_server_then_fails(pool: XapiLab, style: str,
                                                              shape) -> None:  # type: ignore[no-untyped-def]
    # xen-api ocaml/xapi/helpers.ml retry: OTHER_OPERATION_IN_PROGRESS is retried
    # server-side (Policy.standard: up to 2 hours) before the caller hears of it.
    pool.faults.api_style = style
    vm = pool.add_vm("build", power_state="Running")
    api = login(pool.url).xenapi
    hold = pool.faults.hold("VM.clean_shutdown")
    first = api.Async.VM.clean_shutdown(vm.ref)
    assert hold.wait_reached()
    second = api.Async.VM.suspend(vm.ref)
    assert pool.state.wait_for(lambda: second in pool.state.waiting)
    assert api.task.get_status(second) == "pending"  # queued, not refused
    pool.faults.conflict_wait = 0  # the server gives up at its next look
    assert pool.state.wait_for(lambda: pool.state.tasks[second].status != "pending")
    assert api.task.get_error_info(second) == shape(vm.ref, first)
    hold.release()
    assert pool.state.wait_for(lambda: pool.state.tasks[first].status == "success")


def test_queued_operation_runs_once_the_other_one_ends(pool: XapiLab) -> None:
    vm = pool.add_vm("build", power_state="Running")
    api = login(pool.url).xenapi
    hold = pool.faults.hold("VM.clean_shutdown")
    first = api.Async.VM.clean_shutdown(vm.ref)
    assert hold.wait_reached()
    second = api.Async.VM.suspend(vm.ref)
    assert pool.state.wait_for(lambda: second in pool.state.waiting)
    hold.release()
    assert pool.state.wait_for(lambda: pool.state.tasks[second].status != "pending")
    assert api.task.get_status(first) == "success"
    # by then the VM is halted: xapi_vm_lifecycle.ml report_power_state_error shape
    assert api.task.get_error_info(second) == ["VM_BAD_POWER_STATE", vm.ref, "running", "halted"]


def test_hard_shutdown_joins_and_cancels_a_clean_shutdown(pool: XapiLab) -> None:
    # v1.249.41 xapi_vm_lifecycle.ml is_allowed_concurrently: hard_shutdown may run
    # beside anything but another hard_shutdown; message_forwarding.ml VM.hard_shutdown
    # cancels clean_shutdown / clean_reboot / hard_reboot tasks.
    vm = pool.add_vm("build", power_state="Running",
                     faults=VmFaults(clean_shutdown_hangs=True))
    api = login(pool.url).xenapi
    clean = api.Async.VM.clean_shutdown(vm.ref)
    assert pool.state.wait_for(lambda: clean in vm.current_operations)
    api.VM.hard_shutdown(vm.ref)
    assert pool.state.wait_for(lambda: pool.state.tasks[clean].status != "pending")
    assert api.task.get_status(clean) == "cancelled"
    assert vm.power_state == "Halted"


def test_clean_shutdown_gives_up_at_the_shutdown_limit(pool: XapiLab) -> None:
    # xen-api ocaml/xapi/xapi_globs.ml domain_shutdown_total_timeout = 1200 s;
    # the error is VM_SHUTDOWN_TIMEOUT [vm, timeout] (datamodel_errors.ml).
    assert quick_faults().shutdown_limit == 1200.0
    pool.faults.shutdown_limit = 0.1
    vm = pool.add_vm("build", power_state="Running", faults=VmFaults(clean_shutdown_hangs=True))
    api = login(pool.url).xenapi
    assert details(api.VM.clean_shutdown, vm.ref) == ["VM_SHUTDOWN_TIMEOUT", vm.ref, "0.1"]
    assert vm.power_state == "Running"


def test_failed_login_waits_like_xapi() -> None:
    # xen-api ocaml/xapi/xapi_session.ml thread_delay_and_raise_error: a failed
    # login is answered after a delay; the lab's default is XAPI's 5 s.
    from fruix_xapi_lab import LabFaults

    assert LabFaults().failed_login_delay == 5.0
    assert LabFaults().conflict_wait == 7200.0


# -- the client's silent re-send ---------------------------------------------------------------


def test_reset_after_a_call_makes_the_client_send_it_again(pool: XapiLab) -> None:
    # CPython Lib/xmlrpc/client.py Transport.request: "retry request once if cached
    # connection has gone cold" - on RemoteDisconnected / ECONNRESET the call is sent
    # again. The first VM.start was done, so the second answers VM_BAD_POWER_STATE.
    vm = pool.add_vm("build")
    api = login(pool.url).xenapi
    pool.faults.reset_after("VM.start")
    assert details(api.VM.start, vm.ref, False, False) == ["VM_BAD_POWER_STATE", vm.ref,
                                                            "halted", "running"]
    assert pool.state.calls_of("VM.start") == ["xcp-host1", "xcp-host1"]
    assert vm.power_state == "Running" and vm.boots == 1


# -- certificates --------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["8.2", "8.3"])
def test_certificate_styles(tmp_path: Path, lab_credentials: dict[str, str], style: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    with XapiLab(tmp_path / style, users={USER: PASSWORD}, booter="none", tls=True, hosts=2,
                 cert_style=style, faults=quick_faults()) as lab:
        certificate = x509.load_pem_x509_certificate(lab.certificate.cert_file.read_bytes())
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["localhost"]
        ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
        # XCP-ng 8.2's first-boot certificate: RSA, DNS names only, no IP entry
        assert ips == ([] if style == "8.2" else ["127.0.0.1"])
        assert isinstance(certificate.public_key(), rsa.RSAPublicKey) == (style == "8.2")
        assert {h.name for h in lab.hosts} == set(lab.certificates)
        api = XenAPI.Session(lab.url_of("xcp-host2"), ignore_ssl=True)
        assert details(api.xenapi.login_with_password, USER, PASSWORD, "1.0", "t")[0] == \
            "HOST_IS_SLAVE"
        with socket.create_connection(("127.0.1.1", lab.port)):
            pass


def test_connection_to_a_gone_host_is_refused(pool: XapiLab) -> None:
    session = login(pool.url)
    pool.host_gone("xcp-host1")
    with pytest.raises(OSError):
        session.xenapi.VM.get_all()
    assert threading.active_count() > 0
