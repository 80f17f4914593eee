"""Restoring a recovery point's disks: to sparse raw image files, or to any ordered sink.

Blocks are read from packs, checked (checksum, authentication, id) and decompressed by
worker threads. All-zero blocks are never read: a file target leaves holes, a stream target
(an HTTP upload) gets zeros, in disk order.

Each worker writes the blocks it decoded, through the page cache; behind the workers, every
64 MiB of the disk done, write-back is started and the written pages dropped, so the final fsync
waits for the last window only and the cache never holds much of the disk. Measured on the
project's VM (a 768 MiB image, 576 MiB of it non-zero, cache dropped, timed until ``sync``,
5 interleaved rounds): 1.25 s, against 1.83 s with O_DIRECT writes from the workers (which an
earlier version used), 1.45 s with one thread doing all the writes, 1.46 s for ``dd
oflag=direct`` of the same blocks. On a 4 GiB image all of them ran at the disk's speed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vmkeep.hypervisors.base import DiskImage
from vmkeep.repository.format import FORMAT
from vmkeep.repository.points import DiskRecord, RecoveryPoint
from vmkeep.repository.repo import Repository
from vmkeep.repository.tree import leaf_refs

from . import cancel
from .exceptions import RestoreTargetError
from .pipeline import ordered_map
from .progress import Progress

ZERO = FORMAT.ZERO_ID
WRITEBACK_EVERY = 64 * 1024 * 1024


@dataclass(frozen=True)
class RestoredDisk:
    key: str
    path: str
    size: int


def stored_blocks(repo: Repository, disk: DiskRecord) -> Iterator[tuple[int, bytes]]:
    """(offset, block id) of every non-zero block of ``disk``, in order."""
    geometry = repo.geometry(disk.capacity)
    block_size = repo.config.block_size
    for j, leaf in enumerate(repo.leaf_ids(bytes.fromhex(disk.tree), disk.capacity)):
        if leaf == ZERO:
            continue
        for k, blob_id in enumerate(leaf_refs(leaf, geometry, j, repo.read_blob)):
            if blob_id != ZERO:
                yield (j * geometry.fanout + k) * block_size, blob_id


def iter_disk_blocks(repo: Repository, disk: DiskRecord, workers: int) -> Iterator[tuple[int, bytes]]:
    """(offset, content) of every non-zero block of ``disk``, in order, verified."""

    def fetch(item: tuple[int, bytes]) -> tuple[int, bytes]:
        return item[0], repo.read_blob(item[1])

    yield from ordered_map(fetch, stored_blocks(repo, disk), workers, 4 * workers)


def iter_disk_stream(repo: Repository, disk: DiskRecord, workers: int) -> Iterator[bytes]:
    """Every byte of ``disk`` in order, zeros included (for uploads that cannot leave holes)."""
    zero_block = bytes(repo.config.block_size)

    def zeros(start: int, end: int) -> Iterator[bytes]:
        for pos in range(start, end, len(zero_block)):
            n = min(len(zero_block), end - pos)
            yield zero_block if n == len(zero_block) else bytes(n)

    position = 0
    for offset, data in iter_disk_blocks(repo, disk, workers):
        cancel.check()
        yield from zeros(position, offset)
        yield data
        position = offset + len(data)
    yield from zeros(position, disk.capacity)


def disk_images(repo: Repository, point: RecoveryPoint, workers: int) -> list[DiskImage]:
    """The point's disks as restartable byte streams, for a restore to a host."""
    return [DiskImage(d.key, d.capacity, partial(iter_disk_stream, repo, d, workers)) for d in point.disks]


def restore_disk_to_file(
    repo: Repository, disk: DiskRecord, path: Path, workers: int, progress: Progress | None = None
) -> RestoredDisk:
    """Write ``disk`` to a new sparse file at ``path``; refuses to overwrite anything."""
    progress = progress or Progress()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise RestoreTargetError(f"{path} exists already; vmkeep never overwrites a file on restore") from None
    except OSError as exc:
        raise RestoreTargetError(f"cannot create {path}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, disk.capacity)
        _write_blocks(repo, disk, fd, workers, progress)
        os.fsync(fd)
    except OSError as exc:
        _discard(path, fd)
        raise RestoreTargetError(f"writing {path}: {exc.strerror}") from None
    except BaseException:
        _discard(path, fd)
        raise
    os.close(fd)
    return RestoredDisk(disk.key, str(path), disk.capacity)


def _write_blocks(repo: Repository, disk: DiskRecord, fd: int, workers: int, progress: Progress) -> None:
    """Each worker reads, checks and decodes a block and writes it at its offset; behind them, in disk
    order, write-back of every ``WRITEBACK_EVERY`` bytes done is started and their pages dropped."""

    def write(item: tuple[int, bytes]) -> tuple[int, int]:
        offset, blob_id = item
        data = repo.read_blob(blob_id)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)) :]
        return offset + len(data), len(data)

    flushed = 0
    # closing(): on an error or an interruption, every worker has stopped writing before fd is closed
    with closing(ordered_map(write, stored_blocks(repo, disk), workers, 4 * workers)) as written:
        for end, nbytes in written:
            cancel.check()
            progress.advance(nbytes)
            if end - flushed >= WRITEBACK_EVERY:
                # Linux starts write-back of the range on DONTNEED and drops its pages once clean: the
                # final fsync waits for the last window only, and the page cache holds little of the disk.
                os.posix_fadvise(fd, flushed, end - flushed, os.POSIX_FADV_DONTNEED)
                flushed = end


def _discard(path: Path, fd: int) -> None:
    os.close(fd)
    path.unlink(missing_ok=True)


def restore_point_to_dir(
    repo: Repository, point: RecoveryPoint, directory: Path, workers: int, progress: Progress | None = None
) -> list[RestoredDisk]:
    """One sparse raw image per disk, named ``<vm>-<disk>.img`` (``restored_file_names``), in ``directory``."""
    progress = progress or Progress()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RestoreTargetError(f"cannot create {directory}: {exc.strerror}") from None
    targets = [(disk, directory / name) for disk, name in zip(point.disks, restored_file_names(point), strict=True)]
    for _disk, target in targets:
        if target.exists():
            raise RestoreTargetError(f"{target} exists already; vmkeep never overwrites a file on restore")
    restored = []
    for disk, target in targets:
        progress.disk_started(point.vm, disk.name, disk.capacity, "restore", None)
        restored.append(restore_disk_to_file(repo, disk, target, workers, progress))
        progress.disk_finished(disk.name)
    return restored


def restored_file_names(point: RecoveryPoint) -> list[str]:
    """``web01-hard-disk-1.img`` for a disk labelled "Hard disk 1", ``web01-2000.img`` for one without.

    Keys are unique within a VM and labels should be: if two labels give the same name, every disk
    of the point is named after its key instead.
    """
    vm = safe_name(point.vm)
    by_label = [f"{vm}-{slug(d.label)}.img" if d.label and slug(d.label) else "" for d in point.disks]
    if all(by_label) and len(set(by_label)) == len(by_label):
        return by_label
    return [f"{vm}-{safe_name(d.key)}.img" for d in point.disks]


def slug(text: str) -> str:
    """Lower case, runs of anything but letters and digits as one hyphen: "Hard disk 1" -> "hard-disk-1"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def safe_name(text: str) -> str:
    """A file-name-safe rendering of a VM name or disk key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "disk"
