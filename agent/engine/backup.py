"""Backing up one VM: plan each disk, read and store its blocks, commit a recovery point.

Each disk is planned first (full or incremental, with its sanity checks); then the blocks of
all the VM's disks flow through one ``ordered_map``, interleaved disk by disk, so that the
disks are read in parallel within one bound on the blocks in flight. Worker threads read a
batch of consecutive blocks (``BackupSession.read_size``: one request for several blocks
where requests are costly, as over HTTP), test each block for zeros, hash it, and (if the
repository lacks it) compress, encrypt and checksum it; the main thread hands new frames to
the pack writer and places each id in its disk's tree. Blocks not read in an incremental keep
the previous point's ids, so every point is a complete list of references (a synthetic full)
however little was read.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vmkeep.hypervisors.base import BackupSession, DiskInfo
from vmkeep.hypervisors.exceptions import SourceError
from vmkeep.repository.exceptions import CorruptRepository
from vmkeep.repository.format import FORMAT, BlobType
from vmkeep.repository.points import ChainKey, DiskRecord, RecoveryPoint
from vmkeep.repository.repo import Repository
from vmkeep.repository.tree import Geometry, build_root, leaf_refs, make_node
from vmkeep.repository.writer import BlobWriter

from . import cancel
from .exceptions import ShortRead
from .pipeline import ordered_map
from .plan import DiskPlan, plan_disk, previous_damage
from .progress import Progress
from .sanity import check_unallocated_blocks, check_unchanged_blocks
from .zeros import is_zero

ZERO = FORMAT.ZERO_ID


@dataclass
class BackupOptions:
    full_reason: str | None = None  # force a full read of every disk, for this reason
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    sanity_sample: int | None = None  # windows per disk the sanity checks compare (None: default, 0: off)
    sanity_seed: int | None = None  # makes the sample's choice reproducible (tests); None: random
    full_every: int | None = None  # every Nth backup of a VM is an active full
    # Keys the point records in its ``source`` beside the session's own (e.g. the fleet's
    # idempotency key of the task that made it); never secrets.
    source_tags: dict[str, str] = field(default_factory=dict)


@dataclass
class _BlockResult:
    index: int
    blob_id: bytes
    frame: bytes | None  # set when the repository lacked the block
    length: int
    zero: bool


@dataclass
class _DiskRead:
    """A planned disk while its blocks are read: what the loop fills in, and where."""

    disk: DiskInfo
    plan: DiskPlan
    record: DiskRecord
    tree: _TreeBuilder


@dataclass(frozen=True)
class _Batch:
    """Consecutive blocks of one disk, read with one request; no blocks: the disk's last batch is done."""

    read: _DiskRead
    blocks: range


def backup_vm(
    session: BackupSession,
    repo: Repository,
    options: BackupOptions | None = None,
    progress: Progress | None = None,
    token: cancel.CancelToken | None = None,
) -> RecoveryPoint:
    """Back up the VM behind an open session into ``repo`` and return the committed point.

    The caller holds a shared repository lock and closes the session (``close(session.committed)``).
    The commit follows the platform contract (hypervisors/base.py): every disk read, packs
    durable, ``prepare_commit`` gives the change tokens and source keys the point records, the
    point is saved (``commit_failed`` if that fails), then ``after_commit``, whose failure leaves
    the point and is kept in ``session.after_commit_errors``. On any error before the point is
    saved nothing is committed: packs already written are garbage for gc, and the repository
    stays consistent. ``token`` (default: the process's) stops the backup at the next block.
    """
    started = time.monotonic()
    token = token or cancel.root()
    progress = progress or Progress()
    job = _BackupJob(session, repo, options or BackupOptions(), progress, token)
    try:
        reads = [job.prepare_disk(disk) for disk in session.disks()]
        job.read_disks(reads)
        records = [read.record for read in reads]
        job.writer.flush()  # packs durable, then index: only now may a point refer to them
        token.check()  # the last moment to stop: next, the point is committed
        state = session.prepare_commit()
        for record in records:
            record.change_token = state.tokens.get(record.key)
        point = RecoveryPoint(
            vm=session.vm_name,
            time=datetime.now(UTC),
            disks=records,
            block_size=repo.config.block_size,
            source={**session.source_info(), **state.source, **job.options.source_tags},
            hardware=session.hardware(),
            parent=job.previous.id if job.previous is not None else None,
            hostname=socket.gethostname(),
            duration=time.monotonic() - started,
            warnings=list(session.warnings),
        )
        try:
            repo.save_point(point)
        except BaseException:
            try:
                session.commit_failed()
            except Exception as exc:  # the save's error is the one to report
                progress.warn(f"{session.vm_name}: undoing the preparation of the commit failed too: {exc}")
            raise
        session.committed = True
    finally:
        job.writer.close()
    try:
        session.after_commit(point, job.previous)
    except Exception as exc:
        message = f"after the point {point.short_id} was committed: {_describe(exc)}"
        session.after_commit_errors.append(message)
        progress.warn(f"{session.vm_name}: {message}")
    return point


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, SourceError) else f"{type(exc).__name__}: {exc}"


def chain_points(repo: Repository, session: BackupSession) -> list[RecoveryPoint]:
    """Earlier points of the VM behind ``session`` (its chain, ``ChainKey.continues``), oldest first."""
    key = ChainKey.of(session.vm_name, session.source_info())
    return [p for p in repo.points(session.vm_name) if p.chain_key.continues(key)]


def previous_point(repo: Repository, session: BackupSession) -> RecoveryPoint | None:
    """The newest point of the same VM: the base of an incremental."""
    points = chain_points(repo, session)
    return points[-1] if points else None


def periodic_full_reason(repo: Repository, session: BackupSession, every: int) -> str | None:
    """Why this backup must be an active full under ``--full-every``, or None."""
    points = chain_points(repo, session)
    since_full = 0
    for point in reversed(points):
        if point.kind == "full":
            break
        since_full += 1
    if points and since_full + 1 >= every:
        return f"periodic active full: every {every} backup(s) of this VM read everything (--full-every)"
    return None


class _BackupJob:
    def __init__(
        self,
        session: BackupSession,
        repo: Repository,
        options: BackupOptions,
        progress: Progress,
        token: cancel.CancelToken,
    ) -> None:
        self.session = session
        self.token = token
        self.repo = repo
        self.options = options
        self.progress = progress
        self.previous = previous_point(repo, session)
        self.full_reason = options.full_reason
        if self.full_reason is None and options.full_every is not None:
            self.full_reason = periodic_full_reason(repo, session, options.full_every)
        self.writer = repo.writer()

    def prepare_disk(self, disk: DiskInfo) -> _DiskRead:
        """Decide what to read of ``disk`` (full or incremental, after the sanity checks)."""
        session, repo = self.session, self.repo
        block_size = repo.config.block_size
        plan = plan_disk(session, disk, self.previous, block_size, force_full=self.full_reason)
        record = DiskRecord(key=disk.key, capacity=disk.capacity, tree="", label=disk.label)  # token: at commit
        name = record.name
        record.identity = dict(disk.identity)

        prev_leaves: list[bytes] | None = None
        if plan.previous is not None:
            try:
                prev_leaves = repo.leaf_ids(bytes.fromhex(plan.previous.tree), disk.capacity)
                damage = previous_damage(repo, plan.previous)
            except CorruptRepository as exc:
                damage = f"the previous point's block list is damaged ({exc}); reading in full to heal it"
            if damage is not None:
                self.progress.warn(f"{session.vm_name} {name}: {damage}")
                plan = plan_disk(session, disk, self.previous, block_size, force_full=damage)
                prev_leaves = None
        if plan.previous is not None and prev_leaves is not None:
            mismatch = check_unchanged_blocks(
                session,
                repo,
                plan,
                prev_leaves,
                requested=self.options.sanity_sample,
                record=record,
                workers=self.options.workers,
                seed=self.options.sanity_seed,
            )
            if mismatch is not None:
                # Change tracking lied: its allocation map ('*') cannot be trusted either.
                self.progress.warn(f"{session.vm_name} {name}: {mismatch}; reading every block")
                plan = plan_disk(session, disk, self.previous, block_size, force_full=mismatch, use_allocation=False)
                prev_leaves = None
        elif plan.from_allocation:
            wrong_map = check_unallocated_blocks(
                session,
                plan,
                block_size,
                record,
                self.options.workers,
                requested=self.options.sanity_sample,
                seed=self.options.sanity_seed,
            )
            if wrong_map is not None:
                self.progress.warn(f"{session.vm_name} {name}: {wrong_map}")
                plan = plan_disk(session, disk, self.previous, block_size, force_full=plan.reason, use_allocation=False)

        record.mode, record.reason = plan.mode, plan.reason
        total = sum(min(r.stop * block_size, disk.capacity) - r.start * block_size for r in plan.runs)
        self.progress.disk_started(session.vm_name, name, total, plan.mode, plan.reason)
        tree = _TreeBuilder(repo, self.writer, repo.geometry(disk.capacity), prev_leaves)
        return _DiskRead(disk, plan, record, tree)

    def read_disks(self, reads: list[_DiskRead]) -> None:
        """Read, store and place the planned blocks of every disk, the disks in parallel.

        One ``ordered_map`` over the disks' batches taken in turn, so the bound on blocks in
        flight (``4 * workers``, whatever the number of disks) is the memory bound of one disk.
        """
        workers = self.options.workers
        per_batch = max(1, self.session.read_size // self.repo.config.block_size)
        window = max(workers, 4 * workers // per_batch)
        for batch, results in ordered_map(self._process, _interleave(reads, per_batch), workers, window):
            record = batch.read.record
            for result in results:
                self.token.check()
                record.read_bytes += result.length
                record.changed_blocks += 1
                if result.zero:
                    record.zero_bytes += result.length
                elif result.frame is not None and self.writer.add(result.frame):
                    record.new_bytes += result.length
                    record.stored_bytes += len(result.frame)
                batch.read.tree.set(result.index, result.blob_id)
                self.progress.advance(result.length)
            if not batch.blocks:
                record.tree = batch.read.tree.finish().hex()
                self.progress.disk_finished(record.name)

    def _process(self, batch: _Batch) -> tuple[_Batch, list[_BlockResult]]:
        """Runs on a worker thread: read the batch, then per block test for zeros, hash, and encode if new."""
        if not batch.blocks:
            return batch, []
        disk = batch.read.disk
        block_size = self.repo.config.block_size
        offset = batch.blocks.start * block_size
        length = min(batch.blocks.stop * block_size, disk.capacity) - offset
        data = self.session.read(disk, offset, length)
        if len(data) != length:
            raise ShortRead(
                f"{self.session.vm_name} disk {disk.key}: read {len(data)} of {length} bytes at offset {offset}"
            )
        if len(batch.blocks) == 1:
            return batch, [self._block(batch.blocks.start, data)]
        view = memoryview(data)
        return batch, [
            self._block(index, view[pos : pos + block_size])
            for index, pos in zip(batch.blocks, range(0, length, block_size), strict=True)
        ]

    def _block(self, index: int, data: bytes | memoryview) -> _BlockResult:
        length = len(data)
        if is_zero(data):
            return _BlockResult(index, ZERO, None, length, True)
        codec = self.repo.codec
        blob_id = codec.blob_id(data)
        if self.writer.known(blob_id):
            return _BlockResult(index, blob_id, None, length, False)
        return _BlockResult(index, blob_id, codec.encode_frame(BlobType.DATA, blob_id, data), length, False)


def _batches(read: _DiskRead, per_batch: int) -> Iterator[_Batch]:
    """The disk's planned blocks in runs of at most ``per_batch``, then an empty batch: the end."""
    for run in read.plan.runs:
        for start in range(run.start, run.stop, per_batch):
            yield _Batch(read, range(start, min(start + per_batch, run.stop)))
    yield _Batch(read, range(0))


def _interleave(reads: list[_DiskRead], per_batch: int) -> Iterator[_Batch]:
    """One batch of each disk in turn, until every disk's batches are taken."""
    active = [_batches(read, per_batch) for read in reads]
    while active:
        for batches in list(active):
            batch = next(batches, None)
            if batch is None:
                active.remove(batches)
            else:
                yield batch


class _TreeBuilder:
    """Builds a disk's tree leaf by leaf as block ids arrive in increasing order.

    A block that is never set keeps the previous point's id (incremental) or is zero (a full
    read skips only unallocated blocks). A leaf none of whose blocks were set is reused whole.
    """

    def __init__(
        self, repo: Repository, writer: BlobWriter, geometry: Geometry, prev_leaves: list[bytes] | None
    ) -> None:
        self._repo = repo
        self._writer = writer
        self._geometry = geometry
        self._prev = prev_leaves
        self._leaves: list[bytes] = []
        self._current: list[bytes] | None = None  # refs of the leaf being filled

    def set(self, block: int, blob_id: bytes) -> None:
        leaf = block // self._geometry.fanout
        self._advance_to(leaf)
        if self._current is None:
            self._current = self._base_refs(leaf)
        self._current[block - leaf * self._geometry.fanout] = blob_id

    def finish(self) -> bytes:
        self._advance_to(self._geometry.leaves)
        return build_root(self._leaves, self._geometry, self._writer.add_tree)

    def _advance_to(self, leaf: int) -> None:
        """Close the leaf being filled and every untouched leaf before ``leaf``."""
        while len(self._leaves) < leaf:
            j = len(self._leaves)
            if self._current is not None:
                self._leaves.append(make_node(0, self._current, self._writer.add_tree))
                self._current = None
            else:
                self._leaves.append(self._prev[j] if self._prev is not None else ZERO)

    def _base_refs(self, leaf: int) -> list[bytes]:
        if self._prev is None:
            return [ZERO] * self._geometry.children(0, leaf)
        return leaf_refs(self._prev[leaf], self._geometry, leaf, self._repo.read_blob)
