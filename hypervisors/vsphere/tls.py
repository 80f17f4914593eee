"""TLS for vCenter and ESXi: verified by default, with CA files or thumbprint pinning.

pyVmomi checks a pinned thumbprint only when normal verification fails, so a certificate
that a public CA vouches for would be accepted whatever the pin says. vmkeep pins strictly
instead: it fetches the server's certificate once, compares its SHA-1 or SHA-256 digest with
the pin, and from then on trusts exactly that certificate and nothing else, for SOAP and
for the datastore HTTP transport alike. A man in the middle with another certificate fails
every later handshake.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from .exceptions import ConnectionFailed, UntrustedCertificate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TlsPolicy:
    ca_file: Path | None = None  # trust this CA bundle instead of the system store
    thumbprint: str | None = None  # SHA-1 (40 hex) or SHA-256 (64 hex), colons allowed
    insecure: bool = False  # no verification at all: explicit, loud


def normalise_thumbprint(text: str) -> str:
    digest = text.replace(":", "").replace(" ", "").lower()
    if len(digest) not in (40, 64) or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a SHA-1 or SHA-256 thumbprint: {text!r}")
    return digest


def format_thumbprint(digest_hex: str) -> str:
    up = digest_hex.upper()
    return ":".join(up[i : i + 2] for i in range(0, len(up), 2))


def fetch_certificate(host: str, port: int, timeout: float = 15.0) -> bytes:
    """The DER certificate the server presents (not verified: for pinning and error messages)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise ConnectionFailed(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    if der is None:
        raise ConnectionFailed(f"{host}:{port} presented no certificate")
    return der


def thumbprints(der: bytes) -> tuple[str, str]:
    """(SHA-1, SHA-256) of a DER certificate, as colon-separated upper-case hex."""
    return format_thumbprint(hashlib.sha1(der).hexdigest()), format_thumbprint(hashlib.sha256(der).hexdigest())


def make_context(policy: TlsPolicy, host: str, port: int) -> ssl.SSLContext:
    """The SSL context every connection to this server uses."""
    if policy.insecure:
        log.warning("TLS verification is OFF for %s (--insecure): the connection can be intercepted", host)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if policy.thumbprint:
        want = normalise_thumbprint(policy.thumbprint)
        der = fetch_certificate(host, port)
        algorithm = "sha1" if len(want) == 40 else "sha256"
        have = hashlib.new(algorithm, der).hexdigest()
        if have != want:
            raise UntrustedCertificate(
                f"{host}:{port} presents a certificate with {algorithm.upper()} thumbprint "
                f"{format_thumbprint(have)}, not the pinned {format_thumbprint(want)}"
            )
        ctx = ssl.create_default_context(cadata=ssl.DER_cert_to_PEM_cert(der))
        ctx.check_hostname = False  # the identity is the pinned certificate itself
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # trust the leaf even if a CA issued it
        return ctx
    try:
        return ssl.create_default_context(cafile=str(policy.ca_file) if policy.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailed(f"cannot load CA file {policy.ca_file}: {exc}") from None


def untrusted_message(host: str, port: int, reason: str) -> str:
    """Explain a verification failure, with the thumbprints an administrator can check and pin."""
    try:
        _sha1, sha256 = thumbprints(fetch_certificate(host, port))
        shown = f" (the server presents SHA-256 {sha256})"
    except ConnectionFailed:
        shown = ""
    return (
        f"the TLS certificate of {host}:{port} is not trusted: {reason}{shown}; "
        "pass --ca-file, or --thumbprint after checking it, or --insecure to skip verification"
    )
