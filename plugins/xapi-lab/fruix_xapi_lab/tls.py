"""Self-signed certificates for the lab's hosts, like those of fresh XCP-ng hosts.

Two styles, because operators meet both:

- ``"8.2"``: RSA, the host name as the only subject alternative name (DNS
  names only, no IP address), as XCP-ng 8.2's first-boot certificate;
- ``"8.3"``: the host name *and* the host's IP address.

Each certificate is its own CA, so tests exercise ``ca_file`` (a bundle of the
pool's certificates), name checks and pinned fingerprints.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CERT_STYLES", "LabCertificate", "make_certificate"]

CERT_STYLES = ("8.2", "8.3")


@dataclass(frozen=True, slots=True)
class LabCertificate:
    cert_file: Path
    key_file: Path
    sha256: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    @property
    def pem(self) -> str:
        return self.cert_file.read_text(encoding="ascii")


def make_certificate(directory: Path, host: str = "127.0.0.1", *, hostname: str = "localhost",
                     style: str = "8.3") -> LabCertificate:
    """Write ``lab-cert.pem`` / ``lab-key.pem`` under ``directory`` (reused when present)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if style not in CERT_STYLES:
        raise ValueError(f"unknown certificate style {style!r} ({', '.join(CERT_STYLES)})")
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "lab-cert.pem", directory / "lab-key.pem"
    if not (cert_file.exists() and key_file.exists()):
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if style == "8.2":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
        names: list[x509.GeneralName] = [x509.DNSName(hostname)]
        if style == "8.3":
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = ssl.PEM_cert_to_DER_cert(cert_file.read_text(encoding="ascii"))
    return LabCertificate(cert_file, key_file, hashlib.sha256(der).hexdigest())
