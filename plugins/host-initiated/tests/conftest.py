"""Fixtures for the host-initiated executor tests: the core's test kit, used directly."""

from __future__ import annotations

from fruix_core.testkit.guest import fruix_guest, fruix_guest_root  # noqa: F401
from fruix_core.testkit.sshd import fruix_sshd, fruix_sshd_shared  # noqa: F401
