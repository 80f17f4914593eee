"""The platform contract: what every backup source implements (vSphere, Hyper-V, a disk image).

A source opens a *backup session* on a VM: a snapshot or checkpoint that freezes its disks.
The session lists the frozen disks, says which extents changed since a change token kept in
an earlier recovery point (or that a full read is needed, and why), reads byte ranges and
describes the VM's hardware. The engine then commits a recovery point in steps the session
takes part in::

    read every disk -> packs durable -> state = session.prepare_commit()
      -> point (state.tokens, state.source, session.warnings) -> save the point
           failed: session.commit_failed(), the error is raised
           saved:  session.committed = True; session.after_commit(point, previous)
    always: session.close(committed)

Points are immutable: whatever a platform must record in a point (its change tokens, the id
of a reference point) is known in ``prepare_commit``, before the point is written. Restoring a
disk set to a new VM is the other half, on the ``Platform`` (hypervisors/platforms.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from vmkeep.repository.points import RecoveryPoint


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


@dataclass(frozen=True)
class CommitState:
    """What ``prepare_commit`` hands the engine for the point about to be written.

    ``tokens``: disk key -> the change token that disk's record must hold (every disk of
    ``disks()``; a missing key records None). ``source``: keys merged into the point's
    ``source`` (e.g. the id of a Hyper-V reference point); they must not be secrets.
    """

    tokens: dict[str, str | None]
    source: dict[str, Any] = field(default_factory=dict)


class BackupSession(ABC):
    """A VM frozen for backup. Use as a context manager: ``close`` always runs.

    Subclasses call ``super().__init__()`` first: it creates the lists below.
    """

    vm_name: str
    # Bytes the engine asks for in one ``read`` where consecutive blocks are wanted: a source
    # whose requests cost much (an HTTP round trip) reads several blocks at once. 0: one block.
    read_size: int = 0

    def __init__(self) -> None:
        # Things that happened before the commit ("tracking was reset; read in full"): the engine
        # stores them in the point and the job's result shows them.
        self.warnings: list[str] = []
        # Problems while cleaning up (a snapshot that could not be removed): filled by ``close``;
        # the job's result is then WARNING, with these in its warnings.
        self.close_warnings: list[str] = []
        # Why ``after_commit`` failed, filled by the engine: the point stands, the result is WARNING.
        self.after_commit_errors: list[str] = []
        # Set by the engine once the point is durable; ``__exit__`` passes it to ``close``.
        self.committed = False

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

        ``type`` names the kind of source (a ``PlatformKind``); ``chain``, if given, identifies
        the VM beyond its name, so that only points of the same VM serve as the base of an
        incremental.
        """
        return {}

    def prepare_commit(self) -> CommitState:
        """Called once, after every disk is read and the packs are durable, just before the point is written.

        Returns the change tokens the point records and keys for its ``source``. Default: the
        tokens ``disks()`` gave, no source keys. An exception here commits nothing.
        """
        return CommitState({d.key: d.change_token for d in self.disks()})

    def commit_failed(self) -> None:  # noqa: B027 (a hook: doing nothing is the default)
        """Writing the point failed after ``prepare_commit`` succeeded: undo what it did."""

    def after_commit(self, point: RecoveryPoint, previous: RecoveryPoint | None) -> None:  # noqa: B027
        """The point is durable. ``previous`` is the point this backup was based on, or None.

        An exception here does not undo the point: it becomes a warning on the job's result.
        """

    @abstractmethod
    def close(self, committed: bool) -> None:
        """End the session: remove the snapshot or checkpoint. Always called, also on failure.

        ``committed`` says whether a point was committed. What cannot be undone is appended to
        ``close_warnings`` rather than raised. Must be safe to call twice.
        """

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close(self.committed)


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
