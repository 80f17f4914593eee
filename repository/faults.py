"""TEST ONLY: kill this process at a chosen write step, to prove crash safety step by step.

Not a feature, and nothing to configure in production. ``tests/agent/test_crash_steps.py``
runs a command once with ``VMKEEP_TEST_STEP_LOG=FILE`` to learn the steps it takes (one line
each: number, phase, operation, file), then re-runs it from the same starting repository with
``VMKEEP_TEST_KILL_AT=N`` for every N, and this module sends the process SIGKILL right at
step N (after logging it, so the test knows which step it killed).

The backend wraps every operation that changes the repository on disk: writing a file's data
into ``tmp/``, fsync of that file, creating a directory, the rename into place, a directory
fsync (deferred ones included) and an unlink. Each operation is two steps, just before and
just after it. Both variables are read once, at import; when neither is set, ``step`` is one
global test returning a shared no-op context.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager

KILL_AT_VARIABLE = "VMKEEP_TEST_KILL_AT"
STEP_LOG_VARIABLE = "VMKEEP_TEST_STEP_LOG"


class Op(enum.Enum):
    """An operation that changes the repository on disk."""

    WRITE = "write"  # a file's data into tmp/, through the page cache
    WRITE_DIRECT = "write-direct"  # a large file's data into tmp/, with O_DIRECT
    FSYNC = "fsync"  # that file's data
    MKDIR = "mkdir"  # a new directory (data/XX)
    RENAME = "rename"  # tmp/ file to its final name
    DIR_FSYNC = "dir-fsync"  # a directory, making renames and unlinks in it durable
    DEFERRED_DIR_FSYNC = "deferred-dir-fsync"  # the same, for renames written with defer_sync
    UNLINK = "unlink"


class Phase(enum.Enum):
    BEFORE = "before"
    AFTER = "after"


_KILL_AT = int(os.environ.get(KILL_AT_VARIABLE) or 0)
_LOG = os.environ.get(STEP_LOG_VARIABLE) or ""
_ACTIVE = bool(_KILL_AT or _LOG)
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
_numbers = itertools.count(1)
_lock = threading.Lock()  # one step at a time: numbered and logged in order


def step(op: Op, name: str) -> AbstractContextManager[None]:
    """Wrap one operation on ``name`` (a repository-relative path); a no-op outside the tests."""
    if not _ACTIVE:
        return _NOTHING
    return _counted(op, name)


@contextlib.contextmanager
def _counted(op: Op, name: str) -> Iterator[None]:
    _reached(Phase.BEFORE, op, name)
    yield
    _reached(Phase.AFTER, op, name)


def _reached(phase: Phase, op: Op, name: str) -> None:
    with _lock:
        number = next(_numbers)
        if _LOG:
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, f"{number}\t{phase.value}\t{op.value}\t{name}\n".encode())
            finally:
                os.close(fd)
        if number == _KILL_AT:
            os.kill(os.getpid(), signal.SIGKILL)
