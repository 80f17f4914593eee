"""NTLM for the simulated WinRM service: its users, channel bindings, and message encryption.

NTLM authenticates a TCP connection through ``spnego.server(protocol="ntlm")``, which reads its
users from the file ``NTLM_USER_FILE`` names (:func:`write_ntlm_user_file`, :func:`acceptor_users`).
Over HTTPS the client's channel binding (RFC 5929 ``tls-server-end-point``) is checked against
:func:`channel_bindings` of the server's certificate. Over plain HTTP every message is sealed
with the session's keys in MS-WSMV 2.2.9.1.1 ``multipart/encrypted`` framing (:func:`seal`,
:func:`unseal`).
"""

from __future__ import annotations

import base64
import contextlib
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import spnego
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from spnego.channel_bindings import GssChannelBindings

ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
BOUNDARY = b"--Encrypted Boundary"


def write_ntlm_user_file(path: Path, users: dict[str, str]) -> Path:
    """Write an NTLM user file (``DOMAIN:USER:PASSWORD`` lines, mode 0600) for :class:`WsmanServer`.

    A user name may be ``DOMAIN\\user`` or ``user``. The file is the acceptor's credential
    store; it is written, never passed on a command line.
    """
    lines = []
    for name, password in users.items():
        domain, _, user = name.rpartition("\\")
        if ":" in name or "\n" in password:
            raise ValueError("user names cannot contain ':' and passwords cannot contain newlines")
        lines.append(f"{domain}:{user}:{password}\n")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.writelines(lines)
    return path


# pyspnego's NTLM acceptor reads its credential store from the NTLM_USER_FILE environment
# variable; each server sets it to its own file around the acceptor's steps.
_ACCEPTOR_LOCK = threading.Lock()


@contextlib.contextmanager
def acceptor_users(path: Path) -> Iterator[None]:
    with _ACCEPTOR_LOCK:
        before = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(path)
        try:
            yield
        finally:
            if before is None:
                del os.environ["NTLM_USER_FILE"]
            else:
                os.environ["NTLM_USER_FILE"] = before


def channel_bindings(cert_pem: Path) -> GssChannelBindings:
    """RFC 5929 tls-server-end-point for our certificate, as an NTLM client over TLS computes it."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(Encoding.DER))
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


def unseal(context: spnego.ContextProxy, body: bytes) -> bytes:
    """The SOAP message inside a ``multipart/encrypted`` body (ValueError if it is not one)."""
    parts = [p for p in body.split(BOUNDARY + b"\r\n") if p]
    if len(parts) < 2:
        raise ValueError("not a multipart/encrypted message")
    length = int(parts[0].split(b"Length=")[1].strip())
    payload = parts[1].removesuffix(BOUNDARY + b"--\r\n")
    payload = payload.removeprefix(b"\tContent-Type: application/octet-stream\r\n")
    # <length of the signature, 4 bytes LE> <signature> <sealed message>: unwrap takes the last two as one
    message = context.unwrap(payload[4:]).data
    if len(message) != length:
        raise ValueError("the decrypted length does not match OriginalContent")
    return message


def seal(context: spnego.ContextProxy, message: bytes) -> bytes:
    """``message`` sealed in a ``multipart/encrypted`` body."""
    wrapped = context.wrap(message, encrypt=True).data
    signature, sealed = wrapped[:16], wrapped[16:]
    return (
        BOUNDARY + b"\r\n"
        b"\tContent-Type: " + ENCRYPTED_PROTOCOL.encode() + b"\r\n"
        b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
        + str(len(message)).encode()
        + b"\r\n"
        + BOUNDARY
        + b"\r\n"
        b"\tContent-Type: application/octet-stream\r\n"
        + struct.pack("<i", len(signature))
        + signature
        + sealed
        + BOUNDARY
        + b"--\r\n"
    )


def ntlm_user(token: str) -> str:
    """The user name in an NTLM AUTHENTICATE message, for the log (never the password: it is not in there)."""
    try:
        data = base64.b64decode(token)
        domain_len, _, domain_off = struct.unpack_from("<HHI", data, 28)
        user_len, _, user_off = struct.unpack_from("<HHI", data, 36)
        domain = data[domain_off : domain_off + domain_len].decode("utf-16-le")
        user = data[user_off : user_off + user_len].decode("utf-16-le")
    except (ValueError, struct.error, UnicodeDecodeError):
        return "?"
    return f"{domain}\\{user}" if domain else user
