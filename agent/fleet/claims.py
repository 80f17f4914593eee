"""One VM's task of one run, done once across the fleet: a claim with a lease, and the answer kept.

Celery may deliver a task twice: the worker that had it was killed (``acks_late``: the message
goes back to the queue after the visibility timeout), or it ran longer than that timeout. Each
(run, VM) has an idempotency key, and under it in Redis:

- ``claim``: which worker runs it now, with a lease its worker refreshes. A second delivery
  waits while the lease lives (the first worker is alive), and takes over only once it lapsed.
- ``done``: the result, once there is one. A later delivery returns it instead of running again.
- ``starts``: how many times a worker began the backup. The first start and one retry; a third
  is refused, so a task that kills its workers does not go round the fleet for ever.

A worker that cannot refresh its lease for half of it stops its backup before the commit (the
task's cancel token), since another worker may take over once the lease lapses: so two workers
never both commit. And because Redis may have lost everything (restarted without persistence)
between a commit and the ``done`` record, a worker that takes over first looks in the repository
for a point made under this key (``source.fleet_task``) and returns that point instead.

A Redis that lost its records also lost the claims of running tasks: a second delivery could take
one while its first worker still runs it. So each run has a mark, set by the agent at its start
(:class:`RunMark`). A worker claims a task only while the mark exists and is due; when the agent
finds it gone, it sets it to one lease from now. The worker that still runs the task refreshes its
claim (taking it again) within a quarter of the lease, or stops its backup at half of it; only
then may another delivery claim the task.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..engine.cancel import CancelToken
from .settings import KEY_PREFIX, LUA_NOW_MS

if TYPE_CHECKING:
    import redis

log = logging.getLogger("vmkeep.agent.fleet.claims")

KEEP = 7 * 86400  # seconds the done records and counters stay

# KEYS[1] claim; ARGV: owner, ttl ms. 1: the claim is ours (refreshed, or taken again after Redis lost it).
_REFRESH = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] claim, KEYS[2] the run's mark; ARGV: owner, ttl ms. 1: the claim is ours now; 0: another
# worker holds it; -1: Redis lost the run's records (its mark is gone, or the agent noticed the loss a
# moment ago and set the mark to when claims are safe again): wait, so a worker still running this
# task has a whole lease to claim it again first.
_CLAIM = (
    LUA_NOW_MS
    + """
local mark = redis.call('GET', KEYS[2])
if not mark then
  return -1
end
if now < tonumber(mark) then
  return -1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
)

# KEYS[1] the run's mark; ARGV: the lease in ms. Claims may be taken again a lease from now.
_MARK_LOSS = (
    LUA_NOW_MS
    + """
redis.call('SET', KEYS[1], now + tonumber(ARGV[1]), 'EX', ARGV[2])
return now
"""
)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def task_key(run: str, vm: str) -> str:
    return f"{run}:{vm}"


def cancel_key(run: str) -> str:
    return f"{KEY_PREFIX}cancel:{run}"


def done_key(run: str, vm: str) -> str:
    """Where a worker keeps the answer of a VM's task (read by later deliveries and by the agent)."""
    return f"{KEY_PREFIX}task:{task_key(run, vm)}:done"


def run_mark_key(run: str) -> str:
    """Set by the agent when it starts the run; gone means Redis lost the run's records."""
    return f"{KEY_PREFIX}run:{run}"


class Claim(enum.Enum):
    TAKEN = 1  # ours now
    HELD = 0  # another worker holds it
    NOT_YET = -1  # Redis lost the run's records a moment ago: holders claim their tasks again first


class RunMark:
    """The run's mark in Redis, kept by the agent: it exists from the start of the run, and after a loss
    of Redis' records it says from when (Redis' clock) a claim may be taken again."""

    def __init__(self, client: redis.Redis, run: str, lease: float) -> None:
        self.client = client
        self.key = run_mark_key(run)
        self.lease_ms = max(1000, int(lease * 1000))
        self._mark_loss = client.register_script(_MARK_LOSS)

    def start(self) -> None:
        self.client.set(self.key, 0, ex=KEEP)

    def present(self) -> bool:
        return bool(self.client.exists(self.key))

    def loss(self) -> None:
        """Redis lost the run's records: claims may be taken again one lease from now (Redis' clock)."""
        self._mark_loss(keys=[self.key], args=[self.lease_ms, KEEP])


class TaskClaim:
    """The records of one (run, VM) in Redis, seen by one worker (``owner``)."""

    def __init__(self, client: redis.Redis, run: str, vm: str, owner: str, ttl: float) -> None:
        self.client = client
        self.run = run
        self.key = task_key(run, vm)
        self.owner = owner
        self.ttl_ms = max(1000, int(ttl * 1000))
        base = f"{KEY_PREFIX}task:{self.key}:"
        self._claim, self._done, self._starts = base + "claim", done_key(run, vm), base + "starts"
        self._mark = run_mark_key(run)
        self._refresh = client.register_script(_REFRESH)
        self._release = client.register_script(_RELEASE)
        self._claim_script = client.register_script(_CLAIM)

    def done(self) -> dict[str, Any] | None:
        raw = self.client.get(self._done)
        return json.loads(raw) if raw else None

    def try_claim(self, *, ignore_mark: bool = False) -> Claim:
        """Claim the task if nobody holds it and the run's records are whole (see :class:`RunMark`);
        ``ignore_mark`` once a whole lease went by without the mark (its agent is gone)."""
        if ignore_mark:
            return Claim.TAKEN if self.client.set(self._claim, self.owner, nx=True, px=self.ttl_ms) else Claim.HELD
        return Claim(int(self._claim_script(keys=[self._claim, self._mark], args=[self.owner, self.ttl_ms])))

    def holder(self) -> str | None:
        raw = self.client.get(self._claim)
        return raw.decode() if isinstance(raw, bytes) else raw

    def count_start(self) -> int:
        pipe = self.client.pipeline()
        pipe.incr(self._starts)
        pipe.expire(self._starts, KEEP)
        count, _ = pipe.execute()
        return int(count)

    def finish(self, result: dict[str, Any]) -> None:
        """Keep the result, then let the claim go (in that order: a waiting delivery reads the result)."""
        self.client.set(self._done, json.dumps(result), ex=KEEP)
        self._release(keys=[self._claim], args=[self.owner])

    def release(self) -> None:
        self._release(keys=[self._claim], args=[self.owner])

    def refresh(self) -> bool:
        return bool(self._refresh(keys=[self._claim], args=[self.owner, self.ttl_ms]))


class ClaimKeeper:
    """While a task runs: refresh its claim, and cancel its token if the claim is lost or the
    agent cancelled the run (``cancel:<run>`` set in Redis)."""

    def __init__(self, claim: TaskClaim, token: CancelToken, poll: float = 1.0) -> None:
        self.claim = claim
        self.token = token
        self.poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vmkeep-claim", daemon=True)

    def __enter__(self) -> ClaimKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        ttl = self.claim.ttl_ms / 1000
        last_ok = time.monotonic()
        last_refresh = 0.0
        while not self._stop.wait(self.poll):
            now = time.monotonic()
            try:
                if now - last_refresh >= ttl / 4:
                    if not self.claim.refresh():
                        self.token.cancel(f"another worker ({self.claim.holder()}) took over this task")
                        return
                    last_refresh = last_ok = now
                reason = self.claim.client.get(cancel_key(self.claim.run))
                if reason:
                    self.token.cancel(reason.decode() if isinstance(reason, bytes) else str(reason))
                    return
            except Exception as exc:
                if now - last_ok > ttl / 2:  # the lease may lapse before we are heard again: stop first
                    self.token.cancel(f"lost Redis for {now - last_ok:.0f}s; another worker may take this task over")
                    return
                log.warning("cannot refresh the claim on %s (%s); retrying", self.claim.key, exc)
