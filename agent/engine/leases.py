"""One repository handle shared by concurrent tasks of a process, under one lock at a time.

A handle that lives for days (the agent's) must take a fresh lock for each piece of work, so
that it re-reads the index when gc changed the repository in between, and every writer must
be bound to the lock it was made under. Concurrent backups in one process share one shared
lock: the first task to start takes it (re-reading the index if it changed), later ones join,
and the last to finish releases it. Exclusive work of the same process (gc) waits until no
task holds the handle, and keeps new tasks waiting while it runs, so gc never fails a backup
of its own agent, nor does a backup of the agent fail because the agent's gc is running.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from vmkeep.repository.exceptions import RepositoryLocked
from vmkeep.repository.locks import Lock
from vmkeep.repository.repo import Repository

from .cancel import CancelToken

T = TypeVar("T")


class SharedRepository:
    """A repository handle and the process's lock on it."""

    def __init__(self, repo: Repository, operation: str = "backup") -> None:
        self.repo = repo
        self._operation = operation
        self._cond = threading.Condition()
        self._users = 0
        self._lock: Lock | None = None
        self._exclusive_waiting = 0
        self._exclusive = False

    @contextmanager
    def shared(self, token: CancelToken | None = None, *, join: bool = False) -> Iterator[Repository]:
        """The handle under a shared lock (RepositoryLocked if another process holds it exclusively).

        While this process's gc waits or runs, new users wait; with ``join`` (the tasks of a job
        that holds the handle already) a user joins the lock held now instead, or gc, waiting
        for the job, would wait for its tasks while they wait for gc.
        """
        with self._cond:
            while (self._exclusive or self._exclusive_waiting) and not (join and self._users):
                if token is not None:
                    token.check()
                self._cond.wait(0.5)
            if self._users == 0 or self._lock is None or not self._lock.held:
                if self._lock is not None:  # lost while others used it: theirs fail, take a new one
                    self._lock.release()
                self._lock = self.repo.lock(self._operation)  # raises RepositoryLocked; re-reads the index
            self._users += 1
        try:
            yield self.repo
        finally:
            with self._cond:
                self._users -= 1
                if self._users == 0 and self._lock is not None:
                    self._lock.release()
                    self._lock = None
                self._cond.notify_all()

    def run_exclusive(
        self,
        work: Callable[[Repository], T],
        token: CancelToken | None = None,
        retry_every: float = 5.0,
        give_up_after: float = 3600.0,
    ) -> T:
        """Run ``work`` (which takes an exclusive lock, as gc does) once this process's tasks are done.

        New tasks of this process wait meanwhile. Locks of other processes are waited for too:
        ``work`` is tried again every ``retry_every`` seconds while it raises RepositoryLocked,
        for ``give_up_after`` seconds. gc waits as it must: it never fails a running backup.
        """
        deadline = time.monotonic() + give_up_after
        with self._cond:
            self._exclusive_waiting += 1
            try:
                while self._users or self._exclusive:
                    if token is not None:
                        token.check()
                    self._cond.wait(0.5)
                self._exclusive = True
            finally:
                self._exclusive_waiting -= 1
        try:
            while True:
                try:
                    return work(self.repo)
                except RepositoryLocked:
                    if time.monotonic() + retry_every > deadline:
                        raise
                if token is None:
                    time.sleep(retry_every)
                elif token.wait(retry_every):
                    token.check()
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()
