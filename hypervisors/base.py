"""The one small interface every backup source implements (vSphere, Hyper-V, a disk image).

A source opens a *backup session* on a VM: a snapshot or checkpoint that freezes its disks.
The session lists the frozen disks, says which extents changed since a change token kept in
an earlier recovery point (or that a full read is needed, and why), reads byte ranges,
describes the VM's hardware, and is always closed, also on failure, which removes the
snapshot. Restoring a disk set to a new VM is the other half, added per platform.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self


@dataclass(frozen=True)
class Extent:
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class DiskInfo:
    """A frozen disk of a backup session."""

    key: str  # stable within the VM: vSphere device key, Hyper-V controller location, "disk0"
    capacity: int  # bytes
    label: str = ""  # for humans: "Hard disk 1", a file name
    change_token: str | None = None  # vSphere changeId / Hyper-V RCT id at this snapshot
    identity: dict[str, Any] = field(default_factory=dict)  # uuid, path...: if it differs, read in full


@dataclass(frozen=True)
class FullRead:
    """Change tracking cannot answer for this disk: read all of it. ``reason`` is shown and stored."""

    reason: str


@dataclass(frozen=True)
class Changes:
    """Extents changed since the given token. May over-report; must never miss a change."""

    extents: list[Extent]


class BackupSession(ABC):
    """A VM frozen for backup. Use as a context manager: ``close`` always runs."""

    vm_name: str
    cleanup_error: str | None = None  # set by ``close`` when it could not undo something (a snapshot)

    @abstractmethod
    def disks(self) -> list[DiskInfo]: ...

    @abstractmethod
    def changes_since(self, disk: DiskInfo, token: str | None) -> Changes | FullRead:
        """What changed on ``disk`` since ``token`` (from the previous point's record of it)."""

    def allocated(self, disk: DiskInfo) -> list[Extent] | None:
        """Extents that may hold data, for a full read; None if the source cannot tell."""
        return None

    @abstractmethod
    def read(self, disk: DiskInfo, offset: int, length: int) -> bytes:
        """Bytes of the frozen disk. Short only at the end of the disk."""

    def hardware(self) -> dict[str, Any]:
        """What restore-to-host needs to recreate the VM (CPU, memory, firmware, disks, networks)."""
        return {}

    def source_info(self) -> dict[str, Any]:
        """Where the backup came from, recorded in the point (no secrets).

        ``type`` names the kind of source; ``chain``, if given, identifies the VM beyond its
        name, so that only points of the same VM serve as the base of an incremental.
        """
        return {}

    @abstractmethod
    def close(self) -> None:
        """End the session: remove the snapshot or checkpoint. Must be safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class DiskImage:
    """A disk to restore: its key in the recorded hardware, its size, and its whole content.

    ``stream()`` yields every byte of the disk in order (zeros included), and may be called
    again to start over (an upload retried after a dropped connection).
    """

    key: str
    capacity: int
    stream: Callable[[], Iterator[bytes]]


def merge_extents(extents: list[Extent]) -> list[Extent]:
    """Sort and merge overlapping or touching extents; drop empty ones."""
    merged: list[Extent] = []
    for ext in sorted((e for e in extents if e.length > 0), key=lambda e: e.offset):
        if merged and ext.offset <= merged[-1].end:
            last = merged[-1]
            merged[-1] = Extent(last.offset, max(last.end, ext.end) - last.offset)
        else:
            merged.append(ext)
    return merged
