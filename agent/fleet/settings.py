"""The fleet's settings from the job file's ``[executor]``: the broker, its password, queue names.

The broker URL in the job file carries no password (URLs end up in logs and on command lines);
the password is read from ``password_file`` or ``password_env`` and handed to Celery and redis-py
as a separate setting, so it is never part of a URL.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import secrets
from ..config.kinds import ExecutorType, Routing
from ..config.load import LoadedConfig
from ..config.model import ExecutorConfig
from ..engine.jobs import BackupTask
from .exceptions import FleetConfigError

if TYPE_CHECKING:
    import redis

DEFAULT_QUEUE = "vmkeep"
KEY_PREFIX = "vmkeep:fleet:"
# The first lines of the fleet's Lua scripts: ``now``, Redis's own clock in milliseconds, so that
# the workers' clocks never matter.
LUA_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


def vmkeep_version() -> str:
    """The installed vmkeep's version: the agent and its workers must run the same one."""
    import importlib.metadata

    try:
        return importlib.metadata.version("vmkeep")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def host_queue(host: str) -> str:
    return f"{DEFAULT_QUEUE}.host.{host}"


def worker_queue(hostname: str) -> str:
    """The queue only this worker serves (restores and checks sent to it by name)."""
    return f"{DEFAULT_QUEUE}.worker.{hostname}"


def datastore_queue(datastore: str) -> str:
    return f"{DEFAULT_QUEUE}.datastore.{datastore}"


@dataclass(frozen=True)
class FleetSettings:
    broker: str  # without a password
    password: str | None = field(repr=False)
    routing: Routing
    visibility_timeout: float
    slot_ttl: float
    claim_ttl: float
    result_timeout: float

    @classmethod
    def of(cls, cfg: LoadedConfig) -> FleetSettings:
        executor: ExecutorConfig = cfg.config.executor
        if executor.type != ExecutorType.CELERY or not executor.broker:
            raise FleetConfigError(f'{cfg.path}: [executor] type = "celery" and broker are needed for the fleet')
        return cls(
            executor.broker,
            _password(executor),
            executor.routing,
            executor.visibility_timeout,
            executor.slot_ttl,
            executor.claim_ttl,
            executor.result_timeout,
        )

    def queue_of(self, task: BackupTask) -> str:
        """The queue a VM's task goes to: its host's, its first datastore's, or the default one."""
        if self.routing == Routing.HOST and task.host:
            return host_queue(task.host)
        if self.routing == Routing.DATASTORE and task.datastores:
            return datastore_queue(task.datastores[0])
        return DEFAULT_QUEUE

    def redis(self) -> redis.Redis:
        """A client of the broker's Redis (the slots, claims and results of the fleet live there)."""
        import redis as redis_module

        client: redis.Redis = redis_module.Redis.from_url(
            self.broker, password=self.password, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
        )
        return client

    def celery_conf(self) -> dict[str, Any]:
        """Celery's settings; the password separate from the URLs (Celery prints URLs, masked or not)."""
        transport = {
            "visibility_timeout": self.visibility_timeout,
            # sweep for tasks of lost workers often: a sweep is one ZRANGEBYSCORE
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
        return {
            "broker_url": self.broker,
            "broker_transport": "vmkeep.agent.fleet.transport:Transport",  # survives losing Redis (see there)
            "broker_password": self.password,
            "result_backend": self.broker,
            "redis_password": self.password,
            "broker_transport_options": transport,
            "result_backend_transport_options": {"visibility_timeout": self.visibility_timeout},
            "result_expires": 7 * 86400,
            "broker_connection_retry_on_startup": True,
            "task_serializer": "json",
            "result_serializer": "json",
            "accept_content": ["json"],
            "task_default_queue": DEFAULT_QUEUE,
            "task_acks_late": True,  # acknowledged once done: a worker killed mid-task leaves it to another
            "task_reject_on_worker_lost": True,  # a pool process lost mid-task: the task goes back to the queue
            "task_acks_on_failure_or_timeout": True,
            "worker_prefetch_multiplier": 1,  # a worker holds no more tasks than it runs
            "worker_hijack_root_logger": False,
            "worker_redirect_stdouts": False,
            "worker_cancel_long_running_tasks_on_connection_loss": False,
            "task_track_started": True,
        }


def _password(executor: ExecutorConfig) -> str | None:
    if executor.password_path is not None:
        return secrets.read_secret_file(executor.password_path, "executor password").decode()
    if executor.password_env:
        value = os.environ.get(executor.password_env)
        if not value:
            raise FleetConfigError(f"executor: the environment variable {executor.password_env} is not set")
        return value
    return None
