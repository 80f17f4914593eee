"""A pyVmomi session to vCenter or ESXi: verified TLS, re-login, keep-alive, session cookie.

Long backups leave the SOAP session idle for hours while disks are read over HTTP, and
vCenter drops idle sessions (30 minutes by default). The connection therefore sends a cheap
call every few minutes, and the session-oriented stub logs in again if the session is gone
anyway. The datastore HTTP transport asks for the current cookie on every request, so it
follows a re-login too.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from pyVim import connect as pyvim_connect
from pyVim.connect import SmartStubAdapter, VimSessionOrientedStub
from pyVmomi import vim, vmodl
from pyVmomi.SoapAdapter import SoapStubAdapter
from pyVmomi.VmomiSupport import GetServiceVersions

from ..tls import ServerTrust, TlsPolicy, require_tls
from .exceptions import ConnectionFailed, LoginFailed, UntrustedCertificate

log = logging.getLogger(__name__)

SESSION_COOKIE = "vmware_soap_session"
KEEPALIVE_EVERY = 300.0


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to connect. ``server`` is a host, ``host:port`` or URL.

    ``http://`` URLs (simulators) are refused unless ``tls.allow_cleartext`` is set.
    """

    server: str
    user: str
    password: str = field(repr=False)
    tls: TlsPolicy = field(default_factory=TlsPolicy)
    timeout: float = 120.0

    def endpoint(self) -> tuple[str, str, int]:
        """(scheme, host, port)."""
        return parse_server(self.server)


def parse_server(server: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a vCenter/ESXi address; https unless the URL says otherwise."""
    text = server if "://" in server else f"https://{server}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConnectionFailed(f"not a vCenter or ESXi address: {server!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectionFailed(f"not a vCenter or ESXi address: {server!r}")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


class VSphereConnection:
    """A logged-in session. Use as a context manager, or call ``close``."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self.scheme, self.host, self.port = settings.endpoint()
        # One trust decision for this server; SOAP and every data session get their own sealed
        # context from it, so nothing one library does to its context reaches another.
        self.trust: ServerTrust | None = (
            ServerTrust.establish(settings.tls, self.host, self.port)
            if require_tls(settings.tls, self.scheme, self.base_url, "vCenter")
            else None
        )
        self.ssl_context: ssl.SSLContext | None = self.trust.context() if self.trust else None
        self._stub: Any = None
        self.si: Any = None
        self._stop = threading.Event()
        self._keepalive: threading.Thread | None = None
        self._connect()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def content(self) -> Any:
        return self.si.RetrieveContent()

    def _connect(self) -> None:
        user, password = self.settings.user, self.settings.password

        def login(stub: Any) -> None:
            # vcsim refuses to read si.content before a login (the stock login method does),
            # so ask for the content explicitly.
            content: Any = vim.ServiceInstance("ServiceInstance", stub).RetrieveContent()
            content.sessionManager.Login(user, password)

        try:
            soap = self._soap_stub()
            self._stub = VimSessionOrientedStub(soap, login, retryDelay=2.0, retryCount=3)
            self.si = vim.ServiceInstance("ServiceInstance", self._stub)
            about = self.si.RetrieveContent().about
            self.si.RetrieveContent().sessionManager.currentSession  # noqa: B018 - forces the login now
        except vim.fault.InvalidLogin:
            raise LoginFailed(f"{self.host}: wrong user name or password for {user!r}") from None
        except UntrustedCertificate:  # raised by the handshake itself, naming what was presented
            raise
        except ssl.SSLError as exc:
            raise ConnectionFailed(f"TLS with {self.host}:{self.port} failed: {exc.reason or exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise ConnectionFailed(f"cannot reach {self.host}:{self.port}: {_os_reason(exc)}") from None
        except vmodl.MethodFault as exc:
            raise ConnectionFailed(f"{self.host}: {getattr(exc, 'msg', '') or type(exc).__name__}") from None
        except Exception as exc:  # pyVmomi raises a bare Exception when no API version matches
            if "is not a VIM server" in str(exc) or "is down" in str(exc):
                raise ConnectionFailed(f"{self.host}:{self.port} is down or is not vCenter/ESXi") from None
            raise
        log.info("connected to %s (%s %s)", self.host, about.fullName, about.apiVersion)
        self._keepalive = threading.Thread(target=self._keep_alive, name="vmkeep-vsphere-keepalive", daemon=True)
        self._keepalive.start()

    def _soap_stub(self) -> Any:
        if self.scheme == "https":
            return SmartStubAdapter(
                host=self.host, port=self.port, sslContext=self.ssl_context, httpConnectionTimeout=self.settings.timeout
            )
        # Plain HTTP (simulators, with --allow-cleartext). SmartStubAdapter passes the negative port that means
        # "http" on to version discovery, which then fails; discover the version directly.
        find_version = getattr(pyvim_connect, "__FindSupportedVersion")
        version = find_version(
            "http", self.host, self.port, "/sdk", GetServiceVersions("vim25"), None, None, None, None
        )
        if version is None:
            raise ConnectionFailed(f"{self.host}:{self.port} is down or is not vCenter/ESXi")
        return SoapStubAdapter(
            host=self.host, port=-self.port, version=version, httpConnectionTimeout=self.settings.timeout
        )

    def cookie(self) -> str:
        """The current session cookie's value, for the datastore HTTP endpoint."""
        jar: SimpleCookie = SimpleCookie()
        jar.load(self._stub.soapStub.cookie or "")
        morsel = jar.get(SESSION_COOKIE)
        if morsel is None:
            raise ConnectionFailed(f"{self.host}: no session cookie (not logged in)")
        return morsel.value

    def relogin(self) -> None:
        """Make sure the session is alive: a call through the stub logs in again if it is not."""
        self.si.CurrentTime()

    def _keep_alive(self) -> None:
        while not self._stop.wait(KEEPALIVE_EVERY):
            try:
                self.si.CurrentTime()
            except Exception as exc:  # the next real call reports the problem
                log.debug("keep-alive to %s failed: %s", self.host, exc)

    def close(self) -> None:
        self._stop.set()
        if self._keepalive is not None:
            self._keepalive.join(timeout=5)
            self._keepalive = None
        if self.si is not None:
            try:
                self.si.RetrieveContent().sessionManager.Logout()
            except Exception as exc:  # logging out is a courtesy
                log.debug("logout from %s failed: %s", self.host, exc)
            self.si = None

    def __enter__(self) -> VSphereConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
