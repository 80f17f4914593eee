"""Comparing a recovery point with its live source, block by block (Benji's ``--source`` compare).

This is what proves a change list was complete, which the CBT sanity check cannot: a sample of
unchanged blocks catches change tracking that failed as a whole, not one block it missed. Every
block of every disk is read from the source (through the hypervisor's BackupSession, so any
source can be compared) and from the repository (through the restore path, so what is checked is
what a restore would write), and compared byte for byte.

The source must hold the state the point was taken from (an image kept still, a snapshot):
anything written to it since shows as a difference.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from vmkeep.hypervisors.base import BackupSession, DiskInfo
from vmkeep.repository.format import FORMAT
from vmkeep.repository.points import DiskRecord, RecoveryPoint
from vmkeep.repository.repo import Repository

from . import cancel
from .pipeline import ordered_map
from .progress import Progress
from .restore import stored_blocks
from .zeros import is_zero

ZERO = FORMAT.ZERO_ID
MAX_REPORTED = 10  # differing offsets listed per disk; all of them are counted


@dataclass
class DiskComparison:
    key: str
    capacity: int  # as recorded in the point
    source_capacity: int | None  # None: the source has no disk of this key
    blocks: int = 0  # blocks compared
    differing_blocks: int = 0
    first_differences: list[int] = field(default_factory=list)  # byte offsets of the first differing blocks
    bytes_read: int = 0  # from the source

    @property
    def identical(self) -> bool:
        return self.source_capacity == self.capacity and self.differing_blocks == 0


@dataclass
class Comparison:
    point: RecoveryPoint
    block_size: int
    disks: list[DiskComparison]
    source_only: list[str]  # keys of source disks the point does not hold

    @property
    def identical(self) -> bool:
        return not self.source_only and all(d.identical for d in self.disks)


def compare_with_source(
    repo: Repository, point: RecoveryPoint, session: BackupSession, workers: int, progress: Progress | None = None
) -> Comparison:
    """Compare every block of ``point`` with the same block of ``session``'s disks."""
    progress = progress or Progress()
    sources = {d.key: d for d in session.disks()}
    disks = []
    for record in point.disks:
        source = sources.get(record.key)
        result = DiskComparison(record.key, record.capacity, source.capacity if source is not None else None)
        if source is not None and source.capacity == record.capacity:
            progress.disk_started(point.vm, record.name, record.capacity, "compare", None)
            _compare_disk(repo, record, session, source, workers=workers, result=result, progress=progress)
            progress.disk_finished(record.name)
        disks.append(result)
    recorded = {d.key for d in point.disks}
    return Comparison(point, repo.config.block_size, disks, sorted(k for k in sources if k not in recorded))


def _compare_disk(
    repo: Repository,
    record: DiskRecord,
    session: BackupSession,
    source: DiskInfo,
    *,
    workers: int,
    result: DiskComparison,
    progress: Progress,
) -> None:
    block_size = repo.config.block_size

    def compare(item: tuple[int, bytes]) -> tuple[int, int, bool]:
        offset, blob_id = item
        length = min(block_size, record.capacity - offset)
        actual = session.read(source, offset, length)
        if len(actual) != length:
            return offset, len(actual), False
        same = is_zero(actual) if blob_id == ZERO else actual == repo.read_blob(blob_id)
        return offset, length, same

    for offset, nbytes, same in ordered_map(compare, _expected_blocks(repo, record), workers, 4 * workers):
        cancel.check()
        result.blocks += 1
        result.bytes_read += nbytes
        progress.advance(nbytes)
        if not same:
            result.differing_blocks += 1
            if len(result.first_differences) < MAX_REPORTED:
                result.first_differences.append(offset)


def _expected_blocks(repo: Repository, record: DiskRecord) -> Iterator[tuple[int, bytes]]:
    """(offset, block id) of every block of the disk, ``ZERO`` for the blocks never stored."""
    stored = stored_blocks(repo, record)
    following = next(stored, None)
    for offset in range(0, record.capacity, repo.config.block_size):
        if following is not None and following[0] == offset:
            yield following
            following = next(stored, None)
        else:
            yield offset, ZERO
