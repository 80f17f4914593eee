"""The host's storage over SMB: a Windows path on the host is a file on one of its shares.

By default a path on drive ``X:`` is on the administrative share ``X$`` (``C:\\Hyper-V\\a.vhdx``
is ``\\\\HOST\\C$\\Hyper-V\\a.vhdx``), as on any Windows host where the backup user is an
administrator. ``--smb-share PREFIX=SHARE[\\FOLDER]`` maps another prefix (a cluster shared
volume, a scale-out file server's share, a simulator's share). The longest matching prefix wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import smbclient

from .exceptions import ConnectionFailed, HypervError
from .smb import SmbEncryption, SmbSettings, SmbShare, VhdxReader, upload
from .storage import StorageUnreachable


@dataclass(frozen=True)
class ShareMap:
    """Windows path prefix -> (share, folder inside the share)."""

    entries: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, items: list[str]) -> ShareMap:
        """``PREFIX=SHARE`` or ``PREFIX=SHARE\\FOLDER`` items; ValueError naming a malformed one."""
        entries = []
        for item in items:
            prefix, sep, target = item.partition("=")
            share, _, folder = target.replace("/", "\\").strip("\\").partition("\\")
            if not sep or not PureWindowsPath(prefix).drive or not share:
                raise ValueError(f"--smb-share takes PREFIX=SHARE[\\FOLDER] (e.g. C:\\VMs=vms), not {item!r}")
            entries.append((str(PureWindowsPath(prefix)), share, folder))
        return cls(tuple(entries))

    def locate(self, windows_path: str) -> tuple[str, str]:
        """(share, path inside it) of a path on the host."""
        path = PureWindowsPath(windows_path)
        best: tuple[str, str, str] | None = None
        for prefix, share, folder in self.entries:
            p = PureWindowsPath(prefix)
            if path.parts[: len(p.parts)] == p.parts and (
                best is None or len(p.parts) > len(PureWindowsPath(best[0]).parts)
            ):
                best = (prefix, share, folder)
        if best is not None:
            rest = path.parts[len(PureWindowsPath(best[0]).parts) :]
            return best[1], "\\".join(part for part in (best[2], *rest) if part)
        if not path.drive or not path.drive.endswith(":"):
            raise HypervError(f"{windows_path}: not a path on a drive of the host; map it with --smb-share")
        return path.drive[0].upper() + "$", "\\".join(path.parts[1:])


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
        smb = self._share(share).connect()
        folder = inner.rpartition("\\")[0]
        if folder:
            with smb.errors(folder):
                smbclient.makedirs(smb.unc(folder), exist_ok=True, **smb.kwargs())
        upload(smb, local, inner, progress=progress)

    def remove(self, windows_path: str) -> None:
        share, inner = self.shares.locate(windows_path)
        smb = self._share(share).connect()
        if smb.exists(inner):
            smb.remove(inner)

    def close(self) -> None:
        shares, self._open = self._open, {}
        for share in shares.values():
            share.close()
