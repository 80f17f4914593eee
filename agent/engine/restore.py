"""Restoring a recovery point's disks: to sparse raw image files, or to any ordered sink.

Blocks are read from packs, checked (checksum, authentication, id) and decompressed by
worker threads, and delivered in disk order. All-zero blocks are never read: a file target
leaves holes, a stream target (an HTTP upload) sends zeros.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
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


def iter_disk_blocks(repo: Repository, disk: DiskRecord, workers: int) -> Iterator[tuple[int, bytes]]:
    """(offset, content) of every non-zero block of ``disk``, in order, verified."""
    geometry = repo.geometry(disk.capacity)
    block_size = repo.config.block_size
    leaves = repo.leaf_ids(bytes.fromhex(disk.tree), disk.capacity)

    def stored_blocks() -> Iterator[tuple[int, bytes]]:
        for j, leaf in enumerate(leaves):
            if leaf == ZERO:
                continue
            for k, blob_id in enumerate(leaf_refs(leaf, geometry, j, repo.read_blob)):
                if blob_id != ZERO:
                    yield (j * geometry.fanout + k) * block_size, blob_id

    def fetch(item: tuple[int, bytes]) -> tuple[int, bytes]:
        return item[0], repo.read_blob(item[1])

    yield from ordered_map(fetch, stored_blocks(), workers, 4 * workers)


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
        flushed = 0
        for offset, data in iter_disk_blocks(repo, disk, workers):
            cancel.check()
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, offset + len(data) - len(view)) :]
            progress.advance(len(data))
            if offset - flushed >= WRITEBACK_EVERY:
                # Start write-back of what is done (Linux starts it on DONTNEED), so the final
                # fsync does not wait for the whole disk, and the page cache holds little of it.
                os.posix_fadvise(fd, flushed, offset - flushed, os.POSIX_FADV_DONTNEED)
                flushed = offset
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise RestoreTargetError(f"writing {path}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return RestoredDisk(disk.key, str(path), disk.capacity)


def restore_point_to_dir(
    repo: Repository, point: RecoveryPoint, directory: Path, workers: int, progress: Progress | None = None
) -> list[RestoredDisk]:
    """One sparse raw image per disk, named ``<vm>-<disk key>.img``, in ``directory``."""
    progress = progress or Progress()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RestoreTargetError(f"cannot create {directory}: {exc.strerror}") from None
    targets = [(disk, directory / f"{safe_name(point.vm)}-{safe_name(disk.key)}.img") for disk in point.disks]
    for _disk, target in targets:
        if target.exists():
            raise RestoreTargetError(f"{target} exists already; vmkeep never overwrites a file on restore")
    restored = []
    for disk, target in targets:
        progress.disk_started(point.vm, disk.key, disk.capacity, "restore", None)
        restored.append(restore_disk_to_file(repo, disk, target, workers, progress))
        progress.disk_finished(disk.key)
    return restored


def safe_name(text: str) -> str:
    """A file-name-safe rendering of a VM name or disk key."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "disk"
