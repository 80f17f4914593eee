"""The Celery application of the fleet: its settings and its tasks, made on demand.

The agent makes one to hand out tasks, each ``vmkeep worker`` one to run them: a VM's backup,
and a point's verification or restore on one chosen worker. The task
functions find the worker's context (job file, Redis, repositories) in ``WORKER``, set by
``vmkeep worker`` before the Celery worker starts: the worker's pool is threads, in its process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..extras import extra_error
from .exceptions import FleetConfigError
from .settings import FleetSettings

if TYPE_CHECKING:
    from celery import Celery

    from .worker import WorkerContext

BACKUP_TASK = "vmkeep.backup"
VERIFY_TASK = "vmkeep.verify_point"
RESTORE_TASK = "vmkeep.restore_point"

WORKER: WorkerContext | None = None


def make_app(settings: FleetSettings) -> Celery:
    try:
        from celery import Celery
    except ImportError as exc:
        raise FleetConfigError(str(extra_error("fleet", exc, "the celery executor"))) from None
    app = Celery("vmkeep", set_as_current=False)
    app.conf.update(settings.celery_conf())

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    # A Redis restarting under a task (its claim, its answer) is waited out, not a failed VM: the
    # task runs again, and its claim finds the answer or the point an earlier run already made.
    @app.task(  # type: ignore[untyped-decorator]
        name=BACKUP_TASK,
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=(RedisConnectionError, RedisTimeoutError),
        retry_backoff=1,
        retry_backoff_max=8,
        retry_jitter=False,
        max_retries=8,
        bind=True,
    )
    def backup(self: Any, payload: dict[str, Any]) -> dict[str, Any]:
        from .worker import execute_backup

        if WORKER is None:
            raise RuntimeError("vmkeep.backup runs in `vmkeep worker` only")
        return execute_backup(WORKER, payload, retried=bool(self.request.retries))

    @app.task(name=VERIFY_TASK)  # type: ignore[untyped-decorator]
    def verify(payload: dict[str, Any]) -> dict[str, Any]:
        from .points import verify_point

        if WORKER is None:
            raise RuntimeError(f"{VERIFY_TASK} runs in `vmkeep worker` only")
        return verify_point(WORKER, payload)

    @app.task(name=RESTORE_TASK)  # type: ignore[untyped-decorator]
    def restore(payload: dict[str, Any]) -> dict[str, Any]:
        from .points import restore_point

        if WORKER is None:
            raise RuntimeError(f"{RESTORE_TASK} runs in `vmkeep worker` only")
        return restore_point(WORKER, payload)

    return app
