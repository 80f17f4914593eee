"""The job runner: one backup task per VM, handed to an executor, each with its own result.

The CLI (``vmkeep backup --vm A --vm B``, ``backup-image``), ``vmkeep jobs run`` and the agent
all run jobs here, with one failure policy: a VM that fails is retried (``RetryPolicy``), and
one VM's failure never stops the others. Every task gets its own cancellation token under the
job's, so a signal stops everything while a single VM can be stopped alone.

A task is described by a small frozen record (:class:`BackupTask`) that names the job, the VM,
the source and the repository by their names in the configuration, plus plain options. What
it takes to run one, an open session on the VM and a locked repository, comes from
:class:`Resources`, which a caller builds from its loaded configuration. The description
serializes to JSON, so the same tasks can be run by workers in other processes or on other
machines with resources built from the same configuration.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar, copy_context
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from vmkeep.hypervisors.base import BackupSession
from vmkeep.hypervisors.exceptions import SourceError
from vmkeep.repository.exceptions import RepositoryError
from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.repo import Repository

from ..exceptions import AgentError, ConfigError
from .backup import BackupOptions, backup_vm
from .cancel import CancelToken
from .exceptions import EngineError, Interrupted
from .progress import Progress

log = logging.getLogger("vmkeep.agent.jobs")

# The task the current thread works on, so that log lines from deeper down can name job and VM.
current_task: ContextVar[BackupTask | None] = ContextVar("vmkeep_current_task", default=None)


class VmStatus(StrEnum):
    SUCCEEDED = "succeeded"
    WARNING = "warning"  # the point is committed, but something needs attention (a snapshot left behind)
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TaskOptions:
    """How one VM is backed up: plain values only, so that a task serializes."""

    full: bool = False
    full_every: int | None = None
    workers: int = 4
    sanity_sample: int | None = None  # windows per disk the sanity checks compare (None: default, 0: off)
    quiesce: bool = True

    def backup_options(self) -> BackupOptions:
        return BackupOptions(
            full_reason="a full backup was requested (--full)" if self.full else None,
            workers=max(1, self.workers),
            sanity_sample=self.sanity_sample,
            full_every=self.full_every,
        )


@dataclass(frozen=True)
class BackupTask:
    """The work of one VM in one run of a job, described by names from the configuration."""

    job: str
    vm: str
    source: str
    repository: str
    options: TaskOptions = field(default_factory=TaskOptions)
    host: str = ""  # where the VM runs (for per-host snapshot limits); "" if unknown
    datastores: tuple[str, ...] = ()  # where its disks are (per-datastore limits)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["datastores"] = list(self.datastores)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BackupTask:
        fields = dict(doc)
        fields["options"] = TaskOptions(**fields.get("options", {}))
        fields["datastores"] = tuple(fields.get("datastores", ()))
        return cls(**fields)


@dataclass(frozen=True)
class RetryPolicy:
    count: int = 0  # further attempts after a failure
    delay: float = 0.0  # seconds between attempts


@dataclass
class VmResult:
    """What became of one VM in one run of a job."""

    job: str
    vm: str
    status: VmStatus
    started: datetime
    duration: float = 0.0
    attempts: int = 1
    point_id: str | None = None
    kind: str | None = None  # full or incremental
    reason: str | None = None  # why a disk was read in full
    read_bytes: int = 0
    stored_bytes: int = 0
    new_bytes: int = 0
    error: str | None = None
    # The point's warnings, then what went wrong after its commit or while closing the session.
    warnings: list[str] = field(default_factory=list)
    point: RecoveryPoint | None = field(default=None, repr=False, compare=False)
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.status in (VmStatus.SUCCEEDED, VmStatus.WARNING)

    def to_json(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "vm": self.vm,
            "status": str(self.status),
            "started": self.started.isoformat(),
            "duration": round(self.duration, 3),
            "attempts": self.attempts,
            "point_id": self.point_id,
            "kind": self.kind,
            "reason": self.reason,
            "read_bytes": self.read_bytes,
            "stored_bytes": self.stored_bytes,
            "new_bytes": self.new_bytes,
            "error": self.error,
            "warnings": list(self.warnings),
        }


class Resources(ABC):
    """What running a task takes, built from the loaded configuration."""

    @abstractmethod
    def repository(self, task: BackupTask) -> AbstractContextManager[Repository]:
        """The task's repository, held under a lock for as long as the context lasts."""

    @abstractmethod
    def session(self, task: BackupTask) -> AbstractContextManager[BackupSession]:
        """A backup session on the task's VM (its snapshot is removed when the context ends)."""

    def progress(self, task: BackupTask) -> Progress:
        return Progress()

    def point_source(self, task: BackupTask) -> dict[str, str]:
        """Keys the task's point records in its ``source`` (the fleet's idempotency key); none by default."""
        return {}

    def slot(self, task: BackupTask, token: CancelToken) -> AbstractContextManager[object]:
        """Waits for the task's turn (e.g. snapshot limits per host and datastore)."""
        return nullcontext()


def run_task(task: BackupTask, resources: Resources, token: CancelToken, retry: RetryPolicy) -> VmResult:
    """Back up one VM, retrying failures as ``retry`` says; never raises for the VM's own failure."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        result = _attempt(task, resources, token, started)
        result.attempts = attempt
        result.duration = time.monotonic() - clock
        if result.status != VmStatus.FAILED or attempt > retry.count or isinstance(result.exception, ConfigError):
            return result
        log.warning(
            "%s: attempt %d of %d failed (%s); retrying in %gs",
            task.vm,
            attempt,
            retry.count + 1,
            result.error,
            retry.delay,
            extra={"vmkeep_fields": {"event": "vm-retry", "job": task.job, "vm": task.vm, "attempt": attempt}},
        )
        if token.wait(retry.delay):
            result.status = VmStatus.INTERRUPTED
            result.error = f"interrupted before retrying ({token.reason}); the last attempt failed: {result.error}"
            return result


def _attempt(task: BackupTask, resources: Resources, token: CancelToken, started: datetime) -> VmResult:
    """One try: the session's context closes it with ``committed`` as the engine left it."""
    result = VmResult(task.job, task.vm, VmStatus.FAILED, started)
    session: BackupSession | None = None
    point: RecoveryPoint | None = None
    attention: list[str] = []  # after the commit: what the administrator must see to
    try:
        token.check()
        with resources.slot(task, token), resources.repository(task) as repo, resources.session(task) as session:
            token.check()
            options = replace(task.options.backup_options(), source_tags=resources.point_source(task))
            point = backup_vm(session, repo, options, resources.progress(task), token)
    except Interrupted as exc:
        if point is None:
            result.status, result.error, result.exception = VmStatus.INTERRUPTED, str(exc), exc
            return result
        attention.append(f"interrupted while ending the session: {exc}")
    except Exception as exc:
        if point is None:
            log.debug("job=%s vm=%s failed", task.job, task.vm, exc_info=True)
            result.error, result.exception = _describe(exc), exc
            return result
        log.debug("job=%s vm=%s: ending the session failed", task.job, task.vm, exc_info=True)
        attention.append(f"ending the session failed: {_describe(exc)}")  # the point stands
    assert point is not None
    if session is not None:
        attention = [*session.after_commit_errors, *session.close_warnings, *attention]
    result.status = VmStatus.SUCCEEDED
    result.point, result.point_id, result.kind = point, point.id, point.kind
    reasons = [d.reason for d in point.disks if d.reason]
    result.reason = "; ".join(dict.fromkeys(reasons)) or None
    result.read_bytes = sum(d.read_bytes for d in point.disks)
    result.stored_bytes = sum(d.stored_bytes for d in point.disks)
    result.new_bytes = sum(d.new_bytes for d in point.disks)
    result.warnings = [*point.warnings, *attention]
    if attention:
        result.status, result.error = VmStatus.WARNING, "; ".join(attention)
    return result


def _describe(exc: BaseException) -> str:
    """The one line an administrator reads about a failure."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}"
    if isinstance(exc, (SourceError, RepositoryError, EngineError, AgentError)):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


class Executor(ABC):
    """Where the tasks of a run execute: here, in threads (:class:`LocalExecutor`), or elsewhere
    (the fleet's Celery executor hands each task to a worker and reports its result back)."""

    @abstractmethod
    def run(
        self,
        tasks: list[BackupTask],
        resources: Resources,
        token: CancelToken,
        *,
        concurrency: int,
        retry: RetryPolicy,
        on_result: Callable[[VmResult], None] | None,
    ) -> list[VmResult]:
        """Run every task; the results in the order of the tasks, ``on_result`` called as each ends."""


class LocalExecutor(Executor):
    """The tasks in this process, ``concurrency`` threads at a time."""

    def run(
        self,
        tasks: list[BackupTask],
        resources: Resources,
        token: CancelToken,
        *,
        concurrency: int,
        retry: RetryPolicy,
        on_result: Callable[[VmResult], None] | None,
    ) -> list[VmResult]:
        def one(task: BackupTask) -> VmResult:
            current_task.set(task)  # each call runs in a fresh context (pool thread or copy below)
            result = run_task(task, resources, token.child(f"{task.job}/{task.vm}"), retry)
            if on_result is not None:
                on_result(result)
            return result

        if concurrency <= 1 or len(tasks) <= 1:
            return [copy_context().run(one, t) for t in tasks]
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vmkeep-task") as pool:
            return list(pool.map(one, tasks))


def run_tasks(
    tasks: Iterable[BackupTask],
    resources: Resources,
    token: CancelToken,
    *,
    concurrency: int = 1,
    retry: RetryPolicy | None = None,
    on_result: Callable[[VmResult], None] | None = None,
    executor: Executor | None = None,
) -> list[VmResult]:
    """Run every task, ``concurrency`` at a time; the results in the order of the tasks.

    Each task gets a child of ``token``: cancelling ``token`` stops them all at their next
    block, and a task not yet started ends as interrupted without touching its VM. The
    ``executor`` (default: :class:`LocalExecutor`) decides where they run.
    """
    executor = executor or LocalExecutor()
    return executor.run(
        list(tasks), resources, token, concurrency=concurrency, retry=retry or RetryPolicy(), on_result=on_result
    )
