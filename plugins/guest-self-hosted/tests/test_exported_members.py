"""The public names of every module exist, and the entry points name real objects."""

from __future__ import annotations

import importlib
import importlib.metadata

import pytest

MODULES = ["fruix_guest_self_hosted", "fruix_guest_self_hosted.executor",
           "fruix_guest_self_hosted.follow", "fruix_guest_self_hosted.guestbuild",
           "fruix_guest_self_hosted.helper", "fruix_guest_self_hosted.protocol"]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name):
    module = importlib.import_module(name)
    assert module.__doc__
    for member in module.__all__:
        assert hasattr(module, member), f"{name}.{member}"


def test_entry_points():
    dist = importlib.metadata.distribution("fruix-executor-guest-self-hosted")
    points = {(ep.group, ep.name): ep for ep in dist.entry_points}
    executor = points[("fruix.executors", "guest-self-hosted")].load()
    assert executor.name == "guest-self-hosted"
    # The version in identity is the distribution's; the helper reports the same one.
    from fruix_guest_self_hosted import __version__

    assert __version__ == dist.version
    from fruix_core.plugins import load

    assert load("executor", "guest-self-hosted").version == dist.version
    helper = points[("console_scripts", "fruix-self-hosted-native-build")].load()
    assert callable(helper)
