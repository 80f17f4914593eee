"""Repository locks: any number of shared holders (backups, restores) or one exclusive (gc).

A lock is a small JSON file in ``locks/`` with a unique name. Taking a lock means writing
ours, then listing the others: a writer that sees an exclusive lock backs off, and gc backs
off if it sees any other lock. Because both sides write before they look, at least one of
two racing processes sees the other. A lock is stale when its process is gone (same host)
or it has not been refreshed for ``STALE_AFTER`` seconds (another host); stale locks are
removed by whoever finds them.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from types import TracebackType

from .backend import Backend
from .exceptions import RepositoryError, RepositoryLocked

LOCK_DIR = "locks"
REFRESH_EVERY = 300.0
STALE_AFTER = 1800.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LockInfo:
    exclusive: bool
    operation: str
    host: str
    pid: int
    pid_start: int  # process start time in clock ticks since boot (Linux); guards against pid reuse
    time: float

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return f"{self.operation} ({kind}, pid {self.pid} on {self.host}, since {when})"

    def is_stale(self, now: float) -> bool:
        if self.host == socket.gethostname():
            return _process_start(self.pid) != self.pid_start
        return now - self.time > STALE_AFTER


class Lock:
    """A held lock; refreshed in the background, removed on ``release`` (or context exit)."""

    def __init__(self, backend: Backend, exclusive: bool, operation: str) -> None:
        self._backend = backend
        self._info = LockInfo(
            exclusive, operation, socket.gethostname(), os.getpid(), _process_start(os.getpid()), time.time()
        )
        self._name = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lock:
        self._name = self._write()
        try:
            self._check_others()
        except BaseException:
            self._backend.delete(self._name)
            raise
        self._thread = threading.Thread(target=self._refresh_loop, name="vmkeep-lock-refresh", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._name:
            self._backend.delete(self._name)
            self._name = ""

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _write(self) -> str:
        kind = "exclusive" if self._info.exclusive else "shared"
        name = f"{LOCK_DIR}/{kind}-{secrets.token_hex(8)}"
        self._backend.write(name, [json.dumps(asdict(self._info)).encode()])
        return name

    def _check_others(self) -> None:
        now = time.time()
        for other_name, other in read_locks(self._backend):
            if other_name == self._name:
                continue
            if other.is_stale(now):
                log.warning("removing stale lock %s: %s", other_name, other.describe())
                self._backend.delete(other_name)
                continue
            if other.exclusive or self._info.exclusive:
                raise RepositoryLocked(f"repository is in use by {other.describe()}")

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            self._info = LockInfo(**{**asdict(self._info), "time": time.time()})
            try:
                old, self._name = self._name, self._write()
                self._backend.delete(old)
            except RepositoryError as exc:  # keep the old lock; the job itself will hit the error
                log.warning("could not refresh the repository lock: %s", exc)


def read_locks(backend: Backend) -> list[tuple[str, LockInfo]]:
    locks = []
    for f in backend.list(LOCK_DIR):
        try:
            locks.append((f.name, LockInfo(**json.loads(backend.read(f.name)))))
        except (ValueError, TypeError):
            log.warning("ignoring unreadable lock file %s", f.name)
        except RepositoryError:  # vanished between list and read: released meanwhile
            continue
    return locks


def _process_start(pid: int) -> int:
    """Start time of a process in clock ticks since boot, or -1 if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1
        except PermissionError:
            return 0
        return 0
    # Field 22, counted after the parenthesised command name (which may contain spaces).
    return int(stat[stat.rindex(b")") + 2 :].split()[19])
