"""Choosing the guest's address from VM_guest_metrics.networks."""

from __future__ import annotations

import ipaddress

from fruix_xcpng.network import candidate_addresses, pick_address
from hypothesis import given
from hypothesis import strategies as st


def test_ipv4_first_link_local_skipped() -> None:
    networks = {"0/ipv6/0": "fe80::1", "0/ipv6/1": "2001:db8::5", "1/ipv4/0": "169.254.3.4",
                "0/ipv4/0": "10.0.0.7"}
    assert candidate_addresses(networks) == ["10.0.0.7", "2001:db8::5"]


def test_preferred_device_wins() -> None:
    networks = {"0/ipv4/0": "10.0.0.7", "1/ipv4/0": "192.168.5.9", "1/ipv6/0": "2001:db8::9"}
    assert pick_address(networks, "1") == "192.168.5.9"
    assert pick_address(networks) == "10.0.0.7"
    assert pick_address(networks, "7") == "10.0.0.7"  # absent device: any usable one


def test_space_separated_addresses_of_the_old_freebsd_agent() -> None:
    # FreeBSD ports sysutils/xe-guest-utilities (xe-update-guest-attrs) before its 2024
    # fix wrote every address of an interface into one value, separated by spaces.
    assert candidate_addresses({"0/ip": "10.0.0.5 10.0.0.6"}) == ["10.0.0.5", "10.0.0.6"]
    assert candidate_addresses({"0/ip": "fe80::1 10.0.0.6  2001:db8::2"}) == [
        "10.0.0.6", "2001:db8::2"]
    assert candidate_addresses({"0/ip": "", "1/ip": "   "}) == []


def test_legacy_ip_key_and_garbage() -> None:
    assert pick_address({"0/ip": "10.1.1.1"}) == "10.1.1.1"
    assert pick_address({"0/ipv4/0": "not-an-ip", "x/ipv4/0": "10.0.0.1", "0/mac": "aa"}) is None
    assert pick_address({}) is None
    assert pick_address({"0/ipv4/0": "0.0.0.0", "0/ipv6/0": "fe80::1%eth0"}) is None


def test_only_link_local_means_no_address_yet() -> None:
    assert pick_address({"0/ipv4/0": "169.254.10.1", "0/ipv6/0": "fe80::2"}) is None


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
keys = st.builds(lambda d, fam, i: f"{d}/{fam}/{i}", st.integers(0, 3),
                 st.sampled_from(["ipv4", "ipv6"]), st.integers(0, 2))


@given(st.dictionaries(keys, addresses, max_size=8), st.sampled_from(["", "0", "1", "2"]))
def test_candidates_are_never_link_local_and_honour_the_device(networks: dict[str, str],
                                                               device: str) -> None:
    found = candidate_addresses(networks, device)
    assert len(found) == len(set(found))
    for text in found:
        address = ipaddress.ip_address(text)
        assert not address.is_link_local and not address.is_unspecified
    on_device = [a for k, a in networks.items() if k.split("/")[0] == device and a in found]
    if device and on_device:
        assert found[0] in on_device
    v4 = [a for a in found if ipaddress.ip_address(a).version == 4]
    if v4 and not (device and on_device):
        assert ipaddress.ip_address(found[0]).version == 4
