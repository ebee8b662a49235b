"""The plugin as the core sees it: discovery, cheap import, hooks, facade."""

from __future__ import annotations

import subprocess
import sys

import fruix_xcpng
import fruix_xcpng.lab
from fruix_xcpng import XcpngGuestProvider

from fruix_core.hookspecs import GuestProviderSpec
from fruix_core.plugins import discover, load_plugin, make_plugin_manager


def test_importing_the_plugin_imports_neither_xenapi_nor_paramiko() -> None:
    code = ("import sys, fruix_xcpng, fruix_xcpng.settings; "
            "print(sorted(m for m in ('XenAPI', 'paramiko', 'cryptography') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_discovered_under_its_entry_point_name() -> None:
    infos = {info.name: info for info in discover(["guest-provider"])}
    assert infos["xcpng"].error is None
    assert infos["xcpng"].distribution == "fruix-guest-xcpng"
    assert isinstance(load_plugin("guest-provider", "xcpng"), XcpngGuestProvider)


def test_implements_the_guest_provider_hooks() -> None:
    manager = make_plugin_manager(XcpngGuestProvider())
    names = {impl.plugin_name for impl in manager.pm.hook.fruix_acquire_guest.get_hookimpls()}
    assert names
    for hook in ("fruix_acquire_guest", "fruix_release_guest"):
        assert hasattr(GuestProviderSpec, hook) and hasattr(XcpngGuestProvider, hook)


def test_facades_export_what_they_name() -> None:
    for module in (fruix_xcpng, fruix_xcpng.lab):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_answers_only_for_its_own_provider_name() -> None:
    from fruix_core.api import GuestRequest

    # Nothing is contacted: the provider declines before reading any setting.
    request = GuestRequest(provider="ssh", run_id="r1", settings={"bogus": 1})
    assert XcpngGuestProvider().fruix_acquire_guest(request) is None
