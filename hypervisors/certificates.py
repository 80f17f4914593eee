"""Throw-away certificates: a CA, the server certificates it signs, and self-signed ones.

For the simulators and ``vmkeep demo`` (which serve TLS that vmkeep verifies for real) and for the
tests' certificate cases. Nothing here is meant for a production host's certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def validity(expired: bool = False) -> tuple[dt.datetime, dt.datetime]:
    """Two days from five minutes ago, or a month ago to yesterday when ``expired``."""
    now = dt.datetime.now(dt.UTC)
    if expired:
        return now - dt.timedelta(days=30), now - dt.timedelta(days=1)
    return now - dt.timedelta(minutes=5), now + dt.timedelta(days=2)


def ca_certificate(key: PrivateKey, common_name: str) -> x509.Certificate:
    """A self-signed CA that may sign server certificates only (path length 0)."""
    start, end = validity()
    return (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .issuer_name(name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def server_certificate(
    key: PrivateKey,
    common_name: str,
    hosts: Sequence[str] = LOCAL_HOSTS,
    *,
    issuer: tuple[x509.Certificate, PrivateKey] | None = None,
    expired: bool = False,
) -> x509.Certificate:
    """A server certificate for ``hosts`` (IP addresses or DNS names), signed by ``issuer`` (a CA
    certificate and its key) or, without one, by its own key (as an ESXi host makes for itself)."""
    start, end = validity(expired)
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if issuer is None:
        return builder.issuer_name(name(common_name)).sign(key, hashes.SHA256())
    ca_cert, ca_key = issuer
    return (
        builder.issuer_name(ca_cert.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def write_pem(cert: x509.Certificate, key: PrivateKey, cert_pem: Path, key_pem: Path) -> None:
    """The certificate and its key (PKCS#8, unencrypted, readable by its owner only) as PEM files."""
    cert_pem.parent.mkdir(parents=True, exist_ok=True)
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_pem.chmod(0o600)
