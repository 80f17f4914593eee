"""The CBT sanity check (after Benji), made cheap: compare small windows of unchanged blocks.

Change tracking that fails does so as a whole (a reset, a lost bitmap, a stale changeId, hints
taken from the wrong snapshot): then many blocks it calls unchanged differ, and any sample finds
one. So the check re-reads a few *windows* (64 KiB at a random aligned offset) of distinct blocks
that the change list calls unchanged, and compares each with the same bytes of that block in the
previous point, read from the repository (local, and cheap next to the source). One mismatch
means the change list cannot be trusted, and the disk is read in full instead.

The default is :data:`DEFAULT_WINDOWS` windows **per disk**: 1 MiB of source reads for a disk of
any size. Per disk, because change tracking fails per disk (each has its own changeId, CBT
file or RCT file, and one can be lost alone), so a per-VM budget would leave some disks of a
many-disk VM unchecked. A quarter of the windows look at the start of the first unchanged blocks,
where partition tables and file-system superblocks live and change with almost every write; the
rest are spread at random over the whole disk.

A full read limited to an allocation map (CBT's ``changeId="*"``, an image's holes) gets the same
kind of sample of the blocks the map calls unused, which must read as zeros.
"""

from __future__ import annotations

import random
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmkeep.repository.format import FORMAT
from vmkeep.repository.tree import leaf_refs

from .pipeline import ordered_map
from .plan import DiskPlan, complement
from .sample_size import DEFAULT_WINDOWS, WINDOW
from .zeros import is_zero

if TYPE_CHECKING:
    from vmkeep.hypervisors.base import BackupSession
    from vmkeep.repository.points import DiskRecord
    from vmkeep.repository.repo import Repository

START_SHARE = 4  # 1/START_SHARE of the windows are at the start of the first unchanged blocks
REPOSITORY_READERS = 8  # threads reading the previous point's blocks for the comparison


@dataclass(frozen=True, order=True)
class Window:
    offset: int  # in the disk, aligned to the window size
    length: int  # short only at the end of the disk
    block: int  # the repository block that holds it

    def __str__(self) -> str:
        return f"bytes {self.offset}..{self.offset + self.length - 1} of block {self.block}"


def sample_windows(runs: list[range], count: int, block_size: int, capacity: int, rng: random.Random) -> list[Window]:
    """Up to ``count`` windows inside the blocks of ``runs``, in disk order.

    One window per block, in as many distinct blocks as ``count`` allows; only when ``count``
    exceeds the blocks do some blocks get more than one window (every window of every block, if
    ``count`` is that large). The choice depends only on the arguments and the state of ``rng``,
    so a seeded ``rng`` makes it reproducible (tests put a write inside a window this way).
    """
    window = min(WINDOW, block_size)
    per_block = block_size // window
    blocks = sum(len(r) for r in runs)
    count = min(max(count, 0), blocks * per_block)
    if count == 0:
        return []

    def block_at(position: int) -> int:
        for run in runs:
            if position < len(run):
                return run[position]
            position -= len(run)
        raise IndexError(position)

    chosen: set[tuple[int, int]] = set()  # (block, window index inside it)
    distinct = min(count, blocks)
    if count >= blocks * per_block:
        chosen = {(block_at(p), k) for p in range(blocks) for k in range(per_block)}
    else:
        start = min(distinct // START_SHARE, blocks)
        positions = set(range(start))
        chosen = {(block_at(p), 0) for p in positions}
        for p in sorted(rng.sample(range(start, blocks), distinct - start)):
            chosen.add((block_at(p), rng.randrange(per_block)))
        while len(chosen) < count:  # more windows than blocks: further windows of random blocks
            chosen.add((block_at(rng.randrange(blocks)), rng.randrange(per_block)))
    windows = []
    for block, k in sorted(chosen):
        offset = block * block_size + k * window
        if offset < capacity:  # the last block of a disk may be short
            windows.append(Window(offset, min(window, capacity - offset), block))
    return windows


def sample_count(requested: int | None) -> int:
    """Windows to compare per disk: ``requested`` (0 turns the check off), else the default."""
    return DEFAULT_WINDOWS if requested is None else max(requested, 0)


def check_unchanged_blocks(
    session: BackupSession,
    repo: Repository,
    plan: DiskPlan,
    prev_leaves: list[bytes],
    *,
    requested: int | None,
    record: DiskRecord,
    workers: int = 4,
    seed: int | None = None,
) -> str | None:
    """Return why the change list cannot be trusted, or None if every sampled window matched.

    Bytes re-read are added to ``record.read_bytes`` and ``record.sanity_bytes``, windows to
    ``record.sanity_windows``.
    """
    disk = plan.disk
    geometry = repo.geometry(disk.capacity)
    block_size = repo.config.block_size
    unchanged = complement(plan.runs, geometry.blocks)
    windows = sample_windows(unchanged, sample_count(requested), block_size, disk.capacity, random.Random(seed))
    leaf_cache: dict[int, list[bytes]] = {}

    def previous_id(block: int) -> bytes:
        leaf = block // geometry.fanout
        refs = leaf_cache.get(leaf)
        if refs is None:
            refs = leaf_cache[leaf] = leaf_refs(prev_leaves[leaf], geometry, leaf, repo.read_blob)
        return refs[block - leaf * geometry.fanout]

    # The previous ids are looked up here, on one thread: the leaf cache needs no lock.
    work = [(w, previous_id(w.block)) for w in windows]

    def read_source(w: Window) -> bytes:
        return session.read(disk, w.offset, w.length)

    def read_previous(item: tuple[Window, bytes]) -> bytes | None:
        """The window's bytes in the previous point; None where that block was all zeros."""
        w, blob_id = item
        if blob_id == FORMAT.ZERO_ID:
            return None
        inside = w.offset - w.block * block_size
        return repo.read_blob(blob_id)[inside : inside + w.length]

    # Both sides are read at once. The repository's side waits on its disk more than on the CPU
    # (packs are written with O_DIRECT, so the page cache rarely holds them): 16 cold blocks took
    # 32-40 ms on 2 threads and 20-24 ms on 4 to 16 here, hence a wider pool of its own.
    source = ordered_map(read_source, windows, workers, 2 * workers)
    previous = ordered_map(read_previous, work, REPOSITORY_READERS, 2 * REPOSITORY_READERS)
    with closing(source), closing(previous):
        for w, actual, expected in zip(windows, source, previous, strict=True):
            record.read_bytes += len(actual)
            record.sanity_bytes += len(actual)
            record.sanity_windows += 1
            same = len(actual) == w.length and is_zero(actual) if expected is None else actual == expected
            if not same:
                return (
                    f"change tracking reported block {w.block} unchanged, but its {_span(w)} differ "
                    "from the previous recovery point (CBT sanity check)"
                )
    return None


def check_unallocated_blocks(
    session: BackupSession,
    plan: DiskPlan,
    block_size: int,
    record: DiskRecord,
    workers: int = 4,
    *,
    requested: int | None = None,
    seed: int | None = None,
) -> str | None:
    """For a full read limited to an allocation map: windows of the blocks it calls unused must
    read as zeros. Return why the map cannot be trusted, or None.
    """
    disk = plan.disk
    unused = complement(plan.runs, -(-disk.capacity // block_size))
    windows = sample_windows(unused, sample_count(requested), block_size, disk.capacity, random.Random(seed))

    def read_zero(w: Window) -> tuple[Window, int, bool]:
        data = session.read(disk, w.offset, w.length)
        return w, len(data), is_zero(data)

    for w, nbytes, zero in ordered_map(read_zero, windows, workers, 2 * workers):
        record.read_bytes += nbytes
        record.sanity_bytes += nbytes
        record.sanity_windows += 1
        if not zero:
            return f"the allocation map calls block {w.block} unused, but its {_span(w)} hold data; reading every block"
    return None


def _span(w: Window) -> str:
    return f"bytes at offset {w.offset} (length {w.length})"
