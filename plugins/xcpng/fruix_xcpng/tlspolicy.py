"""How a pool host's TLS certificate is checked, per host.

- ``pinned_cert_sha256`` (one fingerprint or several, one per pool host): the
  certificate must have one of them; the chain and names are not checked
  (XCP-ng hosts ship self-signed certificates). A fingerprint learned from the
  pool over an already verified session counts as a pin for that host's
  address, whatever the configured policy (so a new master is reachable).
- ``ca_file``: the chain must verify against the file (a CA, or a bundle of
  the hosts' self-signed certificates), and the certificate must name the
  host: its DNS name when the URL uses one; when the URL (or the master
  address a member redirects to) is an IP address, an IP entry, or else one of
  the DNS names listed in ``tls_server_names``. XCP-ng 8.2 certificates carry
  DNS names only.
- neither: the system's CAs and the usual host name check.
- ``insecure``: nothing (a lab only).
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any

from fruix_xcpng.settings import XcpngSettings

__all__ = ["CertificateNameError", "CertificatePinError", "TlsPolicy"]


class CertificatePinError(ssl.SSLError):
    """The host's certificate has none of the pinned fingerprints."""


class CertificateNameError(ssl.SSLError):
    """The host's certificate (trusted by ``ca_file``) does not name the host."""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _dns_matches(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """The checks for one host; ``context`` does the handshake, :meth:`check` the rest."""

    context: ssl.SSLContext
    pins: frozenset[str] = frozenset()
    names_from_ca: bool = False
    server_names: tuple[str, ...] = ()

    @classmethod
    def for_host(cls, settings: XcpngSettings, host: str, learned_pin: str = ""
                 ) -> TlsPolicy | None:
        """The policy of ``settings`` for ``host`` (``None`` for an http:// lab URL)."""
        from urllib.parse import urlsplit

        if urlsplit(settings.url).scheme != "https":
            return None
        if settings.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return cls(context)
        pins = frozenset(settings.pinned_cert_sha256)
        if learned_pin:
            # Learned from the pool over a verified session: as good as a pin.
            pins = pins | {learned_pin}
        if pins:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return cls(context, pins=pins)
        if settings.ca_file:
            context = ssl.create_default_context(cafile=settings.ca_file)
            context.check_hostname = False  # checked in check(), with tls_server_names
            return cls(context, names_from_ca=True, server_names=settings.tls_server_names)
        return cls(ssl.create_default_context())

    def check(self, sock: Any, host: str) -> None:
        """Check the connected ``sock`` to ``host``; raises a :class:`ssl.SSLError`."""
        if self.pins:
            der = sock.getpeercert(binary_form=True) or b""
            seen = hashlib.sha256(der).hexdigest()
            if seen not in self.pins:
                pinned = ", ".join(f"sha256:{p}" for p in sorted(self.pins))
                raise CertificatePinError(f"certificate fingerprint is sha256:{seen}, "
                                          f"pinned {pinned}")
            return
        if not self.names_from_ca:
            return
        cert = sock.getpeercert() or {}
        dns = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
        ips = [value for kind, value in cert.get("subjectAltName", ()) if kind == "IP Address"]
        bare = host.strip("[]")
        if _is_ip(bare):
            wanted = ipaddress.ip_address(bare)
            if any(_is_ip(ip) and ipaddress.ip_address(ip) == wanted for ip in ips):
                return
            if any(_dns_matches(pattern, name) for pattern in dns for name in self.server_names):
                return
            shown = ", ".join(dns) or "no DNS name"
            raise CertificateNameError(
                f"the certificate is trusted by ca_file but has no IP address entry for "
                f"{bare} (it names {shown}); use that name in url, or list it in "
                "tls_server_names")
        if any(_dns_matches(pattern, bare) for pattern in dns):
            return
        shown = ", ".join(dns + ips) or "nothing"
        raise CertificateNameError(f"the certificate is trusted by ca_file but names {shown}, "
                                   f"not {bare}")
