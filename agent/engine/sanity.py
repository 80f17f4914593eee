"""The CBT sanity check (after Benji): re-read a sample of blocks that change tracking calls
unchanged, and compare them with the previous point. One mismatch means the change list cannot
be trusted, and the disk is read in full instead; vmkeep never stores a wrong incremental.
"""

from __future__ import annotations

import random

from vmkeep.hypervisors.base import BackupSession
from vmkeep.repository.format import FORMAT
from vmkeep.repository.points import DiskRecord
from vmkeep.repository.repo import Repository
from vmkeep.repository.tree import leaf_refs

from .pipeline import ordered_map
from .plan import DiskPlan, complement
from .zeros import is_zero

MAX_AUTOMATIC_SAMPLE = 256


def sample_size(unchanged: int, requested: int | None) -> int:
    """Blocks to re-read: 8, or 1 in 1024 of the unchanged blocks, at most 256 (or as asked)."""
    if requested is not None:
        return min(unchanged, max(requested, 0))
    return min(unchanged, max(8, min(MAX_AUTOMATIC_SAMPLE, unchanged // 1024)))


def check_unchanged_blocks(
    session: BackupSession,
    repo: Repository,
    plan: DiskPlan,
    prev_leaves: list[bytes],
    *,
    requested: int | None,
    record: DiskRecord,
    workers: int = 4,
) -> str | None:
    """Return why the change list cannot be trusted, or None if the sample matched.

    Bytes re-read are added to ``record.read_bytes`` and ``record.sanity_bytes``.
    """
    disk = plan.disk
    geometry = repo.geometry(disk.capacity)
    unchanged = complement(plan.runs, geometry.blocks)
    count = sample_size(sum(len(r) for r in unchanged), requested)
    if count == 0:
        return None
    rng = random.Random()
    chosen = sorted(_pick(unchanged, count, rng))
    block_size = repo.config.block_size
    leaf_cache: dict[int, list[bytes]] = {}

    def read_id(block: int) -> tuple[int, int, bytes]:
        offset = block * block_size
        data = session.read(disk, offset, min(block_size, disk.capacity - offset))
        return block, len(data), FORMAT.ZERO_ID if is_zero(data) else repo.codec.blob_id(data)

    for block, nbytes, actual in ordered_map(read_id, chosen, workers, 2 * workers):
        leaf = block // geometry.fanout
        if leaf not in leaf_cache:
            leaf_cache[leaf] = leaf_refs(prev_leaves[leaf], geometry, leaf, repo.read_blob)
        expected = leaf_cache[leaf][block - leaf * geometry.fanout]
        offset = block * block_size
        record.read_bytes += nbytes
        record.sanity_bytes += nbytes
        if actual != expected:
            return (
                f"change tracking reported block {block} (offset {offset}) unchanged, but it differs "
                "from the previous recovery point (CBT sanity check)"
            )
    return None


def _pick(runs: list[range], count: int, rng: random.Random) -> set[int]:
    """``count`` distinct blocks from ``runs``: half from the start of the disk, half at random."""
    total = sum(len(r) for r in runs)
    positions = set(range(count // 2))
    while len(positions) < count:
        positions.add(rng.randrange(total))
    chosen = set()
    for position in positions:
        rest = position
        for run in runs:
            if rest < len(run):
                chosen.add(run[rest])
                break
            rest -= len(run)
    return chosen


def check_unallocated_blocks(
    session: BackupSession, plan: DiskPlan, block_size: int, record: DiskRecord, workers: int = 4
) -> str | None:
    """For a full read limited to an allocation map: re-read a sample of the blocks it calls
    unused, which must be zeros. Return why the map cannot be trusted, or None.
    """
    disk = plan.disk
    nblocks = -(-disk.capacity // block_size)
    unused = complement(plan.runs, nblocks)
    count = sample_size(sum(len(r) for r in unused), None)

    def read_zero(block: int) -> tuple[int, int, bool]:
        offset = block * block_size
        data = session.read(disk, offset, min(block_size, disk.capacity - offset))
        return block, len(data), is_zero(data)

    for block, nbytes, zero in ordered_map(
        read_zero, sorted(_pick(unused, count, random.Random())), workers, 2 * workers
    ):
        offset = block * block_size
        record.read_bytes += nbytes
        record.sanity_bytes += nbytes
        if not zero:
            return (
                f"the allocation map calls block {block} (offset {offset}) unused, but it holds data; "
                "reading every block"
            )
    return None
