"""The agent's side of the fleet: each VM's task to its queue, each result into the history as it comes.

The scheduler stays single: the agent plans the run, hands one Celery task per VM to the queue
of the VM's host, and polls for the answers. Each answer is recorded (history, metrics, log) the
moment it arrives, so a Redis that restarts mid-run loses no finished task's result.

The agent also knows when Redis lost the run's records (restarted empty, or from an old snapshot):
the run's mark it set at the start is gone, or Redis' ``run_id`` changed. It then hands out again
at once every task it has no answer for, except those a worker was seen running: those only if,
a lease later, no worker claimed them again. The mark, reset to "a lease from now", keeps every
worker from claiming a task of the run before that, so the worker still running a task claims it
again first, and no task runs twice (see claims.py).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..daemon.logs import event
from ..engine.cancel import CancelToken
from ..engine.jobs import BackupTask, Executor, Resources, RetryPolicy, VmResult, VmStatus
from .app import BACKUP_TASK, make_app
from .claims import KEEP, RunMark, TaskClaim, cancel_key, done_key
from .results import failed, result_from_json
from .settings import FleetSettings

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("vmkeep.agent.fleet.executor")

POLL = 0.5  # seconds between two looks at the pending answers
STOP_GRACE = 120.0  # after a cancel, how long the workers have to stop and answer
BATCH = 1000  # answers read per MGET
ENDED = ("SUCCESS", "FAILURE", "REVOKED")
MAX_RESENDS = 2  # a task Celery itself failed is handed out again at most this often


@runtime_checkable
class RunningReport(Protocol):
    """Resources that show which VMs are being backed up now (the agent's status API)."""

    def report_running(self, job: str, vm: str, running: bool) -> None: ...


@dataclass
class _Pending:
    index: int
    task: BackupTask
    task_id: str
    queue: str
    payload: dict[str, Any]
    resends: int = 0  # times handed out again after Celery itself failed the task
    resend: bool = False  # to be handed out again at the next look (Redis lost it)
    check_at: float | None = None  # then handed out again unless a worker claimed it (it was running)


class CeleryExecutor(Executor):
    def __init__(self, settings: FleetSettings, version: str, per_host: int, per_datastore: int) -> None:
        self.settings = settings
        self.version = version
        self.per_host = per_host
        self.per_datastore = per_datastore
        self._app: Celery | None = None

    @property
    def app(self) -> Celery:
        if self._app is None:
            self._app = make_app(self.settings)
        return self._app

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
        run = uuid.uuid4().hex
        results: list[VmResult | None] = [None] * len(tasks)

        report = resources.report_running if isinstance(resources, RunningReport) else None
        running: set[tuple[str, str]] = set()  # (job, VM) a worker was seen backing up

        def started(p: _Pending) -> None:
            if report is not None and (p.task.job, p.task.vm) not in running:
                running.add((p.task.job, p.task.vm))
                report(p.task.job, p.task.vm, True)

        def settle(p: _Pending, result: VmResult) -> None:
            results[p.index] = result
            if report is not None and (p.task.job, p.task.vm) in running:
                running.discard((p.task.job, p.task.vm))
                report(p.task.job, p.task.vm, False)
            if on_result is not None:
                on_result(result)

        self._start_mark(run)
        pending: dict[str, _Pending] = {}
        for index, task in enumerate(tasks):
            payload = {
                "task": task.to_json(),
                "run": run,
                "version": self.version,
                "per_host": self.per_host,
                "per_datastore": self.per_datastore,
                "retries": retry.count,
                "retry_delay": retry.delay,
            }
            p = _Pending(index, task, f"{run}-{index}", self.settings.queue_of(task), payload)
            try:
                self._send(p)
            except Exception as exc:
                settle(p, failed(task, f"cannot hand the task to queue {p.queue}: {_describe(exc)}"))
                continue
            event(logging.INFO, "task-sent", job=task.job, vm=task.vm, queue=p.queue, run=run)
            pending[p.task_id] = p
        self._warn_unserved({p.queue for p in pending.values()}, run)
        try:
            self._wait(run, pending, token, settle, started)
        finally:
            if report is not None:
                for job, vm in running:
                    report(job, vm, False)
        return [r for r in results if r is not None]

    def _start_mark(self, run: str) -> None:
        """The run's mark in Redis, before any task goes out: its loss tells that Redis lost the tasks."""
        client = self.settings.redis()
        try:
            RunMark(client, run, self.settings.claim_ttl).start()
        except Exception as exc:  # the first look at Redis finds the mark missing and hands the tasks out again
            event(logging.WARNING, "redis-unreachable", _describe(exc), run=run)
        finally:
            client.close()

    def _warn_unserved(self, queues: set[str], run: str) -> None:
        """Log the queues no running worker serves now: their tasks wait for one to start."""
        try:
            replies = self.app.control.inspect(timeout=1.0).active_queues() or {}
        except Exception as exc:
            event(logging.WARNING, "workers-unknown", f"cannot ask the workers for their queues: {_describe(exc)}")
            return
        served = {q["name"] for queues_of_worker in replies.values() for q in queues_of_worker}
        for queue in sorted(queues - served):
            event(
                logging.WARNING,
                "queue-unserved",
                f"no running worker serves queue {queue}; its tasks wait for one (vmkeep worker --hosts ...)",
                queue=queue,
                run=run,
            )

    def _send(self, p: _Pending) -> None:
        self.app.send_task(BACKUP_TASK, args=[p.payload], task_id=p.task_id, queue=p.queue)

    def _wait(
        self,
        run: str,
        pending: dict[str, _Pending],
        token: CancelToken,
        settle: Callable[[_Pending, VmResult], None],
        on_started: Callable[[_Pending], None],
    ) -> None:
        client = self.settings.redis()
        mark = RunMark(client, run, self.settings.claim_ttl)
        deadline = time.monotonic() + self.settings.result_timeout
        stop_deadline: float | None = None
        redis_id: str | None = None
        down_since: float | None = None
        started: set[str] = set()  # tasks a worker was seen running (Celery's STARTED)
        try:
            while pending:
                if token.cancelled and stop_deadline is None:
                    stop_deadline = time.monotonic() + STOP_GRACE
                    self._cancel(client, run, token.reason)
                try:
                    server = str(client.info("server")["run_id"])
                    restarted = redis_id is not None and server != redis_id
                    redis_id = server
                    if restarted or not mark.present():
                        self._records_lost(mark, run, pending, started, token)
                    self._resend_due(client, run, pending, token)
                    for task_id, doc in self._kept_answers(client, run, pending):
                        # the answer the worker keeps in the task's records, before Celery's copy (which
                        # is lost if Redis went away in between, or "failed" if the ack was)
                        settle(pending.pop(task_id), result_from_json(doc))
                    for task_id, meta in self._answers(list(pending)):
                        if meta["status"] not in ENDED:
                            if task_id not in started:
                                started.add(task_id)
                                on_started(pending[task_id])
                            continue
                        p = pending.pop(task_id)
                        if meta["status"] == "SUCCESS":
                            settle(p, result_from_json(meta["result"]))
                        elif p.resends < MAX_RESENDS and not token.cancelled:
                            # vmkeep answers every failure of its own; this is Celery's (a connection
                            # lost while Redis restarted). The claim makes a second delivery safe: it
                            # finds the answer or the point an earlier one made.
                            again = self._again(p, run, f"Celery failed the task: {meta['result']!r}")
                            pending[again.task_id] = again
                            again.resend = True  # sent by _resend_due, again at the next look if this fails
                        else:
                            settle(p, failed(p.task, f"the worker's task failed: {meta['result']!r}"))
                    if down_since is not None:
                        event(logging.INFO, "redis-back", f"after {time.monotonic() - down_since:.0f}s", run=run)
                        down_since = None
                except Exception as exc:  # Redis down or restarting: the finished ones are recorded already
                    if down_since is None:
                        down_since = time.monotonic()
                        event(logging.WARNING, "redis-unreachable", _describe(exc), run=run)
                now = time.monotonic()
                if stop_deadline is not None and now > stop_deadline:
                    for p in pending.values():
                        settle(p, failed(p.task, f"interrupted ({token.reason})", VmStatus.INTERRUPTED))
                    return
                if now > deadline:
                    for p in pending.values():
                        error = (
                            f"no worker answered within {self.settings.result_timeout:g}s "
                            f"(does a running `vmkeep worker` serve queue {p.queue}?)"
                        )
                        settle(p, failed(p.task, error))
                    return
                time.sleep(POLL)
        finally:
            client.close()

    def _answers(self, task_ids: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Celery's state of each task of ``task_ids`` it knows (started or ended): one MGET per thousand."""
        backend = self.app.backend
        for start in range(0, len(task_ids), BATCH):
            chunk = task_ids[start : start + BATCH]
            values = backend.mget([backend.get_key_for_task(t) for t in chunk])
            for task_id, raw in zip(chunk, values, strict=True):
                if raw is not None:
                    meta: dict[str, Any] = backend.decode_result(raw)
                    yield task_id, meta

    @staticmethod
    def _kept_answers(client: Any, run: str, pending: dict[str, _Pending]) -> Iterator[tuple[str, dict[str, Any]]]:
        """The answers the workers kept in their tasks' records (``done``) for tasks Celery has none of."""
        ids = list(pending)
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            values = client.mget([done_key(run, pending[t].task.vm) for t in chunk])
            for task_id, raw in zip(chunk, values, strict=True):
                if raw:
                    yield task_id, json.loads(raw)

    def _records_lost(
        self, mark: RunMark, run: str, pending: dict[str, _Pending], started: set[str], token: CancelToken
    ) -> None:
        """Redis lost the run's records (restarted empty, or from an old snapshot): every task it held in a
        queue is gone. Hand those out again now; a task a worker was seen running is handed out again
        only if, a lease later, no worker claimed it again (its worker was lost with Redis).

        The run's mark keeps any worker from claiming a task of this run for a lease (the deliveries
        sent now wait), so a worker still running one claims it again first: no task runs twice.
        """
        mark.loss()
        self._declare(pending)
        check_at = time.monotonic() + self.settings.claim_ttl
        running = 0
        for p in pending.values():
            if token.cancelled:
                break
            if p.task_id in started:
                p.check_at = check_at
                running += 1
            else:
                p.resend = True
        again = sum(1 for p in pending.values() if p.resend)
        event(
            logging.WARNING,
            "redis-lost-tasks",
            f"Redis lost the run's records: handing out again {again} queued task(s) now; "
            f"{running} running one(s) if no worker claims them again within {self.settings.claim_ttl:g}s",
            run=run,
        )

    def _declare(self, pending: dict[str, _Pending]) -> None:
        """Declare every queue of the run again (an empty Redis lost them with their bindings)."""
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in sorted({p.queue for p in pending.values()}):
                self.app.amqp.queues[name].bind(channel).declare()

    def _resend_due(self, client: Any, run: str, pending: dict[str, _Pending], token: CancelToken) -> None:
        """Send the tasks due to be handed out again; one that fails to go stays due for the next look."""
        now = time.monotonic()
        for p in list(pending.values()):
            if token.cancelled:
                return
            if p.check_at is not None and now >= p.check_at:
                claim = TaskClaim(client, run, p.task.vm, "agent", self.settings.claim_ttl)
                p.resend = claim.holder() is None and claim.done() is None
                p.check_at = None
            if p.resend:
                p.payload["resent"] = True  # the worker looks for a point of an earlier delivery first
                self._send(p)
                p.resend = False
                event(logging.INFO, "task-resent", job=p.task.job, vm=p.task.vm, queue=p.queue, run=run)

    @staticmethod
    def _cancel(client: Any, run: str, reason: str) -> None:
        try:
            client.set(cancel_key(run), reason, ex=KEEP)
        except Exception as exc:
            event(logging.WARNING, "cancel-not-sent", _describe(exc), run=run)

    @staticmethod
    def _again(p: _Pending, run: str, why: str) -> _Pending:
        """``p`` to hand out again under a new task id (the old id keeps Celery's failure)."""
        again = replace(p, task_id=f"{p.task_id}-r{p.resends + 1}", resends=p.resends + 1, check_at=None)
        event(logging.WARNING, "task-resent", why, job=p.task.job, vm=p.task.vm, queue=p.queue, run=run)
        return again


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
