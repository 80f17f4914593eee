"""Where a Hyper-V host's files are on SMB: a Windows path on the host is a file on one of its shares.

By default a path on drive ``X:`` is on the administrative share ``X$`` (``C:\\Hyper-V\\a.vhdx``
is ``\\\\HOST\\C$\\Hyper-V\\a.vhdx``), as on any Windows host where the backup user is an
administrator. ``--smb-share PREFIX=SHARE[\\FOLDER]`` maps another prefix (a cluster shared
volume, a scale-out file server's share, a simulator's share); the longest matching prefix wins.
Pure data: the job file's checks use it without the SMB libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PureWindowsPath

from .exceptions import HypervError


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
