"""The lab's power-state machine against a model of XAPI's, under random call sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fruix_xapi_lab.state import ALLOWED_STATES, NULL_REF, LabVM, XapiError, XapiState
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

#: operation -> (power states it is allowed in, state afterwards)
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "start": (("Halted",), "Running"),
    "start_paused": (("Halted",), "Paused"),
    "clean_shutdown": (("Running",), "Halted"),
    "hard_shutdown": (("Running", "Paused", "Suspended"), "Halted"),
    "pause": (("Running",), "Paused"),
    "unpause": (("Paused",), "Running"),
    "suspend": (("Running",), "Suspended"),
    "resume": (("Suspended",), "Running"),
    "revert": (("Halted", "Running", "Paused", "Suspended"), "Halted"),
}


class PowerStates(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = XapiState(users={"u": "p"}, snapshot_dir=None)
        self.vm = self.state.add_vm(LabVM(name="build", ip_delay=0.0))
        self.snapshot = self.state.call("snapshot", self.vm.ref, "clean")
        self.expected = "Halted"

    def call(self, operation: str) -> None:
        ref = self.vm.ref
        call = self.state.call
        calls: dict[str, Any] = {
            "start": lambda: call("start", ref, False, False),
            "start_paused": lambda: call("start", ref, True, False),
            "clean_shutdown": lambda: call("clean_shutdown", ref),
            "hard_shutdown": lambda: call("hard_shutdown", ref),
            "pause": lambda: call("pause", ref),
            "unpause": lambda: call("unpause", ref),
            "suspend": lambda: call("suspend", ref),
            "resume": lambda: call("resume", ref, False, False),
            "revert": lambda: call("revert", self.snapshot),
        }
        allowed, after = TRANSITIONS[operation]
        try:
            calls[operation]()
        except XapiError as exc:
            assert self.expected not in allowed, f"{operation} refused in {self.expected}"
            # xen-api xapi_vm_lifecycle.ml report_power_state_error: the allowed
            # states in lower case, comma-joined, then the actual one
            assert exc.description == ["VM_BAD_POWER_STATE", ref,
                                       ", ".join(s.lower() for s in ALLOWED_STATES[
                                           "start" if operation == "start_paused"
                                           else operation]),
                                       self.expected.lower()]
        else:
            assert self.expected in allowed, f"{operation} accepted in {self.expected}"
            self.expected = after

    @rule(operation=st.sampled_from(sorted(TRANSITIONS)))
    def operate(self, operation: str) -> None:
        self.call(operation)

    @rule(ref=st.sampled_from(["OpaqueRef:NULL", "OpaqueRef:nope", ""]))
    def bad_handle(self, ref: str) -> None:
        try:
            self.state.call("start", ref, False, False)
        except XapiError as exc:
            assert exc.description == ["HANDLE_INVALID", "VM", ref]
        else:
            raise AssertionError("a bad reference was accepted")

    @invariant()
    def power_state_matches_the_model(self) -> None:
        assert self.vm.power_state == self.expected
        record = self.state.get_record(self.vm.ref)
        assert record["power_state"] == self.expected
        assert record["current_operations"] == {}
        assert (record["resident_on"] != NULL_REF) == (self.expected in ("Running", "Paused"))

    def teardown(self) -> None:
        self.state.shutdown()


PowerStates.TestCase.settings = settings(max_examples=40, stateful_step_count=25,
                                         deadline=None)
TestPowerStates = PowerStates.TestCase


def test_revert_restores_the_snapshot_copy_of_the_root(tmp_path: Path) -> None:
    state = XapiState(users={}, snapshot_dir=tmp_path / "snaps")
    vm = state.add_vm(LabVM(name="x", root=tmp_path / "root"))
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "f").write_text("1")
    snap = state.call("snapshot", vm.ref, "s")
    (tmp_path / "root" / "f").write_text("2")
    state.call("revert", snap)
    assert (tmp_path / "root" / "f").read_text() == "1"
    assert state.get_record(snap)["snapshot_of"] == vm.ref
