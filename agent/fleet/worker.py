"""What a worker does with one VM's task: check it, claim it, back the VM up, answer the result.

The worker builds what the task needs from its own copy of the job file: the source's
credentials, the repository's passphrase, the broker's password. The task names them only.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from vmkeep.hypervisors.base import BackupSession
from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.repo import Repository

from ..config.load import LoadedConfig
from ..config.resolve import source_endpoint, source_kind
from ..daemon.logs import event
from ..daemon.resources import RepositoryPool
from ..engine import cancel
from ..engine.cancel import CancelToken
from ..engine.jobs import BackupTask, Resources, RetryPolicy, VmResult, VmStatus, current_task, run_task
from .claims import Claim, ClaimKeeper, TaskClaim, cancel_key
from .results import failed, result_of_point
from .settings import FleetSettings
from .slots import FleetLimits

if TYPE_CHECKING:
    import redis

FLEET_TASK_KEY = "fleet_task"  # in a point's source: the (run, VM) key it was made under

log = logging.getLogger("vmkeep.agent.fleet.worker")


@dataclass
class WorkerContext:
    """One worker process: its job file, its name, its Redis, its open repositories."""

    cfg: LoadedConfig
    settings: FleetSettings
    hostname: str
    version: str
    redis: redis.Redis
    pool: RepositoryPool = field(default_factory=RepositoryPool)
    token: CancelToken = field(default_factory=lambda: cancel.root().child("worker"))

    def close(self) -> None:
        self.pool.close()
        self.redis.close()


class WorkerResources(Resources):
    """Resources of a task on a worker: its repository under the worker's own lock, a session whose
    points carry the task's idempotency key, and snapshot slots counted across the fleet."""

    def __init__(self, ctx: WorkerContext, limits: FleetLimits, key: str) -> None:
        self.ctx = ctx
        self.limits = limits
        self.key = key

    def repository(self, task: BackupTask) -> AbstractContextManager[Repository]:
        config = self.ctx.cfg.config
        if task.repository not in config.repositories:
            from .exceptions import FleetConfigError

            raise FleetConfigError(f"this worker's job file {self.ctx.cfg.path} has no repository {task.repository!r}")
        return self.ctx.pool.get(task.repository, config.repositories[task.repository]).shared()

    @contextmanager
    def session(self, task: BackupTask) -> Iterator[BackupSession]:
        """A login to the task's source (its platform from the registry), and a session on its VM."""
        from vmkeep.hypervisors.platforms import SessionOptions, open_platform

        config = self.ctx.cfg.config
        if task.source not in config.sources:
            from .exceptions import FleetConfigError

            raise FleetConfigError(f"this worker's job file {self.ctx.cfg.path} has no source {task.source!r}")
        source = config.sources[task.source]
        with (
            open_platform(source_kind(source), source_endpoint(task.source, source)) as platform,
            platform.open_session(task.vm, SessionOptions(quiesce=task.options.quiesce)) as session,
        ):
            yield session

    def point_source(self, task: BackupTask) -> dict[str, str]:
        return {FLEET_TASK_KEY: self.key}  # so a redelivered task finds the point it already made

    def slot(self, task: BackupTask, token: CancelToken) -> AbstractContextManager[object]:
        return self.limits.slot(task, token)

    def committed_point(self, task: BackupTask) -> RecoveryPoint | None:
        """The point a previous delivery of this task committed, if its worker was lost after that."""
        with self.repository(task) as repo:
            found = [p for p in repo.points(task.vm) if p.source.get(FLEET_TASK_KEY) == self.key]
        return found[-1] if found else None


def _tidy_after_lost_worker(resources: WorkerResources, task: BackupTask, token: CancelToken, result: VmResult) -> None:
    """Remove what a worker lost after its commit may have left on the VM: its snapshot or checkpoint.

    The lost worker committed, but may have died before its session removed its snapshot. A
    session opened on the VM removes what an interrupted backup left (and says so in its
    warnings), then removes its own on close: an extra snapshot, but only on this rare path, and
    through the platform contract every platform implements. If that fails, the point still
    stands and the result says what may be left.
    """
    try:
        with resources.slot(task, token), resources.session(task) as session:
            result.warnings.extend(session.warnings)
    except Exception as exc:
        message = f"what the lost worker left on the VM (a snapshot) may remain: {exc}"
        event(logging.WARNING, "task-tidy-failed", message, job=task.job, vm=task.vm)
        result.status, result.error = VmStatus.WARNING, message
        result.warnings.append(message)


def execute_backup(ctx: WorkerContext, payload: dict[str, Any], *, retried: bool = False) -> dict[str, Any]:
    """Run one VM's task sent by the agent; the result as ``VmResult.to_json()`` (plus the worker).

    ``retried``: Celery runs the task again after a Redis error, which may have come after its commit.
    """
    task = BackupTask.from_json(payload["task"])
    current_task.set(task)
    answer = _execute(ctx, task, payload, retried)
    answer["worker"] = ctx.hostname
    return answer


def _execute(ctx: WorkerContext, task: BackupTask, payload: dict[str, Any], retried: bool) -> dict[str, Any]:
    started = datetime.now(UTC)
    theirs = str(payload.get("version"))
    if theirs != ctx.version:
        error = (
            f"refused by worker {ctx.hostname}: it runs vmkeep {ctx.version} and the agent {theirs}; "
            "run the same vmkeep version on the agent and on every worker"
        )
        event(logging.ERROR, "task-refused", error, job=task.job, vm=task.vm)
        return failed(task, error).to_json()
    run = str(payload["run"])
    owner = f"{ctx.hostname}/{uuid.uuid4().hex[:8]}"
    claim = TaskClaim(ctx.redis, run, task.vm, owner, ctx.settings.claim_ttl)
    waited = False
    unmarked_since: float | None = None  # when this delivery first found the run's records lost
    while True:
        done = claim.done()
        if done is not None:
            return done
        # a lease without the run's mark: its agent is gone (or older), and every live holder claimed again
        patient = unmarked_since is not None and time.monotonic() - unmarked_since > ctx.settings.claim_ttl
        state = claim.try_claim(ignore_mark=patient)
        if state == Claim.TAKEN:
            break
        if state == Claim.NOT_YET:
            if unmarked_since is None:
                unmarked_since = time.monotonic()
                event(
                    logging.INFO,
                    "task-waiting",
                    "Redis lost this run's records; a worker still running this task claims it first",
                    vm=task.vm,
                )
        elif not waited:
            event(logging.INFO, "task-waiting", "another worker runs this task", holder=claim.holder(), vm=task.vm)
            waited = True
        stop = ctx.redis.get(cancel_key(run))
        if stop:
            reason = stop.decode() if isinstance(stop, bytes) else str(stop)
            return failed(task, reason, VmStatus.INTERRUPTED).to_json()
        time.sleep(1.0)
    try:
        stop = ctx.redis.get(cancel_key(run))
        if stop:  # the agent stopped the run while this task waited in its queue
            claim.release()
            reason = stop.decode() if isinstance(stop, bytes) else str(stop)
            return failed(task, reason, VmStatus.INTERRUPTED).to_json()
        starts = claim.count_start()
        limits = FleetLimits(ctx.redis, int(payload["per_host"]), int(payload["per_datastore"]), ctx.settings.slot_ttl)
        resources = WorkerResources(ctx, limits, claim.key)
        if starts > 2:
            error = f"this task lost its worker {starts - 1} times (killed or cut off mid-backup); not retried again"
            doc = failed(task, error).to_json()
            claim.finish(doc)
            return doc
        # Redis may have lost the records of an earlier delivery (its answer, the count of starts):
        # then the repository tells whether it committed
        if starts > 1 or payload.get("resent") or retried or unmarked_since is not None:
            why = (
                "its previous worker was lost"
                if starts > 1
                else "Redis lost it; the agent sent it again"
                if payload.get("resent")
                else "Redis lost this run's records"
                if unmarked_since is not None
                else "Celery ran it again after a Redis error"
            )
            event(logging.WARNING, "task-retried", why, job=task.job, vm=task.vm)
            point = resources.committed_point(task)
            if point is not None:
                event(logging.INFO, "task-already-committed", job=task.job, vm=task.vm, point=point.short_id)
                result = result_of_point(task, point, started)
                _tidy_after_lost_worker(resources, task, ctx.token.child(f"{task.job}/{task.vm}"), result)
                doc = result.to_json()
                claim.finish(doc)
                return doc
        token = ctx.token.child(f"{task.job}/{task.vm}")
        retry = RetryPolicy(int(payload.get("retries", 0)), float(payload.get("retry_delay", 0.0)))
        event(logging.INFO, "task-started", job=task.job, vm=task.vm, host=task.host or None, start=starts)
        with ClaimKeeper(claim, token):
            result = run_task(task, resources, token, retry)
        doc = result.to_json()
        if result.status == VmStatus.INTERRUPTED and claim.holder() not in (owner, None):
            return _answer_of_other(claim, doc)  # the worker that took over answers for the task
        claim.finish(doc)
        level = logging.INFO if result.ok else logging.ERROR
        event(level, f"task-{result.status}", result.error or "", job=task.job, vm=task.vm, point=result.point_id)
        return doc
    except BaseException:
        claim.release()
        raise


def _answer_of_other(claim: TaskClaim, mine: dict[str, Any], timeout: float = 3600.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = claim.done()
        if done is not None:
            return done
        if claim.holder() is None:
            break
        time.sleep(1.0)
    return mine
