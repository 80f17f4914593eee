"""VHDX files on a Hyper-V host's SMB share: read a virtual disk's bytes, upload a file.

:class:`SmbShare` is one authenticated SMB session (smbprotocol's ``smbclient``, with a
connection cache of its own so nothing is shared with other shares or left in the global pool),
encrypted by default. The password goes to ``register_session`` and nowhere else.

:class:`VhdxReader` opens a ``.vhdx`` on the share read-only (other readers and Hyper-V itself
keep their access: share mode read+write) and parses it with ``dissect.hypervisor``, so
``read(offset, length)`` takes offsets into the *virtual disk*, as RCT's changed ranges are,
and the BAT is translated on the client.

Parallel reads: **one file handle and one parser per worker thread**, all over the one SMB
session. dissect's VHDX is a stream with a position and a cache (seek, then read), so a shared
handle would need a lock held across every network round trip, serialising the workers; SMB
multiplexes requests from several handles on one connection, so separate handles read in
parallel for the price of one CREATE each. A lost connection is retried a bounded number of
times on a new session (every thread then reopens its handle).

:func:`upload` writes a local file to the share in chunks, under a temporary name; it flushes
(SMB2 FLUSH, which a Windows server turns into FlushFileBuffers) and closes it, and only then
renames it into place, so a half-written file never carries the final name.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import smbclient
from dissect.hypervisor.disk.vhdx import VHDX
from smbprotocol.exceptions import (
    AccessDenied as SmbAccessDenied,
)
from smbprotocol.exceptions import (
    BadNetworkName,
    LogonFailure,
    ObjectNameCollision,
    ObjectNameNotFound,
    ObjectPathNotFound,
    SMBAuthenticationError,
    SMBConnectionClosed,
    SMBException,
    SMBOSError,
)
from smbprotocol.header import NtStatus

from ..base import Extent
from ..retry import retry_transient
from .exceptions import (
    AccessDenied,
    AuthenticationFailed,
    ConnectionFailed,
    HypervError,
    RemoteFileNotFound,
    ShareNotFound,
)
from .vhdxmap import allocated_extents

log = logging.getLogger(__name__)

UPLOAD_CHUNK = 4 * 1024 * 1024
_SHARE_MISSING = (
    NtStatus.STATUS_BAD_NETWORK_NAME,
    NtStatus.STATUS_NOT_FOUND,  # Samba's answer after the DFS referral smbclient asks for first
    NtStatus.STATUS_OBJECT_NAME_NOT_FOUND,
    NtStatus.STATUS_OBJECT_PATH_NOT_FOUND,
)
T = TypeVar("T")


class SmbEncryption(enum.StrEnum):
    REQUIRED = "required"  # SMB3 encryption or no connection (the default)
    IF_SERVER_REQUIRES = "if-server-requires"  # only signed, unless the share demands encryption


@dataclass(frozen=True)
class SmbSettings:
    server: str
    share: str
    user: str  # user, DOMAIN\\user or user@domain
    password: str = field(repr=False)
    port: int = 445
    encryption: SmbEncryption = SmbEncryption.REQUIRED
    require_signing: bool = True
    connection_timeout: int = 30
    attempts: int = 3  # tries of one read when the connection is lost
    retry_wait: float = 0.5


class _Transient(ConnectionFailed):
    """A lost or refused connection: retried where a retry is safe, else it is the ConnectionFailed."""


class SmbShare:
    """One SMB session to ``\\\\server\\share``. Thread-safe; close it when done."""

    def __init__(self, settings: SmbSettings) -> None:
        self.settings = settings
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.generation = 0  # bumped on every reconnect; handles of an older generation are dead
        self._connected = False

    def unc(self, path: str) -> str:
        """``\\\\server\\share\\path`` for a path inside the share ('/' or '\\' separated)."""
        inner = "\\".join(p for p in path.replace("/", "\\").split("\\") if p)
        return f"\\\\{self.settings.server}\\{self.settings.share}\\{inner}"

    def connect(self) -> SmbShare:
        """Log in to the share once; ConnectionFailed if the server cannot be reached."""
        try:
            return self._connect()
        except _Transient as exc:
            raise ConnectionFailed(str(exc)) from None

    def _connect(self) -> SmbShare:
        with self._lock:
            if not self._connected:
                s = self.settings
                with self.errors(f"\\\\{s.server}\\{s.share}"):
                    smbclient.register_session(
                        s.server,
                        username=s.user,
                        password=s.password,
                        port=s.port,
                        encrypt=True if s.encryption is SmbEncryption.REQUIRED else None,
                        connection_timeout=s.connection_timeout,
                        connection_cache=self._cache,
                        require_signing=s.require_signing,
                    )
                    # Listing the share's root checks that the share exists, once, here.
                    try:
                        smbclient.listdir(self.unc(""), **self.kwargs())
                    except SMBOSError as exc:
                        if exc.ntstatus in _SHARE_MISSING:
                            raise ShareNotFound(
                                f"{s.server} has no share {s.share!r} (or {s.user!r} may not see it)"
                            ) from None
                        raise
                self._connected = True
        return self

    def reconnect(self, seen_generation: int) -> None:
        """Start a new session, unless another thread already did since ``seen_generation``."""
        with self._lock:
            if self.generation != seen_generation:
                return
            self._reset()
            self.generation += 1
        self.connect()

    def _reset(self) -> None:
        with contextlib.suppress(Exception):
            smbclient.reset_connection_cache(fail_on_error=False, connection_cache=self._cache)
        self._cache = {}
        self._connected = False

    def close(self) -> None:
        with self._lock:
            self._reset()

    def __enter__(self) -> SmbShare:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def kwargs(self) -> dict[str, Any]:
        return {"port": self.settings.port, "connection_cache": self._cache}

    def exists(self, path: str) -> bool:
        with self.errors(path):
            try:
                smbclient.stat(self.unc(path), **self.kwargs())
            except SMBOSError as exc:
                if exc.ntstatus in (NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, NtStatus.STATUS_OBJECT_PATH_NOT_FOUND):
                    return False
                raise
        return True

    def remove(self, path: str) -> None:
        with self.errors(path):
            smbclient.remove(self.unc(path), **self.kwargs())

    def open_read(self, path: str) -> BinaryIO:
        """A read-only handle on ``path``; others (Hyper-V) may keep reading and writing it."""
        with self.errors(path):
            fh = smbclient.open_file(self.unc(path), mode="rb", share_access="rw", **self.kwargs())
        return fh  # type: ignore[no-any-return]

    @contextlib.contextmanager
    def errors(self, path: str) -> Iterator[None]:
        """smbprotocol's exceptions as vmkeep's, naming the server and path (never the password)."""
        s = self.settings
        where = f"\\\\{s.server}\\{s.share}"
        try:
            yield
        except HypervError:
            raise
        except (LogonFailure, SMBAuthenticationError):
            raise AuthenticationFailed(
                f"{s.server} refused the SMB login of {s.user!r} (wrong user name or password?)"
            ) from None
        except BadNetworkName:
            raise ShareNotFound(f"{s.server} has no share {s.share!r} (or {s.user!r} may not see it)") from None
        except (ObjectNameNotFound, ObjectPathNotFound):
            raise RemoteFileNotFound(f"{where}: {path} does not exist") from None
        except SmbAccessDenied:
            raise AccessDenied(f"{where}: access to {path} denied for {s.user!r}") from None
        except ObjectNameCollision:
            raise HypervError(f"{where}: {path} already exists") from None
        except SMBOSError as exc:
            raise _os_error(exc, where, path) from None
        except SMBConnectionClosed:
            raise _Transient(f"the SMB connection to {s.server} was closed") from None
        except (ConnectionError, TimeoutError, OSError) as exc:
            raise _Transient(f"SMB connection to {s.server}:{s.port} failed: {exc.strerror or exc}") from None
        except SMBException as exc:
            raise HypervError(f"{where}: {path}: {exc}") from None
        except ValueError as exc:  # smbprotocol raises it for a failed socket connect and a few protocol states
            raise _Transient(f"SMB connection to {s.server}:{s.port} failed: {exc}") from None

    def retrying(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried on a new session when the connection is lost (bounded)."""
        s = self.settings

        def attempt() -> T:
            generation = self.generation
            try:
                return fn()
            except _Transient:
                with contextlib.suppress(_Transient, HypervError):
                    self.reconnect(generation)
                raise

        try:
            return retry_transient(
                attempt, transient=_Transient, what=what, log=log, attempts=s.attempts, wait=s.retry_wait
            )
        except _Transient as exc:
            raise ConnectionFailed(f"{what}: {exc}; gave up after {s.attempts} attempts") from None


def _os_error(exc: SMBOSError, where: str, path: str) -> HypervError:
    status = exc.ntstatus
    if status in (NtStatus.STATUS_OBJECT_NAME_NOT_FOUND, NtStatus.STATUS_OBJECT_PATH_NOT_FOUND):
        return RemoteFileNotFound(f"{where}: {path} does not exist")
    if status == NtStatus.STATUS_ACCESS_DENIED:
        return AccessDenied(f"{where}: access to {path} denied")
    if status == NtStatus.STATUS_OBJECT_NAME_COLLISION:
        return HypervError(f"{where}: {path} already exists")
    if status == NtStatus.STATUS_BAD_NETWORK_NAME:
        return ShareNotFound(f"{where} does not exist")
    return HypervError(f"{where}: {path}: {exc.strerror}")


@dataclass
class _Handle:
    generation: int
    file: BinaryIO
    vhdx: VHDX


class VhdxReader:
    """The virtual disk inside a VHDX file on the share: ``read(offset, length)`` and ``size``."""

    def __init__(self, share: SmbShare, path: str) -> None:
        self.share = share.connect()
        self.path = path
        self._local = threading.local()
        self._handles: list[_Handle] = []
        self._lock = threading.Lock()
        first = share.retrying(self._handle, f"opening {path}")
        self.size: int = int(first.vhdx.size)
        self.block_size: int = int(first.vhdx.block_size)
        self.disk_id: uuid.UUID = first.vhdx.id

    def _handle(self) -> _Handle:
        handle: _Handle | None = getattr(self._local, "handle", None)
        if handle is not None and handle.generation == self.share.generation:
            return handle
        generation = self.share.generation
        fh = self.share.open_read(self.path)
        try:
            with self.share.errors(self.path):
                vhdx = _parse(fh, self.share.unc(self.path))
        except BaseException:
            fh.close()
            raise
        handle = _Handle(generation, fh, vhdx)
        self._local.handle = handle
        with self._lock:
            self._handles.append(handle)
        return handle

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the virtual disk at ``offset`` (short only at the disk's end)."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range {offset}+{length}")
        length = max(0, min(length, self.size - offset))
        if length == 0:
            return b""

        def once() -> bytes:
            handle = self._handle()
            with self.share.errors(self.path):
                handle.vhdx.seek(offset)
                return bytes(handle.vhdx.read(length))

        return self.share.retrying(once, f"reading {self.path}")

    def allocated(self) -> list[Extent]:
        """Extents of the virtual disk present in the file (its BAT, read in one request)."""
        handle = self.share.retrying(self._handle, f"opening {self.path}")
        with self.share.errors(self.path):
            return allocated_extents(handle.vhdx)

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            with contextlib.suppress(Exception):
                handle.file.close()

    def __enter__(self) -> VhdxReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(fh: BinaryIO, name: str) -> VHDX:
    try:
        vhdx = VHDX(fh)
    except (EOFError, ValueError, KeyError) as exc:
        raise HypervError(f"{name} is not a readable VHDX file: {exc}") from None
    except Exception as exc:  # dissect raises its own InvalidSignature and struct errors
        if type(exc).__module__.startswith("dissect"):
            raise HypervError(f"{name} is not a VHDX file: {exc}") from None
        raise
    if vhdx.has_parent:
        raise HypervError(f"{name} is a differencing disk; read its parent (the frozen VHDX) instead")
    return vhdx


def upload(
    share: SmbShare,
    local: Path,
    remote: str,
    *,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Copy ``local`` to ``remote`` on the share; returns the bytes written.

    Missing folders are created. Written under ``<remote>.<random>.partial``, flushed and
    closed, then renamed; an existing ``remote`` is an error unless ``overwrite``. No retry: a
    lost connection leaves no file under the final name, and the caller decides whether to
    start again.
    """
    partial = f"{remote}.{uuid.uuid4().hex[:8]}.partial"
    written = 0
    try:
        share.connect()
        if share.exists(remote):
            if not overwrite:
                raise HypervError(f"{share.unc(remote)} already exists; not overwriting it")
            share.remove(remote)
        with share.errors(remote):
            parent = remote.replace("\\", "/").rstrip("/").rpartition("/")[0]
            if parent:
                smbclient.makedirs(share.unc(parent), exist_ok=True, **share.kwargs())
            with (
                local.open("rb") as src,
                smbclient.open_file(share.unc(partial), mode="xb", buffering=0, **share.kwargs()) as dst,
            ):
                while chunk := src.read(UPLOAD_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        n = dst.write(view)
                        view = view[n:]
                    written += len(chunk)
                    if progress is not None:
                        progress(written)
                dst.flush()  # SMB2 FLUSH: the server writes its caches to disk
            smbclient.rename(share.unc(partial), share.unc(remote), **share.kwargs())
    except _Transient as exc:
        raise ConnectionFailed(f"uploading {local.name} to {share.unc(remote)}: {exc}") from None
    except BaseException:
        with contextlib.suppress(Exception):
            share.remove(partial)
        raise
    return written
