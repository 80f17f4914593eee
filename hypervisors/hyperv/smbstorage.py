"""The host's storage over SMB (``HostStorage``): one session per share, paths mapped by shares.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .exceptions import ConnectionFailed
from .shares import ShareMap
from .smb import SmbEncryption, SmbSettings, SmbShare, VhdxReader, upload
from .storage import StorageUnreachable


@dataclass
class SmbStorage:
    """HostStorage over SMB, one session per share, opened on first use."""

    server: str
    user: str
    password: str = field(repr=False)
    port: int = 445
    shares: ShareMap = field(default_factory=ShareMap)
    encryption: SmbEncryption = SmbEncryption.REQUIRED
    _open: dict[str, SmbShare] = field(default_factory=dict, repr=False)

    def _share(self, name: str) -> SmbShare:
        share = self._open.get(name)
        if share is None:
            share = SmbShare(SmbSettings(self.server, name, self.user, self.password, self.port, self.encryption))
            self._open[name] = share
        return share

    def open_disk(self, windows_path: str) -> VhdxReader:
        share, inner = self.shares.locate(windows_path)
        try:
            return VhdxReader(self._share(share), inner)
        except ConnectionFailed as exc:
            raise StorageUnreachable(str(exc)) from None

    def upload(self, local: Path, windows_path: str, progress: Callable[[int], None] | None = None) -> None:
        share, inner = self.shares.locate(windows_path)
        upload(self._share(share), local, inner, progress=progress)  # creates missing folders

    def remove(self, windows_path: str) -> None:
        share, inner = self.shares.locate(windows_path)
        smb = self._share(share).connect()
        if smb.exists(inner):
            smb.remove(inner)

    def close(self) -> None:
        shares, self._open = self._open, {}
        for share in shares.values():
            share.close()
