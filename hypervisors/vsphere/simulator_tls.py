"""A throw-away CA and server certificate for the simulator, so TLS and pinning are tested for real.

govmomi's built-in certificate is 1024-bit RSA, which any verifying client rejects ("EE
certificate key too weak"); the tests and ``vmkeep demo`` serve this one instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ..certificates import ca_certificate, server_certificate, write_pem
from .simulator import thumbprint


@dataclass(frozen=True)
class TlsMaterial:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path
    sha1: str
    """Server certificate thumbprint, "AA:BB:..." as vSphere shows it."""
    sha256: str


def make_tls_material(directory: Path, common_name: str = "127.0.0.1") -> TlsMaterial:
    """A throw-away CA and a server certificate it signed, for 127.0.0.1 and localhost (RSA 2048)."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = ca_certificate(ca_key, "vmkeep simulator CA")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = server_certificate(key, common_name, issuer=(ca_cert, ca_key))
    directory.mkdir(parents=True, exist_ok=True)
    ca_pem = directory / "ca.pem"
    cert_pem = directory / "server.pem"
    key_pem = directory / "server-key.pem"
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_pem(cert, key, cert_pem, key_pem)
    return TlsMaterial(
        ca_pem=ca_pem,
        cert_pem=cert_pem,
        key_pem=key_pem,
        sha1=thumbprint(cert_pem, "sha1"),
        sha256=thumbprint(cert_pem, "sha256"),
    )
