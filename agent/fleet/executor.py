"""The agent's side of the fleet: each VM's task to its queue, each result into the history as it comes.

The scheduler stays single: the agent plans the run, hands one Celery task per VM to the queue
of the VM's host, and polls for the answers. Each answer is recorded (history, metrics, log) the
moment it arrives, so a Redis that restarts mid-run loses no finished task's result. If Redis
comes back empty (no persistence), tasks that no worker took are handed out again: their
idempotency keys keep them from running twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..daemon.logs import event
from ..engine.cancel import CancelToken
from ..engine.jobs import BackupTask, Executor, Resources, RetryPolicy, VmResult, VmStatus
from .app import BACKUP_TASK, make_app
from .claims import KEEP, TaskClaim, cancel_key
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


@dataclass
class _Pending:
    index: int
    task: BackupTask
    task_id: str
    queue: str
    payload: dict[str, Any]
    resends: int = 0  # times handed out again after Celery itself failed the task


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

        def settle(p: _Pending, result: VmResult) -> None:
            results[p.index] = result
            if on_result is not None:
                on_result(result)

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
        self._wait(run, pending, token, settle)
        return [r for r in results if r is not None]

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
    ) -> None:
        client = self.settings.redis()
        deadline = time.monotonic() + self.settings.result_timeout
        stop_deadline: float | None = None
        redis_id: str | None = None
        down_since: float | None = None
        resend_at: float | None = None
        try:
            while pending:
                if token.cancelled and stop_deadline is None:
                    stop_deadline = time.monotonic() + STOP_GRACE
                    self._cancel(client, run, token.reason)
                try:
                    server = str(client.info("server")["run_id"])
                    if redis_id is not None and server != redis_id:
                        # live workers claim their tasks again within a quarter of the lease: wait half of it
                        event(logging.WARNING, "redis-restarted", "handing out again the tasks it lost", run=run)
                        resend_at = time.monotonic() + self.settings.claim_ttl / 2
                    redis_id = server
                    if resend_at is not None and time.monotonic() >= resend_at:
                        resend_at = None
                        self._resend_lost(client, run, pending, token)
                    for task_id, meta in self._answers(list(pending)):
                        p = pending.pop(task_id)
                        if meta["status"] == "SUCCESS":
                            settle(p, result_from_json(meta["result"]))
                        elif p.resends < MAX_RESENDS and not token.cancelled:
                            # vmkeep answers every failure of its own; this is Celery's (a connection
                            # lost while Redis restarted). The claim makes a second delivery safe: it
                            # finds the answer or the point an earlier one made.
                            again = self._again(p, run, f"Celery failed the task: {meta['result']!r}")
                            pending[again.task_id] = again  # pending before sent: a failed send leaves it to
                            self._send(again)  # _resend_lost once Redis is back
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
        """The tasks of ``task_ids`` that ended, with their answers: one MGET per thousand tasks."""
        backend = self.app.backend
        for start in range(0, len(task_ids), BATCH):
            chunk = task_ids[start : start + BATCH]
            values = backend.mget([backend.get_key_for_task(t) for t in chunk])
            for task_id, raw in zip(chunk, values, strict=True):
                if raw is None:
                    continue
                meta: dict[str, Any] = backend.decode_result(raw)
                if meta["status"] in ENDED:
                    yield task_id, meta

    @staticmethod
    def _cancel(client: Any, run: str, reason: str) -> None:
        try:
            client.set(cancel_key(run), reason, ex=KEEP)
        except Exception as exc:
            event(logging.WARNING, "cancel-not-sent", _describe(exc), run=run)

    @staticmethod
    def _again(p: _Pending, run: str, why: str) -> _Pending:
        """``p`` to hand out again under a new task id (the old id keeps Celery's failure)."""
        again = replace(p, task_id=f"{p.task_id}-r{p.resends + 1}", resends=p.resends + 1)
        again.payload["resent"] = True  # the worker looks for a point of an earlier delivery first
        event(logging.WARNING, "task-resent", why, job=p.task.job, vm=p.task.vm, queue=p.queue, run=run)
        return again

    def _resend_lost(self, client: Any, run: str, pending: dict[str, _Pending], token: CancelToken) -> None:
        """After Redis came back empty: send again each task no worker holds or answered.

        Kombu keeps a queue's binding to its exchange in Redis, and its producer remembers what it
        declared: after an empty restart a message sent before some worker re-declared that queue
        would be routed nowhere and dropped. So every queue is declared again first.
        """
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for name in sorted({p.queue for p in pending.values()}):
                self.app.amqp.queues[name].bind(channel).declare()
        for p in pending.values():
            claim = TaskClaim(client, run, p.task.vm, "agent", self.settings.claim_ttl)
            if claim.holder() is None and claim.done() is None and not token.cancelled:
                p.payload["resent"] = True  # the worker looks for a point of an earlier delivery first
                self._send(p)
                event(logging.INFO, "task-resent", job=p.task.job, vm=p.task.vm, queue=p.queue, run=run)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
