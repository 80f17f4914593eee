"""Whom a hypervisor connection trusts: the system's CAs, one CA file, or one pinned certificate.

Every connection vmkeep makes to a hypervisor carries its credentials and its disks, so the
trust decision is made once per server, in a :class:`ServerTrust`, and every TLS handshake
to that server (vSphere SOAP and datastore HTTP; WinRM and SMB for Hyper-V) is checked
against it. Two properties make the decision impossible to widen afterwards:

- Each consumer gets its own *sealed* ``ssl.SSLContext`` (:meth:`ServerTrust.context`). Once
  built, it refuses to load more CAs, to lower its verification mode, to stop checking host
  names, or to accept other verification flags or protocol versions. HTTP libraries like to
  load their own CA bundle into the context they are given (requests hands certifi's bundle
  to urllib3, which adds it to the context); on a sealed context that raises
  :class:`ContextSealed` instead of silently trusting a hundred more CAs.
- The context's sockets check the peer after every handshake, before a byte is sent: with a
  pin, the SHA-256 (or SHA-1) digest of the presented certificate must be the pinned one,
  even if OpenSSL was somehow persuaded to accept another.

A refused handshake raises :class:`UntrustedCertificate`, which names the certificate the
server presented. It is deliberately *not* an ``OSError``: HTTP libraries treat ``OSError``
(and ``ssl.SSLError``) as a network fault to retry or wrap, and a server presenting the wrong
identity is not a fault that goes away. The socket is closed before the error is raised.

Plain HTTP is refused for connections that carry a password unless the caller explicitly
allows it (:func:`cleartext_problem`, :func:`require_tls`).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .exceptions import CleartextRefused, SourceError, SourceUnavailable, UntrustedCertificate

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 15.0


class TrustMode(enum.Enum):
    SYSTEM = "system CAs"  # the default: the system's CA store, and the host name
    CA_FILE = "CA file"  # only the CAs of one PEM file, and the host name
    PINNED = "pinned certificate"  # exactly one certificate, whatever name or issuer it has
    INSECURE = "no verification"  # explicit and loud


@dataclass(frozen=True)
class TlsPolicy:
    """What the user asked for (at most one of ca_file, thumbprint, insecure)."""

    ca_file: Path | None = None  # trust this CA bundle instead of the system store
    thumbprint: str | None = None  # SHA-1 (40 hex) or SHA-256 (64 hex), colons allowed
    insecure: bool = False  # no verification at all
    allow_cleartext: bool = False  # plain http:// is acceptable (and warned about)

    @property
    def mode(self) -> TrustMode:
        chosen = [m for m, on in ((TrustMode.CA_FILE, self.ca_file), (TrustMode.PINNED, self.thumbprint)) if on]
        if self.insecure:
            chosen.append(TrustMode.INSECURE)
        if len(chosen) > 1:
            raise ValueError("--ca-file, --thumbprint and --insecure exclude each other")
        return chosen[0] if chosen else TrustMode.SYSTEM

    def tls_options(self) -> list[str]:
        """The TLS options given, as the user typed them (for error messages)."""
        flags = [
            ("--ca-file", bool(self.ca_file)),
            ("--thumbprint", bool(self.thumbprint)),
            ("--insecure", self.insecure),
        ]
        return [name for name, given in flags if given]


class ContextSealed(RuntimeError):
    """Something tried to change whom a sealed context trusts (a bug in vmkeep or a library)."""


# ------------------------------------------------------------------------------ thumbprints


def normalise_thumbprint(text: str) -> str:
    """Lower-case hex without separators; ValueError unless it is a SHA-1 or SHA-256 digest."""
    digest = text.replace(":", "").replace(" ", "").lower()
    if len(digest) not in (40, 64) or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a SHA-1 or SHA-256 thumbprint: {text!r}")
    return digest


def format_thumbprint(digest_hex: str) -> str:
    up = digest_hex.upper()
    return ":".join(up[i : i + 2] for i in range(0, len(up), 2))


def thumbprints(der: bytes) -> tuple[str, str]:
    """(SHA-1, SHA-256) of a DER certificate, as colon-separated upper-case hex."""
    return format_thumbprint(hashlib.sha1(der).hexdigest()), format_thumbprint(hashlib.sha256(der).hexdigest())


def fetch_certificate(host: str, port: int, timeout: float = HANDSHAKE_TIMEOUT) -> bytes:
    """The DER certificate the server presents. Not verified, nothing is sent: for pins and messages."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        raise SourceUnavailable(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None
    if der is None:
        raise SourceUnavailable(f"{host}:{port} presented no certificate")
    return der


# ------------------------------------------------------------------------------ plain text


def cleartext_problem(
    policy: TlsPolicy, scheme: str, url: str, service: str, *, message_encryption: bool = False
) -> str | None:
    """Why ``url`` must not be used under ``policy``, or None.

    Plain HTTP is refused for a connection that sends ``service``'s password unless the
    protocol encrypts its messages itself (WinRM with Kerberos/NTLM message encryption) or
    ``policy.allow_cleartext`` says so. TLS options with a plain URL are always an error:
    they would silently do nothing.
    """
    if scheme == "https":
        return None
    if scheme != "http":
        return f"{url}: unknown scheme {scheme!r} (use https://)"
    if options := policy.tls_options():
        return f"{' and '.join(options)} need{'s' if len(options) == 1 else ''} TLS, but {url} is plain http"
    if not policy.allow_cleartext and not message_encryption:
        return f"refusing to send the {service} password in clear over {url}; use https or --allow-cleartext"
    return None


def require_tls(policy: TlsPolicy, scheme: str, url: str, service: str, *, message_encryption: bool = False) -> bool:
    """True for TLS; False for an allowed plain connection (warned about); CleartextRefused otherwise."""
    problem = cleartext_problem(policy, scheme, url, service, message_encryption=message_encryption)
    if problem:
        raise CleartextRefused(problem)
    if scheme == "https":
        return True
    if not message_encryption:
        log.warning(
            "sending the %s password and all data IN CLEAR over %s (--allow-cleartext): "
            "anyone on the network path can read the password and read or change the disks",
            service,
            url,
        )
    return False


# ------------------------------------------------------------------------------ trust


@dataclass(frozen=True)
class ServerTrust:
    """The trust decision for one server: build with :meth:`establish`, then ask for contexts."""

    host: str
    port: int
    mode: TrustMode
    ca_file: Path | None = None
    pin: str | None = None  # normalised hex digest (SHA-1 or SHA-256)
    pinned_der: bytes | None = field(default=None, repr=False)

    @classmethod
    def establish(cls, policy: TlsPolicy, host: str, port: int) -> ServerTrust:
        """Resolve ``policy`` for host:port. A pin is checked now against what the server presents."""
        try:
            mode = policy.mode
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        if mode is TrustMode.INSECURE:
            log.warning("TLS verification is OFF for %s (--insecure): the connection can be intercepted", host)
            return cls(host, port, mode)
        if mode is TrustMode.CA_FILE:
            trust = cls(host, port, mode, ca_file=policy.ca_file)
            trust.context()  # a missing or unreadable CA file is reported now, once
            return trust
        if mode is TrustMode.SYSTEM:
            return cls(host, port, mode)
        assert policy.thumbprint is not None
        try:
            pin = normalise_thumbprint(policy.thumbprint)
        except ValueError as exc:
            raise SourceError(str(exc)) from None
        der = fetch_certificate(host, port)
        trust = cls(host, port, mode, pin=pin, pinned_der=der)
        if not trust.matches_pin(der):
            raise trust.refused(der, "")
        return trust

    @property
    def verifies(self) -> bool:
        return self.mode is not TrustMode.INSECURE

    @property
    def checks_hostname(self) -> bool:
        return self.mode in (TrustMode.SYSTEM, TrustMode.CA_FILE)

    def context(self) -> ssl.SSLContext:
        """A new sealed client context for this server; each consumer gets its own."""
        ctx = _SealedContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and host name checks
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            if self.mode is TrustMode.SYSTEM:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            elif self.mode is TrustMode.CA_FILE:
                ctx.load_verify_locations(cafile=str(self.ca_file))
            elif self.mode is TrustMode.PINNED:
                assert self.pinned_der is not None
                ctx.load_verify_locations(cadata=self.pinned_der)
                ctx.check_hostname = False  # the identity is the pinned certificate itself
                ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf is its own anchor
            else:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        except (OSError, ssl.SSLError) as exc:
            raise SourceError(f"cannot load CA file {self.ca_file}: {getattr(exc, 'reason', None) or exc}") from None
        ctx.seal(self)
        return ctx

    def matches_pin(self, der: bytes) -> bool:
        assert self.pin is not None
        algorithm = "sha1" if len(self.pin) == 40 else "sha256"
        return hashlib.new(algorithm, der).hexdigest() == self.pin

    def check_peer(self, der: bytes | None) -> None:
        """After a handshake OpenSSL accepted: with a pin, the certificate must be the pinned one."""
        if self.mode is TrustMode.INSECURE:
            return
        if der is None:
            raise UntrustedCertificate(f"{self.host}:{self.port} presented no certificate")
        if self.mode is TrustMode.PINNED and not self.matches_pin(der):
            raise self.refused(der, "")

    def refusal(self, reason: str) -> UntrustedCertificate:
        """The error for a handshake OpenSSL refused; looks at what the server presents, to name it."""
        try:
            der: bytes | None = fetch_certificate(self.host, self.port)
        except SourceUnavailable:
            der = None
        return self.refused(der, reason)

    def refused(self, der: bytes | None, reason: str) -> UntrustedCertificate:
        where = f"{self.host}:{self.port}"
        sha256 = thumbprints(der)[1] if der is not None else None
        presented = f"SHA-256 {sha256}" if sha256 else "a certificate vmkeep could not read"
        if self.mode is TrustMode.PINNED:
            assert self.pin is not None
            if der is not None and self.matches_pin(der):
                return UntrustedCertificate(f"the pinned certificate of {where} is not valid: {reason}", sha256)
            if der is not None and len(self.pin) == 40:
                presented = f"SHA-1 {thumbprints(der)[0]} ({presented})"
            return UntrustedCertificate(
                f"{where} presents a certificate with {presented}, not the pinned {format_thumbprint(self.pin)}"
                + (f" ({reason})" if reason else ""),
                sha256,
            )
        anchor = f"the CAs in {self.ca_file}" if self.mode is TrustMode.CA_FILE else "the system's CAs"
        return UntrustedCertificate(
            f"the TLS certificate of {where} is not trusted by {anchor}: {reason} (the server presents {presented}); "
            "pass --ca-file, or --thumbprint after checking it, or --insecure to skip verification",
            sha256,
        )


# ------------------------------------------------------------------------------ sealed contexts


class _CheckedSocket(ssl.SSLSocket):
    """An SSL socket that checks the peer against its context's ServerTrust after the handshake."""

    def do_handshake(self, block: bool = False) -> None:
        trust = _trust_of(self.context)
        try:
            super().do_handshake(block)
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise trust.refusal(exc.verify_message or str(exc)) from None
        try:
            trust.check_peer(self.getpeercert(binary_form=True))
        except UntrustedCertificate:
            self.close()
            raise


class _SealedContext(ssl.SSLContext):
    """A client context whose trust cannot change once :meth:`seal` ran.

    Assignments that leave a locked setting as it is are allowed: libraries routinely set
    ``verify_mode`` and ``check_hostname`` to what they read from the context.
    """

    sslsocket_class = _CheckedSocket
    _LOCKED: ClassVar[frozenset[str]] = frozenset(
        {
            "verify_mode",
            "check_hostname",
            "verify_flags",
            "hostname_checks_common_name",
            "minimum_version",
            "maximum_version",
            "options",
            "keylog_filename",
            "sni_callback",
            "trust",
        }
    )
    _sealed = False

    def seal(self, trust: ServerTrust) -> None:
        self.trust = trust
        object.__setattr__(self, "_sealed", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._sealed and (name == "_sealed" or (name in self._LOCKED and getattr(self, name) != value)):
            raise ContextSealed(f"the TLS context of {self.trust.host} is sealed: {name} cannot change")
        super().__setattr__(name, value)

    def _refuse(self, what: str) -> None:
        if self._sealed:
            raise ContextSealed(f"the TLS context of {self.trust.host} is sealed: it cannot {what}")

    def load_verify_locations(self, *args: Any, **kwargs: Any) -> None:
        self._refuse("trust more CAs")
        super().load_verify_locations(*args, **kwargs)

    def load_default_certs(self, *args: Any, **kwargs: Any) -> None:
        self._refuse("trust more CAs")
        super().load_default_certs(*args, **kwargs)

    def set_default_verify_paths(self) -> None:
        self._refuse("trust more CAs")
        super().set_default_verify_paths()

    def load_cert_chain(self, *args: Any, **kwargs: Any) -> None:
        self._refuse("take a client certificate")
        super().load_cert_chain(*args, **kwargs)

    def set_ciphers(self, *args: Any, **kwargs: Any) -> None:
        self._refuse("change its ciphers")
        super().set_ciphers(*args, **kwargs)

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        # A deferred handshake would be done implicitly by the first write, and the data
        # would leave before the peer was checked.
        deferred = kwargs.get("do_handshake_on_connect", args[1] if len(args) > 1 else True) is False
        if deferred:
            raise ContextSealed("a sealed context does not defer handshakes (do_handshake_on_connect=False)")
        return super().wrap_socket(sock, *args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        raise ContextSealed("TLS over memory BIOs (HTTPS proxies) is not supported for hypervisor connections")


def _trust_of(context: ssl.SSLContext) -> ServerTrust:
    trust = getattr(context, "trust", None)
    if not isinstance(trust, ServerTrust):
        raise ContextSealed("a checked socket was made from a context without a ServerTrust")
    return trust
