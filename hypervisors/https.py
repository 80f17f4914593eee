"""requests sessions whose HTTPS trust is a :class:`~.tls.ServerTrust` and nothing else.

requests decides TLS per request from ``Session.verify``: ``cert_verify`` sets the pool's
``ca_certs`` to certifi's bundle (or to ``verify`` when it is a path), urllib3 then calls
``load_verify_locations`` on whatever context the pool uses, and a context shared with
another connection trusts every public CA from then on. :class:`TrustedAdapter` takes that
decision away from requests: its pools get a sealed context of their own, ``verify`` and
``REQUESTS_CA_BUNDLE`` are ignored, and no bundle path ever reaches urllib3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InsecureRequestWarning

from .tls import ServerTrust

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs


class TrustedAdapter(HTTPAdapter):
    """An HTTPS adapter for one server, verified by ``trust`` alone."""

    def __init__(self, trust: ServerTrust, **kwargs: Any) -> None:
        self.trust = trust
        if not trust.verifies:
            # ServerTrust has already said, once, that verification is off; urllib3 would
            # repeat it on every request.
            urllib3.disable_warnings(InsecureRequestWarning)
        super().__init__(**kwargs)

    @property
    def _cert_reqs(self) -> Literal["CERT_REQUIRED", "CERT_NONE"]:
        return "CERT_REQUIRED" if self.trust.verifies else "CERT_NONE"

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs.update(
            ssl_context=self.trust.context(),
            cert_reqs=self._cert_reqs,
            ca_certs=None,
            ca_cert_dir=None,
        )
        if not self.trust.checks_hostname:
            # A pinned certificate is the identity, whatever names it carries; urllib3 would
            # otherwise match the host name itself when the context does not.
            pool_kwargs["assert_hostname"] = False
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise ValueError(f"hypervisor connections do not go through proxies (asked for {proxy})")

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        # Only where to connect comes from the request; how to verify is the adapter's own.
        host_params, _tls_from_verify = super().build_connection_pool_key_attributes(request, True, None)
        return host_params, {"cert_reqs": self._cert_reqs}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if cert:
            raise ValueError("client certificates are not supported for hypervisor connections")
        conn.cert_reqs = self._cert_reqs
        conn.ca_certs = None
        conn.ca_cert_dir = None


def trusted_session(trust: ServerTrust | None, *, pool_maxsize: int = 4) -> requests.Session:
    """A session for one server: HTTPS verified by ``trust``; plain HTTP only when ``trust`` is None."""
    session = requests.Session()
    session.trust_env = False  # no proxies, no REQUESTS_CA_BUNDLE, no .netrc
    if trust is not None:
        session.mount("https://", TrustedAdapter(trust, pool_connections=2, pool_maxsize=pool_maxsize))
        session.mount("http://", _Refuse())
    else:
        session.mount("https://", _Refuse())
    return session


class _Refuse(HTTPAdapter):
    """Mounted for the scheme a session must not use."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        raise ValueError(f"this session does not connect to {request.url}")
