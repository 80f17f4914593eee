"""The space reserve: a file that forget and gc delete when the file system is full.

Every command writes a lock file before it touches the repository, and gc must write its new
index before it may delete anything an index names. On a file system with no space left, the
two commands that free space could therefore not start. So the repository keeps ``reserve``, a
file of random bytes (random, so that a compressing file system cannot shrink it): when forget
or gc cannot write its lock for lack of space, it deletes the reserve and tries again, and gc
then has room for its lock and its new index. At the end both write the reserve again if there
is room. ``init`` writes it at 1 MiB; gc keeps it at least as large as the index files, which
is what the next gc on a full disk must write (and never above 64 MiB).

Nothing refers to the reserve and nothing reads it: deleting it by hand is harmless.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .backend import Backend
from .exceptions import CorruptRepository, RepositoryError, RepositoryFull
from .writer import INDEX_DIR

if TYPE_CHECKING:  # repo.py writes the first reserve at init
    from .locks import Lock
    from .repo import Repository

RESERVE_FILE = "reserve"
RESERVE_MIN = 1024 * 1024
RESERVE_MAX = 64 * 1024 * 1024
_CHUNK = 1024 * 1024

log = logging.getLogger(__name__)


def wanted_reserve(backend: Backend) -> int:
    """The reserve's size: room for an index as large as today's index files, 1 MiB at least."""
    index_bytes = sum(f.size for f in backend.list(INDEX_DIR))
    rounded = -(-index_bytes // _CHUNK) * _CHUNK
    return min(RESERVE_MAX, max(RESERVE_MIN, rounded))


def has_reserve(backend: Backend, size: int = 1) -> bool:
    """Whether the reserve exists with at least ``size`` bytes (reads one byte, not the file)."""
    try:
        backend.read(RESERVE_FILE, size - 1, 1)
    except CorruptRepository:  # missing, or shorter than ``size``
        return False
    return True


def ensure_reserve(backend: Backend, size: int | None = None) -> bool:
    """Write the reserve if it is missing or too small; False if there is no room for it."""
    size = wanted_reserve(backend) if size is None else size
    if has_reserve(backend, size):
        return True
    backend.delete(RESERVE_FILE)  # also closes a descriptor kept on the old file, or its space stays taken
    chunk = os.urandom(_CHUNK)
    chunks = [chunk] * (size // _CHUNK) + [chunk[: size % _CHUNK]]
    try:
        backend.write(RESERVE_FILE, [c for c in chunks if c])
    except RepositoryFull:
        log.debug("no room to write the space reserve (%d bytes)", size)
        return False
    return True


def release_reserve(backend: Backend) -> bool:
    """Delete the reserve; False if there was none."""
    if not has_reserve(backend):
        return False
    backend.delete(RESERVE_FILE)
    return True


def lock_making_room(repo: Repository, operation: str, exclusive: bool = False) -> tuple[Lock, bool]:
    """Take the repository lock; if the file system is full, delete the reserve and try again.

    Returns the lock and whether the reserve was deleted to take it.
    """
    try:
        return repo.lock(operation, exclusive), False
    except RepositoryFull as exc:
        if not release_reserve(repo.backend):
            raise RepositoryFull(f"{exc}, and the repository has no space reserve left to delete") from None
    log.warning("the repository's file system is full: deleted its space reserve to make room for %s", operation)
    try:
        return repo.lock(operation, exclusive), True
    except RepositoryError:
        ensure_reserve(repo.backend)  # give the space back if we could not use it
        raise
