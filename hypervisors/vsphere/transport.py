"""Moving disk data: the datastore HTTP endpoint (``/folder``), behind a small interface.

``HttpFlatTransport`` reads raw ``-flat.vmdk`` extents with Range GETs and writes them with
PUT, authenticated by the SOAP session's cookie and verified with the connection's TLS
context. Another transport (VDDK through nbdkit, for vSAN and vVols) can implement the same
two methods.

TLS is the connection's :class:`~vmkeep.hypervisors.tls.ServerTrust`: each thread's session
has a sealed context of its own, and a server presenting another certificate raises
``UntrustedCertificate`` at once (never retried).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import requests
from urllib3.exceptions import HTTPError

from ..https import trusted_session
from ..retry import retry_transient
from .connection import SESSION_COOKIE, VSphereConnection
from .exceptions import TransportError, UnsupportedDisk

log = logging.getLogger(__name__)

ATTEMPTS = 5
_TRANSIENT_STATUS = {500, 502, 503, 504}


@dataclass(frozen=True)
class DatastoreFile:
    datacenter: str  # inventory path of the datacenter (dcPath)
    datastore: str
    path: str  # inside the datastore, "/"-separated

    @classmethod
    def flat_of(cls, backing_file: str, datacenter: str) -> DatastoreFile:
        """The raw extent of a disk backing: ``[ds] dir/disk.vmdk`` -> ``dir/disk-flat.vmdk`` on ``ds``."""
        if not backing_file.startswith("[") or "] " not in backing_file:
            raise UnsupportedDisk(f"disk file {backing_file!r} is not on a file datastore")
        datastore, _, path = backing_file[1:].partition("] ")
        if not path.endswith(".vmdk"):
            raise UnsupportedDisk(f"disk file {backing_file!r} is not a .vmdk")
        return cls(datacenter, datastore, path.removesuffix(".vmdk") + "-flat.vmdk")

    def __str__(self) -> str:
        return f"[{self.datastore}] {self.path}"


class DiskTransport(ABC):
    @abstractmethod
    def read(self, file: DatastoreFile, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer only at the end of the file)."""

    @abstractmethod
    def write(self, file: DatastoreFile, size: int, chunks: Callable[[], Iterator[bytes]]) -> None:
        """Replace ``file`` with ``size`` bytes from ``chunks()`` (called again to retry)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class _Transient(Exception):
    """A fault worth retrying: a dropped connection, a timeout, a 5xx answer."""


class HttpFlatTransport(DiskTransport):
    """Range GET and PUT on ``/folder``. Thread-safe: one HTTP session per thread."""

    def __init__(self, conn: VSphereConnection, timeout: float = 120.0) -> None:
        self._conn = conn
        self._timeout = timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def url(self, file: DatastoreFile) -> str:
        query = urlencode({"dcPath": file.datacenter, "dsName": file.datastore})
        return f"{self._conn.base_url}/folder/{quote(file.path)}?{query}"

    def read(self, file: DatastoreFile, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}

        def attempt() -> bytes:
            resp = self._request("GET", file, headers=headers, stream=True)
            if resp.status_code == 206:
                data = _body(resp)
                if len(data) != length and not _ends_at(resp, offset + len(data)):
                    raise _Transient(f"short read: {len(data)} of {length} bytes at {offset}")
                return data
            resp.close()  # not read: the connection is dropped rather than reused mid-body
            if resp.status_code == 200:
                raise TransportError(f"{file}: the server ignored the Range header; it cannot serve partial reads")
            if resp.status_code == 416:
                raise TransportError(f"{file}: read at {offset} is past the end of the file")
            raise self._status_error(resp, file)

        data: bytes = self._retrying(attempt, f"read {file} at {offset}")
        return data

    def write(self, file: DatastoreFile, size: int, chunks: Callable[[], Iterator[bytes]]) -> None:
        def attempt() -> None:
            body = _SizedStream(chunks(), size)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            resp = self._request("PUT", file, headers=headers, data=body)
            if resp.status_code not in (200, 201, 204):
                raise self._status_error(resp, file)
            if body.sent != size:
                raise TransportError(f"{file}: sent {body.sent} of {size} bytes")

        self._retrying(attempt, f"upload {file}")

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    # -- internals ---------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = trusted_session(self._conn.trust)
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def _request(self, method: str, file: DatastoreFile, **kwargs: Any) -> requests.Response:
        session = self._session()
        url = self.url(file)
        try:
            resp = session.request(
                method, url, cookies={SESSION_COOKIE: self._conn.cookie()}, timeout=self._timeout, **kwargs
            )
            if resp.status_code == 401:  # the session expired: log in again, once
                resp.close()
                self._conn.relogin()
                resp = session.request(
                    method, url, cookies={SESSION_COOKIE: self._conn.cookie()}, timeout=self._timeout, **kwargs
                )
            return resp
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc

    def _status_error(self, resp: requests.Response, file: DatastoreFile) -> Exception:
        if resp.status_code in _TRANSIENT_STATUS:
            return _Transient(f"HTTP {resp.status_code} {resp.reason}")
        if resp.status_code == 404:
            return TransportError(f"{file} does not exist (was the VM or its snapshot removed?)")
        if resp.status_code in (401, 403):
            return TransportError(f"{file}: access denied (HTTP {resp.status_code}); the user needs datastore access")
        return TransportError(f"{file}: HTTP {resp.status_code} {resp.reason}")

    def _retrying(self, fn: Callable[[], Any], what: str) -> Any:
        try:
            return retry_transient(fn, transient=_Transient, what=what, log=log, attempts=ATTEMPTS)
        except _Transient as exc:
            raise TransportError(f"{what}: gave up after {ATTEMPTS} attempts: {exc}") from None


def _body(resp: requests.Response) -> bytes:
    """The whole body of a streamed response in one read (``resp.content`` joins 10 KiB pieces).

    Reading it to the end hands the connection back to the pool for the next request.
    """
    try:
        data: bytes = resp.raw.read(decode_content=True)
    except (requests.ConnectionError, OSError, HTTPError) as exc:
        raise _Transient(f"{type(exc).__name__}: {exc}") from exc
    resp._content = data
    return data


def _ends_at(resp: requests.Response, end: int) -> bool:
    """True if Content-Range says the file ends at ``end`` (a short read at the end is fine)."""
    total = resp.headers.get("Content-Range", "").rpartition("/")[2]
    return total.isdigit() and int(total) == end


class _SizedStream:
    """An iterable body of known length, so requests sends Content-Length, not chunks.

    Iterable rather than file-like: urllib3 reads a file-like body 16 KiB at a time (a copy and a
    sendall each, 64 per 1 MiB block), but hands each item of an iterable to sendall whole.
    """

    def __init__(self, chunks: Iterator[bytes], size: int) -> None:
        self._chunks = chunks
        self.len = size  # what requests' super_len reads
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if chunk:
                self.sent += len(chunk)
                yield chunk
