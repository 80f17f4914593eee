"""Repository locks: any number of shared holders (backups, restores) or one exclusive (gc).

A lock is a small JSON file in ``locks/`` with a unique name. Taking a lock means writing
ours, then listing the others: a writer that sees an exclusive lock backs off, and gc backs
off if it sees any other lock. Because both sides write before they look, at least one of
two racing processes sees the other.

A lock names its holder beyond a host name: a random instance id, the kernel's boot id, the
PID namespace and the pid with its start time. Host names repeat (containers, clones, two
machines on one NFS share), and a pid means nothing outside its namespace. A lock is
**stale** only when that is provable:

- its holder is on this host, in this boot and this PID namespace, and its process is gone;
- or it has not been refreshed for ``STALE_AFTER`` seconds (holders refresh it every
  ``REFRESH_EVERY``), judged by the later of its recorded time and its file's mtime.

A lock file that cannot be parsed counts as held (its kind is read from its name; exclusive
if even that is unknown) until it is older than ``STALE_AFTER``; it is reported, never ignored.

A holder checks that its own lock still exists at every refresh. If someone removed it (a
clock gone wrong, a slow refresh) or refreshes kept failing for longer than is safe, the lock
is **lost**, and the writer refuses to commit anything under it (``check``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from functools import cache
from types import TracebackType

from .backend import Backend
from .exceptions import CorruptRepository, FileMissing, LockLost, RepositoryError, RepositoryLocked
from .validate import json_object, number, obj, typed

LOCK_DIR = "locks"
LOCK_VERSION = 2
REFRESH_EVERY = 300.0
STALE_AFTER = 1800.0
# A holder whose refreshes have failed for this long no longer trusts its own lock.
LOST_AFTER = STALE_AFTER - 2 * REFRESH_EVERY

log = logging.getLogger(__name__)


class LockKind(StrEnum):
    SHARED = "shared"
    EXCLUSIVE = "exclusive"


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, precisely enough to tell whether it is provably gone."""

    host: str
    instance: str  # random, per process: tells two holders of one host, namespace and pid apart
    boot_id: str  # /proc/sys/kernel/random/boot_id, "" where unknown
    pid_namespace: str  # e.g. "pid:[4026531836]", "" where unknown
    pid: int
    pid_start: int  # start time in clock ticks since boot; guards against pid reuse; -1 unknown

    def same_process_space(self, other: Holder) -> bool:
        """True if a pid of ``other`` can be looked up here: same host, boot and PID namespace."""
        return (
            bool(self.boot_id and self.pid_namespace)
            and self.host == other.host
            and self.boot_id == other.boot_id
            and self.pid_namespace == other.pid_namespace
        )

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


@dataclass(frozen=True)
class LockInfo:
    """The content of a lock file (format version 2)."""

    kind: LockKind
    operation: str
    holder: Holder
    time: float  # when it was taken or last refreshed (holder's clock)

    @property
    def exclusive(self) -> bool:
        return self.kind is LockKind.EXCLUSIVE

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return f"{self.operation} ({self.kind}, {self.holder.describe()}, since {when})"

    def dump(self) -> bytes:
        doc = {"version": LOCK_VERSION, "kind": str(self.kind), "operation": self.operation, "time": self.time}
        doc["holder"] = asdict(self.holder)
        return json.dumps(doc).encode()

    @classmethod
    def parse(cls, raw: bytes, name: str) -> LockInfo:
        """A lock file's content; CorruptRepository naming the file if it is not a valid lock."""
        try:
            doc = json_object(raw)
            if doc.get("version") == LOCK_VERSION:
                h = obj(doc, "holder")
                holder = Holder(
                    host=typed(h, "host", str),
                    instance=typed(h, "instance", str),
                    boot_id=typed(h, "boot_id", str),
                    pid_namespace=typed(h, "pid_namespace", str),
                    pid=typed(h, "pid", int),
                    pid_start=typed(h, "pid_start", int),
                )
                return cls(LockKind(typed(doc, "kind", str)), typed(doc, "operation", str), holder, number(doc, "time"))
            if "version" not in doc and "pid_start" in doc:  # version 1: written by vmkeep 0.1
                holder = Holder(typed(doc, "host", str), "", "", "", typed(doc, "pid", int), -1)
                kind = LockKind.EXCLUSIVE if typed(doc, "exclusive", bool) else LockKind.SHARED
                return cls(kind, typed(doc, "operation", str), holder, number(doc, "time"))
            raise ValueError(f"unknown lock version {doc.get('version')!r}")
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptRepository(f"{name}: not a valid lock file ({exc})") from None


@dataclass(frozen=True)
class FoundLock:
    """A lock file found in ``locks/``: parsed, or why it could not be."""

    name: str
    mtime: float
    info: LockInfo | None
    problem: str | None = None

    @property
    def kind(self) -> LockKind:
        if self.info is not None:
            return self.info.kind
        return LockKind.SHARED if self.name.rsplit("/", 1)[-1].startswith("shared-") else LockKind.EXCLUSIVE

    def describe(self) -> str:
        if self.info is not None:
            return self.info.describe()
        return f"an unreadable lock file {self.name} ({self.problem}), counted as a {self.kind} lock"

    def stale_reason(self, me: Holder, now: float) -> str | None:
        """Why this lock is provably stale, or None if it must be respected."""
        info = self.info
        if info is not None and info.holder.pid_start >= 0 and me.same_process_space(info.holder):
            start = process_start(info.holder.pid)
            if start is not None and start != info.holder.pid_start:
                return "its process is gone"
        last = max(self.mtime, info.time if info is not None else 0.0)
        if now - last > STALE_AFTER:
            return f"not refreshed for {int((now - last) // 60)} minutes"
        return None


class Lock:
    """A held lock; refreshed in the background, removed on ``release`` (or context exit)."""

    def __init__(
        self,
        backend: Backend,
        exclusive: bool,
        operation: str,
        on_release: Callable[[Lock], None] | None = None,
    ) -> None:
        self._backend = backend
        self._on_release = on_release
        kind = LockKind.EXCLUSIVE if exclusive else LockKind.SHARED
        self._info = LockInfo(kind, operation, this_holder(), time.time())
        self._name = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = threading.Lock()
        self._lost: str | None = None
        self._last_refresh = time.monotonic()

    @property
    def exclusive(self) -> bool:
        return self._info.exclusive

    @property
    def held(self) -> bool:
        """True while the lock is taken, not released and not lost."""
        return bool(self._name) and self._lost is None

    def acquire(self) -> Lock:
        self._name = self._write()
        try:
            self._check_others()
        except BaseException:
            self._backend.delete_volatile(self._name)
            self._name = ""
            raise
        self._last_refresh = time.monotonic()
        self._thread = threading.Thread(target=self._refresh_loop, name="vmkeep-lock-refresh", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise unless the lock is still held: call before committing anything under it."""
        if not self._name:
            raise LockLost(f"the repository lock for {self._info.operation} was released")
        if self._lost is None and time.monotonic() - self._last_refresh > LOST_AFTER:
            self._lost = f"it could not be refreshed for {int(LOST_AFTER // 60)} minutes"
        if self._lost is not None:
            raise LockLost(f"the repository lock for {self._info.operation} was lost: {self._lost}")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._state:
            name, self._name = self._name, ""
        if self._on_release is not None:
            self._on_release(self)
        if name:
            self._backend.delete_volatile(name)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def _write(self) -> str:
        name = f"{LOCK_DIR}/{self._info.kind}-{secrets.token_hex(8)}"
        self._backend.write_volatile(name, [self._info.dump()])  # why not durable: Backend.write_volatile
        return name

    def _check_others(self) -> None:
        me, now = self._info.holder, time.time()
        for found in read_locks(self._backend):
            if found.name == self._name:
                continue
            stale = found.stale_reason(me, now)
            if stale is not None:
                log.warning("removing stale lock %s (%s): %s", found.name, stale, found.describe())
                self._backend.delete(found.name)
                continue
            if found.info is None:
                log.warning("%s", found.describe())
            if found.kind is LockKind.EXCLUSIVE or self.exclusive:
                raise RepositoryLocked(f"repository is in use by {found.describe()}")

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            self.refresh()

    def refresh(self) -> None:
        """Rewrite the lock with the current time; notice if someone removed it."""
        with self._state:
            if not self._name or self._lost is not None:
                return
            try:
                present = any(f.name == self._name for f in self._backend.list(LOCK_DIR))
            except RepositoryError as exc:
                log.warning("could not check the repository lock: %s", exc)
                return
            if not present:  # another process judged it stale and removed it
                self._lost = "another process removed it as stale"
                log.error("the repository lock %s was removed by another process", self._name)
                return
            self._info = LockInfo(self._info.kind, self._info.operation, self._info.holder, time.time())
            try:
                old, self._name = self._name, self._write()
                self._backend.delete_volatile(old)
            except RepositoryError as exc:  # keep the old lock; check() gives up once it is too old
                log.warning("could not refresh the repository lock: %s", exc)
                return
            self._last_refresh = time.monotonic()


def remove_locks(backend: Backend, everything: bool = False) -> list[tuple[FoundLock, str]]:
    """Remove stale locks (with ``everything``, all locks); return each removed lock and why."""
    me, now = this_holder(), time.time()
    removed = []
    for found in read_locks(backend):
        why = "removed by request (--remove-all)" if everything else found.stale_reason(me, now)
        if why is not None:
            backend.delete(found.name)
            removed.append((found, why))
    return removed


def read_locks(backend: Backend) -> list[FoundLock]:
    """Every lock file, parsed where possible; unreadable ones are returned with the reason."""
    found = []
    for f in backend.list(LOCK_DIR):
        try:
            raw = backend.read(f.name)
        except FileMissing:  # vanished between list and read: released meanwhile
            continue
        except RepositoryError as exc:
            found.append(FoundLock(f.name, f.mtime, None, str(exc)))
            continue
        try:
            found.append(FoundLock(f.name, f.mtime, LockInfo.parse(raw, f.name)))
        except CorruptRepository as exc:
            found.append(FoundLock(f.name, f.mtime, None, str(exc).partition(": ")[2]))
    return found


@cache
def _instance_id() -> str:
    return secrets.token_hex(8)


def this_holder() -> Holder:
    """This process, as a lock names it."""
    pid = os.getpid()
    return Holder(
        host=socket.gethostname(),
        instance=f"{_instance_id()}-{pid}",  # a forked child is another instance
        boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
        pid_namespace=_readlink("/proc/self/ns/pid"),
        pid=pid,
        pid_start=process_start(pid) or -1,
    )


def process_start(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot; -1 if provably gone; None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return -1
        except OSError:
            return None
        return None  # alive, but /proc does not show it (hidepid): cannot compare start times
    except OSError:
        return None
    # Field 22, counted after the parenthesised command name (which may contain spaces).
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""
