"""Pytest fixtures for tests against the XAPI lab (for this plugin and its users).

Import them into a ``conftest.py``::

    from fruix_xcpng.lab.fixtures import lab, lab_credentials, xapi_lab  # noqa: F401

``lab`` has real sshd guests, ``xapi_lab`` only the XAPI side. Both accept the
login :data:`LAB_USER` / :data:`LAB_PASSWORD`, which ``lab_credentials`` also
puts in the provider's default environment variables.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fruix_core.api import CancelToken, GuestRequest
from fruix_xcpng.lab import LabFaults, XapiLab

__all__ = ["LAB_PASSWORD", "LAB_USER", "fast_settings", "guest_request", "lab",
           "lab_credentials", "quick_faults", "xapi_lab"]

#: The lab's login; tests assert it never shows up in logs or messages.
LAB_USER = "lab-operator-7f3a"
LAB_PASSWORD = "pw-Zq9!x-never-log-me"


def quick_faults(**overrides: Any) -> LabFaults:
    """XAPI's server-side waits, shortened for tests (a failed login: 0.2 s, not 5 s)."""
    values: dict[str, Any] = {"failed_login_delay": 0.2}
    values.update(overrides)
    return LabFaults(**values)


@pytest.fixture
def lab_credentials(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The lab login in ``FRUIX_XCPNG_USERNAME`` / ``FRUIX_XCPNG_PASSWORD``."""
    monkeypatch.setenv("FRUIX_XCPNG_USERNAME", LAB_USER)
    monkeypatch.setenv("FRUIX_XCPNG_PASSWORD", LAB_PASSWORD)
    return {"FRUIX_XCPNG_USERNAME": LAB_USER, "FRUIX_XCPNG_PASSWORD": LAB_PASSWORD}


@pytest.fixture
def lab(tmp_path: Path, lab_credentials: dict[str, str]) -> Iterator[XapiLab]:
    """A started lab with real sshd guests; add VMs with ``lab.add_vm``."""
    with XapiLab(tmp_path / "lab", users={LAB_USER: LAB_PASSWORD},
                 faults=quick_faults()) as running:
        yield running


@pytest.fixture
def xapi_lab(tmp_path: Path, lab_credentials: dict[str, str]) -> Iterator[XapiLab]:
    """A started lab whose VMs have no guest services (XAPI semantics only)."""
    with XapiLab(tmp_path / "xapi-lab", users={LAB_USER: LAB_PASSWORD},
                 booter="none", faults=quick_faults()) as running:
        yield running


def fast_settings(**overrides: Any) -> dict[str, Any]:
    """Short provider timeouts, for tests."""
    values: dict[str, Any] = {"timeout": 5, "ip_timeout": 5, "ssh_timeout": 5,
                              "shutdown_timeout": 3, "poll_interval": 0.1}
    values.update(overrides)
    return values


def guest_request(lab: XapiLab, vm: str = "build", *, cancel: CancelToken | None = None,
                  **overrides: Any) -> GuestRequest:
    """A :class:`GuestRequest` reaching ``vm`` in ``lab`` with fast timeouts."""
    return GuestRequest(provider="xcpng", run_id="test-run",
                        settings=lab.provider_settings(vm, **fast_settings(**overrides)),
                        config_file="/etc/fruix/test.toml", cancel=cancel)
