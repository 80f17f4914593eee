"""Deciding, per disk, between an incremental and a full read, and which blocks to read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmkeep.hypervisors.base import BackupSession, Changes, DiskInfo, Extent, FullRead, merge_extents
from vmkeep.repository.exceptions import CorruptRepository
from vmkeep.repository.points import MODE_FULL, MODE_INCREMENTAL, DiskRecord, ReadMode, RecoveryPoint
from vmkeep.repository.tree import walk_nodes

if TYPE_CHECKING:
    from vmkeep.repository.repo import Repository


@dataclass
class DiskPlan:
    disk: DiskInfo
    mode: ReadMode
    reason: str | None  # why a full read
    runs: list[range]  # block numbers to read, as sorted disjoint runs
    previous: DiskRecord | None  # the record the incremental builds on
    from_allocation: bool = False  # a full read limited to the source's allocation map

    @property
    def block_count(self) -> int:
        return sum(len(r) for r in self.runs)

    def blocks(self) -> Iterator[int]:
        for run in self.runs:
            yield from run


def plan_disk(
    session: BackupSession,
    disk: DiskInfo,
    previous_point: RecoveryPoint | None,
    block_size: int,
    *,
    force_full: str | None = None,
    use_allocation: bool = True,
) -> DiskPlan:
    """Incremental when the previous point's record of this disk can be trusted, else full."""
    prev = previous_point.disk(disk.key) if previous_point is not None else None
    reason: str | None
    if force_full:
        reason = force_full
    elif previous_point is None:
        reason = "no earlier recovery point of this VM"
    elif prev is None:
        reason = "the disk is new since the previous recovery point"
    elif prev.capacity != disk.capacity:
        reason = f"the disk was resized from {prev.capacity} to {disk.capacity} bytes"
    elif prev.identity != disk.identity:
        changed = sorted(
            k for k in set(prev.identity) | set(disk.identity) if prev.identity.get(k) != disk.identity.get(k)
        )
        reason = f"the disk was replaced or moved ({', '.join(changed)} changed)"
    else:
        answer = session.changes_since(disk, prev.change_token)
        if isinstance(answer, Changes):
            runs = extents_to_runs(merge_extents(answer.extents), block_size)
            return DiskPlan(disk, MODE_INCREMENTAL, None, runs, prev)
        assert isinstance(answer, FullRead)
        reason = answer.reason
    allocated = session.allocated(disk) if use_allocation else None
    if allocated is not None:
        return DiskPlan(disk, MODE_FULL, reason, extents_to_runs(merge_extents(allocated), block_size), None, True)
    nblocks = -(-disk.capacity // block_size)
    return DiskPlan(disk, MODE_FULL, reason, [range(nblocks)] if nblocks else [], None)


def previous_damage(repo: Repository, previous: DiskRecord) -> str | None:
    """Why the previous point's references cannot be reused for an incremental, or None.

    An incremental keeps the previous point's ids for every block it does not read. If some of
    them are known damaged or missing (recorded by verify or repair), the new point would
    inherit the damage; a full read instead stores those blocks afresh, which also heals every
    older point that uses them. The walk costs one read of the previous tree, and is done only
    when the repository holds known damage.
    """
    geometry = repo.geometry(previous.capacity)
    root = bytes.fromhex(previous.tree)
    if not repo.index.has_damage:
        return None
    try:
        unusable = sum(
            1 for _level, blob_id in walk_nodes(root, geometry, repo.read_blob, set()) if blob_id not in repo.index
        )
    except CorruptRepository as exc:
        return f"the previous point's block list is damaged ({exc}); reading in full to heal it"
    if unusable:
        return (
            f"the previous point references {unusable} damaged or missing block(s); reading in full "
            "so that they are stored again (which heals the older points too)"
        )
    return None


def extents_to_runs(extents: list[Extent], block_size: int) -> list[range]:
    """The blocks of the repository's grid that the (sorted, merged) extents touch."""
    runs: list[range] = []
    for ext in extents:
        if ext.length <= 0:
            continue
        first, last = ext.offset // block_size, (ext.end - 1) // block_size + 1
        if runs and first <= runs[-1].stop:
            first = runs[-1].start
            last = max(last, runs[-1].stop)
            runs.pop()
        runs.append(range(first, last))
    return runs


def complement(runs: list[range], nblocks: int) -> list[range]:
    """Blocks of ``range(nblocks)`` not in ``runs``."""
    out: list[range] = []
    pos = 0
    for run in runs:
        if run.start > pos:
            out.append(range(pos, run.start))
        pos = max(pos, run.stop)
    if pos < nblocks:
        out.append(range(pos, nblocks))
    return out
