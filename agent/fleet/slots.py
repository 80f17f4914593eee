"""Snapshot slots for the whole fleet: a semaphore per host and per datastore, kept in Redis.

Each limit is a sorted set whose members are the holders and whose scores are the moments
their hold expires (Redis's own clock, so the workers' clocks do not matter). Taking a slot
drops the expired holders first, then joins if fewer than the limit remain; a holder refreshes
its hold while its snapshot exists. A worker killed with its slots held cannot keep them: they
expire ``ttl`` seconds after its last refresh. Slots are taken in one global order (sorted
keys), so two tasks never wait for each other.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..engine.cancel import CancelToken
from ..engine.jobs import BackupTask
from .settings import KEY_PREFIX, LUA_NOW_MS

if TYPE_CHECKING:
    import redis

log = logging.getLogger("vmkeep.agent.fleet.slots")

# KEYS[1] the set; ARGV: holder, limit, ttl in ms. 1 if the holder has a slot now.
_ACQUIRE = (
    LUA_NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
  return 1
end
return 0
"""
)

# KEYS: the sets; ARGV: holder, ttl in ms. How many of the holds were still there to refresh. A hold
# that is gone (Redis restarted empty, or the holder was cut off longer than the ttl) is taken again:
# its snapshot exists, so it counts against the limit, even if that puts the set above it for a while.
_REFRESH = (
    LUA_NOW_MS
    + """
local kept = 0
for i, key in ipairs(KEYS) do
  if redis.call('ZSCORE', key, ARGV[1]) then
    kept = kept + 1
  end
  redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2]) * 2)
end
return kept
"""
)


def slot_keys(task: BackupTask) -> list[str]:
    keys = ([f"host:{task.host}"] if task.host else []) + [f"datastore:{d}" for d in task.datastores]
    return sorted(keys)


class FleetLimits:
    """Concurrent snapshots per host and per datastore, counted across every worker of the fleet."""

    def __init__(self, client: redis.Redis, per_host: int, per_datastore: int, ttl: float) -> None:
        self.client = client
        self.per_host = per_host
        self.per_datastore = per_datastore
        self.ttl_ms = max(1000, int(ttl * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)

    def _limit(self, key: str) -> int:
        return self.per_host if key.startswith("host:") else self.per_datastore

    @contextmanager
    def slot(self, task: BackupTask, token: CancelToken) -> Iterator[None]:
        """Wait (cancellably) for a slot on the task's host and on each of its datastores."""
        holder = f"{task.job}/{task.vm}/{uuid.uuid4().hex[:12]}"
        keys = [KEY_PREFIX + "slots:" + k for k in slot_keys(task)]
        held: list[str] = []
        stop = threading.Event()
        refresher: threading.Thread | None = None
        try:
            for key, name in zip(keys, slot_keys(task), strict=True):
                while not self._try_acquire(key, holder, self._limit(name)):
                    token.check()
                    token.wait(0.25)
                held.append(key)
                if refresher is None:
                    refresher = threading.Thread(
                        target=self._keep, args=(held, holder, stop), name="vmkeep-slots", daemon=True
                    )
                    refresher.start()
            token.check()
            yield
        finally:
            stop.set()
            if refresher is not None:
                refresher.join()
            for key in reversed(held):
                try:
                    self.client.zrem(key, holder)
                except Exception as exc:  # it expires by itself
                    log.warning(
                        "could not give back snapshot slot %s (%s); it expires in %ds", key, exc, self.ttl_ms // 1000
                    )

    def _try_acquire(self, key: str, holder: str, limit: int) -> bool:
        """One try at a slot. Redis unreachable (restarting) is waited out like a full limit: the task's
        claim keeper cancels the token if Redis stays away for half a lease."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return bool(self._acquire(keys=[key], args=[holder, limit, self.ttl_ms]))
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("cannot reach Redis for snapshot slot %s (%s); waiting", key, exc)
            return False

    def _keep(self, held: list[str], holder: str, stop: threading.Event) -> None:
        """Refresh the holds a few times per ttl until told to stop."""
        while not stop.wait(self.ttl_ms / 3000):
            try:
                kept = self._refresh(keys=list(held), args=[holder, self.ttl_ms])
            except Exception as exc:
                log.warning("could not refresh snapshot slots (%s); retrying", exc)
                continue
            if int(kept) < len(held):
                log.warning("%s: a snapshot slot was gone (Redis restarted, or cut off too long); taken again", holder)

    def holders(self, task: BackupTask) -> dict[str, int]:
        """How many holders each of the task's limits has now (for status and tests)."""
        return {k: int(self.client.zcard(KEY_PREFIX + "slots:" + k)) for k in slot_keys(task)}
