"""Pick the guest's address from what its agent reports.

``VM_guest_metrics.networks`` maps keys such as ``0/ip``, ``0/ipv4/0``,
``0/ipv6/1`` (device number / family / index) to addresses. We take every
IPv4 entry, then every IPv6 one, skip link-local (169.254.0.0/16, fe80::/10),
unspecified and multicast addresses, and prefer the configured device.

One value may hold several addresses separated by spaces: FreeBSD's
``xe-guest-utilities`` shell agent (ports ``sysutils/xe-guest-utilities``,
``xe-update-guest-attrs``) wrote every address of an interface into one
``N/ip`` value before its 2024 fix, e.g. ``{"0/ip": "10.0.0.5 10.0.0.6"}``.
Each of them counts, in the order written. Empty values count for nothing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

__all__ = ["candidate_addresses", "pick_address"]

_KEY = re.compile(r"^(?P<device>\d+)/(?P<family>ip|ipv4|ipv6)(?:/(?P<index>\d+))?$")


def _usable(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip().split("%")[0])
    except ValueError:
        return None
    if address.is_link_local or address.is_unspecified or address.is_multicast:
        return None
    return address


def candidate_addresses(networks: Mapping[str, str], device: str = "") -> list[str]:
    """Usable addresses in preference order: the device first, IPv4 before IPv6."""
    ranked: list[tuple[tuple[int, int, int, int, int], str]] = []
    for key, value in networks.items():
        match = _KEY.match(str(key))
        if match is None or not isinstance(value, str):
            continue
        for position, word in enumerate(value.replace(",", " ").split()):
            address = _usable(word)
            if address is None:
                continue
            dev = int(match["device"])
            family = 0 if address.version == 4 else 1
            index = int(match["index"] or 0)
            preferred = 0 if device and match["device"] == device else 1
            ranked.append(((preferred, family, dev, index, position), str(address)))
    seen: list[str] = []
    for _rank, address_text in sorted(ranked):
        if address_text not in seen:
            seen.append(address_text)
    return seen


def pick_address(networks: Mapping[str, str], device: str = "") -> str | None:
    """The best address, or ``None`` when the agent reported nothing usable yet."""
    candidates = candidate_addresses(networks, device)
    return candidates[0] if candidates else None
