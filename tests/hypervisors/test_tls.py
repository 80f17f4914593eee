"""ServerTrust and TrustedAdapter against real local TLS servers (no hypervisor involved).

Every server is a real TLS listener on 127.0.0.1 (``TlsFront``) relaying to a real local HTTP
server; the "system trust store" is certifi's bundle plus a test CA (``system_trust_store``).
The SOAP path is represented by a raw handshake through the context pyVmomi would get, the
data path by a requests session from ``trusted_session``; vSphere itself is in
tests/hypervisors/vsphere/test_tls_paths.py.
"""

from __future__ import annotations

import logging
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fixtures.certs import VERIFYING, Pki, case_for
from tests.fixtures.tls_front import TlsFront, hello_server, tls_front
from vmkeep.hypervisors.exceptions import CleartextRefused, UntrustedCertificate
from vmkeep.hypervisors.https import trusted_session
from vmkeep.hypervisors.tls import (
    ContextSealed,
    ServerTrust,
    TlsPolicy,
    TrustMode,
    cleartext_problem,
    require_tls,
)


@pytest.fixture
def front(pki: Pki) -> Iterator[TlsFront]:
    with hello_server() as upstream, tls_front(pki.pinned, upstream, upstream_tls=False) as f:
        yield f


def handshake_and_get(ctx: ssl.SSLContext, front: TlsFront) -> bytes:
    """What the SOAP path does: a handshake through the context, then a request."""
    with (
        socket.create_connection((front.host, front.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=front.host) as tls,
    ):
        tls.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        return tls.recv(100)


def data_context(session: requests.Session, url: str) -> ssl.SSLContext:
    ctx: ssl.SSLContext = session.get_adapter(url).poolmanager.connection_pool_kw["ssl_context"]  # type: ignore[attr-defined]
    return ctx


@pytest.mark.parametrize("mode", VERIFYING, ids=lambda m: m.name.lower())
def test_only_the_trusted_certificate_is_accepted_before_and_after_a_first_request(
    mode: TrustMode, pki: Pki, system_trust_store: Path, front: TlsFront
) -> None:
    case = case_for(mode, pki)
    front.present(case.genuine)
    trust = ServerTrust.establish(case.policy, front.host, front.port)
    assert trust.mode is mode
    soap = trust.context()
    session = trusted_session(trust)
    url = f"https://{front.address}/"

    def refused_everywhere(when: str) -> None:
        for kind, rogue in case.rogues.items():
            front.present(rogue)
            for path, attempt in (
                ("data", lambda: session.get(url, timeout=10)),
                ("SOAP", lambda: handshake_and_get(soap, front)),
            ):
                with pytest.raises(UntrustedCertificate) as refused:
                    attempt()
                assert refused.value.presented_sha256 == rogue.sha256, (when, path, kind)
                assert rogue.sha256 in str(refused.value), (when, path, kind)
            assert front.received[rogue.name] == 0, f"bytes were sent to a server {kind} ({when})"

    refused_everywhere("before the first request")
    front.present(case.genuine)
    stats = soap.cert_store_stats(), data_context(session, url).cert_store_stats()
    assert session.get(url, timeout=10).status_code == 200
    assert handshake_and_get(soap, front).startswith(b"HTTP/1.0 200")
    assert (soap.cert_store_stats(), data_context(session, url).cert_store_stats()) == stats
    assert data_context(session, url) is not soap  # SOAP and data never share a context
    refused_everywhere("after a first request")
    front.present(case.genuine)
    assert session.get(url, timeout=10).status_code == 200


def test_requests_verify_and_bundle_cannot_widen_a_pin(pki: Pki, system_trust_store: Path, front: TlsFront) -> None:
    """The issue's reproduction: a bundle handed to requests must not reach the pinned context."""
    trust = ServerTrust.establish(TlsPolicy(thumbprint=pki.pinned.sha256), front.host, front.port)
    session = trusted_session(trust)
    url = f"https://{front.address}/"
    ctx = data_context(session, url)
    before = ctx.cert_store_stats()
    for verify in (True, str(system_trust_store)):
        session.verify = verify
        assert session.get(url, timeout=10).status_code == 200
        assert ctx.cert_store_stats() == before == {"x509": 1, "crl": 0, "x509_ca": 0}
        front.present(pki.public_leaf)
        with pytest.raises(UntrustedCertificate, match=pki.public_leaf.sha256):
            session.get(url, timeout=10)
        front.present(pki.pinned)


def test_a_sealed_context_refuses_to_change_whom_it_trusts(pki: Pki, system_trust_store: Path, front: TlsFront) -> None:
    for policy in (TlsPolicy(thumbprint=pki.pinned.sha256), TlsPolicy(ca_file=pki.private_ca.cert_pem), TlsPolicy()):
        ctx = ServerTrust.establish(policy, front.host, front.port).context()
        with pytest.raises(ContextSealed):
            ctx.load_verify_locations(cafile=str(system_trust_store))
        with pytest.raises(ContextSealed):
            ctx.load_default_certs()
        with pytest.raises(ContextSealed):
            ctx.set_default_verify_paths()
        with pytest.raises(ContextSealed):
            ctx.verify_mode = ssl.CERT_NONE
        with pytest.raises(ContextSealed):
            ctx.check_hostname = not ctx.check_hostname
        with pytest.raises(ContextSealed):
            ctx.verify_flags = ssl.VERIFY_DEFAULT
        with pytest.raises(ContextSealed):
            ctx.minimum_version = ssl.TLSVersion.TLSv1
        with pytest.raises(ContextSealed):
            ctx.wrap_socket(socket.socket(), do_handshake_on_connect=False)
        ctx.verify_mode = ctx.verify_mode  # libraries re-assert what they read: allowed
        ctx.check_hostname = ctx.check_hostname


def test_the_pin_is_checked_after_the_handshake_even_if_openssl_was_widened(
    pki: Pki, system_trust_store: Path, front: TlsFront
) -> None:
    """A library that reached past the seal (calling SSLContext's method directly) still gains nothing."""
    trust = ServerTrust.establish(TlsPolicy(thumbprint=pki.pinned.sha256), front.host, front.port)
    ctx = trust.context()
    ssl.SSLContext.load_verify_locations(ctx, cafile=str(pki.public_ca.cert_pem))
    front.present(pki.public_leaf)  # OpenSSL now accepts this one
    with pytest.raises(UntrustedCertificate, match=f"presents a certificate with SHA-256 {pki.public_leaf.sha256}"):
        handshake_and_get(ctx, front)
    assert front.received[pki.public_leaf.name] == 0


def test_a_sha1_pin_names_both_digests(pki: Pki, front: TlsFront) -> None:
    front.present(pki.other_self_signed)
    with pytest.raises(UntrustedCertificate) as refused:
        ServerTrust.establish(TlsPolicy(thumbprint=pki.pinned.sha1), front.host, front.port)
    message = str(refused.value)
    assert f"SHA-1 {pki.other_self_signed.sha1}" in message and pki.other_self_signed.sha256 in message
    assert f"not the pinned {pki.pinned.sha1}" in message
    front.present(pki.pinned)
    trust = ServerTrust.establish(TlsPolicy(thumbprint=pki.pinned.sha1), front.host, front.port)
    assert handshake_and_get(trust.context(), front).startswith(b"HTTP/1.0 200")


def test_an_expired_pinned_certificate_is_refused_as_such(pki: Pki, tmp_path: Path, front: TlsFront) -> None:
    from tests.fixtures.certs import self_signed

    stale = self_signed(tmp_path, "stale-pinned", expired=True)
    front.present(stale)
    trust = ServerTrust.establish(TlsPolicy(thumbprint=stale.sha256), front.host, front.port)
    with pytest.raises(
        UntrustedCertificate, match=r"the pinned certificate of \S+ is not valid: certificate has expired"
    ):
        handshake_and_get(trust.context(), front)


def test_ca_file_problems_are_reported_once_at_setup(tmp_path: Path, front: TlsFront) -> None:
    from vmkeep.hypervisors.exceptions import SourceError

    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    for path in (tmp_path / "missing.pem", junk):
        with pytest.raises(SourceError, match=f"cannot load CA file {path}"):
            ServerTrust.establish(TlsPolicy(ca_file=path), front.host, front.port)


def test_insecure_accepts_anything_and_warns_exactly_once(
    pki: Pki, front: TlsFront, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    front.present(pki.public_expired)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trust = ServerTrust.establish(TlsPolicy(insecure=True), front.host, front.port)
        session = trusted_session(trust)
        for _ in range(3):
            assert session.get(f"https://{front.address}/", timeout=10).status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "TLS verification is OFF for 127.0.0.1 (--insecure): the connection can be intercepted"
    ]
    assert caught == []


def test_cleartext_is_refused_unless_allowed_and_then_warned(caplog: pytest.LogCaptureFixture) -> None:
    url = "http://vc.example:80"
    assert cleartext_problem(TlsPolicy(), "http", url, "vCenter") == (
        "refusing to send the vCenter password in clear over http://vc.example:80; use https or --allow-cleartext"
    )
    assert cleartext_problem(TlsPolicy(thumbprint="ab" * 32, allow_cleartext=True), "http", url, "vCenter") == (
        "--thumbprint needs TLS, but http://vc.example:80 is plain http"
    )
    assert "--ca-file" in str(cleartext_problem(TlsPolicy(ca_file=Path("x")), "http", url, "vCenter"))
    assert "--insecure" in str(cleartext_problem(TlsPolicy(insecure=True), "http", url, "vCenter"))
    assert cleartext_problem(TlsPolicy(thumbprint="ab" * 32), "https", url, "vCenter") is None
    # WinRM over HTTP with message encryption carries no clear text; without it, it is refused
    assert cleartext_problem(TlsPolicy(), "http", url, "WinRM", message_encryption=True) is None
    with pytest.raises(CleartextRefused, match="WinRM password in clear"):
        require_tls(TlsPolicy(), "http", url, "WinRM")
    caplog.set_level(logging.WARNING)
    assert require_tls(TlsPolicy(allow_cleartext=True), "http", url, "vCenter") is False
    assert len(caplog.records) == 1 and "IN CLEAR over http://vc.example:80" in caplog.records[0].getMessage()
    assert require_tls(TlsPolicy(), "https", "https://vc.example:443", "vCenter") is True


def test_a_trusted_session_never_falls_back_to_another_scheme(pki: Pki, front: TlsFront) -> None:
    trust = ServerTrust.establish(TlsPolicy(thumbprint=pki.pinned.sha256), front.host, front.port)
    with pytest.raises(ValueError, match="does not connect to http://"):
        trusted_session(trust).get(f"http://{front.address}/", timeout=10)
    with pytest.raises(ValueError, match="does not connect to https://"):
        trusted_session(None).get(f"https://{front.address}/", timeout=10)
