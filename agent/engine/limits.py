"""How many snapshots may be open at once on one host and on one datastore.

A snapshot stuns its VM and grows a delta file on each of its datastores; backup products
limit them per host and per datastore so that a job of a hundred VMs does not stun one host a
hundred times at once. A task holds one slot of its host and one of each of its datastores for
as long as its snapshot exists. Slots are taken in one global order, so two tasks never wait
for each other.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .cancel import CancelToken

if TYPE_CHECKING:  # light to import: the CLI's options take their defaults from here
    from .jobs import BackupTask

# The defaults of the job file ([agent], [jobs.*]) and of `vmkeep backup --vm A --vm B`.
CONCURRENCY = 2  # VMs of one run backed up at once
SNAPSHOTS_PER_HOST = 2
SNAPSHOTS_PER_DATASTORE = 4


class SnapshotLimits:
    def __init__(self, per_host: int, per_datastore: int) -> None:
        self.per_host = per_host
        self.per_datastore = per_datastore
        self._guard = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}

    def _semaphore(self, key: str) -> threading.BoundedSemaphore:
        with self._guard:
            if key not in self._slots:
                size = self.per_host if key.startswith("host:") else self.per_datastore
                self._slots[key] = threading.BoundedSemaphore(size)
            return self._slots[key]

    @contextmanager
    def slot(self, task: BackupTask, token: CancelToken) -> Iterator[None]:
        """Wait (cancellably) for a slot on the task's host and each of its datastores."""
        keys = sorted(([f"host:{task.host}"] if task.host else []) + [f"datastore:{d}" for d in task.datastores])
        held: list[threading.BoundedSemaphore] = []
        try:
            for key in keys:
                semaphore = self._semaphore(key)
                while not semaphore.acquire(timeout=0.5):
                    token.check()
                held.append(semaphore)
            yield
        finally:
            for semaphore in reversed(held):
                semaphore.release()
