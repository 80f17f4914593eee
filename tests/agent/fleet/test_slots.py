"""Snapshot slots across the fleet, on a real redis-server."""

from __future__ import annotations

import threading
import time

from tests.fixtures.redis import RedisServer
from vmkeep.agent.engine.cancel import CancelToken
from vmkeep.agent.engine.jobs import BackupTask
from vmkeep.agent.fleet.slots import FleetLimits


def task(vm: str, host: str = "host-1", datastores: tuple[str, ...] = ("ds-1",)) -> BackupTask:
    return BackupTask("job", vm, "sim", "main", host=host, datastores=datastores)


def test_a_host_limit_holds_across_handles_and_frees_as_slots_are_given_back(redis_server: RedisServer) -> None:
    # two handles on one Redis: two workers of the fleet
    first = FleetLimits(redis_server.client(), per_host=1, per_datastore=5, ttl=30)  # type: ignore[arg-type]
    second = FleetLimits(redis_server.client(), per_host=1, per_datastore=5, ttl=30)  # type: ignore[arg-type]
    token = CancelToken()
    entered = threading.Event()
    with first.slot(task("a"), token):
        assert first.holders(task("a")) == {"host:host-1": 1, "datastore:ds-1": 1}

        def other() -> None:
            with second.slot(task("b"), token):
                entered.set()

        thread = threading.Thread(target=other)
        thread.start()
        assert not entered.wait(1.0), "a second snapshot on the host while the first exists"
        with second.slot(task("c", host="host-2"), token):  # another host is not held up
            pass
    assert entered.wait(10)
    thread.join()
    assert first.holders(task("a")) == {"host:host-1": 0, "datastore:ds-1": 0}


def test_a_slot_of_a_crashed_worker_expires(redis_server: RedisServer) -> None:
    crashed = FleetLimits(redis_server.client(), per_host=1, per_datastore=5, ttl=1)  # type: ignore[arg-type]
    # a holder that took its slot and vanished: taken through the script, never refreshed nor given back
    key = "vmkeep:fleet:slots:host:host-1"
    assert crashed._acquire(keys=[key], args=["gone", 1, 1000])
    survivor = FleetLimits(redis_server.client(), per_host=1, per_datastore=5, ttl=30)  # type: ignore[arg-type]
    assert not survivor._acquire(keys=[key], args=["early", 1, 30000]), "the crashed holder's slot was not counted"
    with survivor.slot(task("b", datastores=()), CancelToken()):  # once its hold expired
        assert survivor.holders(task("b", datastores=())) == {"host:host-1": 1}


def test_waiting_for_a_slot_is_cancellable(redis_server: RedisServer) -> None:
    import pytest

    from vmkeep.agent.engine.exceptions import Interrupted

    limits = FleetLimits(redis_server.client(), per_host=1, per_datastore=5, ttl=30)  # type: ignore[arg-type]
    token = CancelToken()
    with limits.slot(task("a"), token):
        waiting = token.child("b")
        threading.Timer(0.5, waiting.cancel, args=["stop"]).start()
        with pytest.raises(Interrupted), limits.slot(task("b"), waiting):
            pass


def test_a_held_slot_lost_with_redis_is_taken_again_and_counted(redis_server: RedisServer) -> None:
    holder = FleetLimits(redis_server.client(), per_host=1, per_datastore=5, ttl=3)  # type: ignore[arg-type]
    other = FleetLimits(redis_server.client(), per_host=1, per_datastore=5, ttl=30)  # type: ignore[arg-type]
    key = "vmkeep:fleet:slots:host:host-1"
    with holder.slot(task("a", datastores=()), CancelToken()):
        redis_server.restart()  # empty: the hold is gone, the snapshot it stands for is not
        client = redis_server.client()
        deadline = time.monotonic() + 30
        while not client.exists(key) and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.1)
        assert not other._try_acquire(key, "b", 1), "a second snapshot on the host while the first exists"
    assert other._try_acquire(key, "b", 1)


def test_waiting_for_a_slot_outlasts_redis_restarting(redis_server: RedisServer) -> None:
    limits = FleetLimits(redis_server.client(), per_host=1, per_datastore=5, ttl=30)  # type: ignore[arg-type]
    redis_server.stop()
    token = CancelToken()
    got: list[bool] = []

    def take() -> None:
        with limits.slot(task("a"), token):
            got.append(True)

    thread = threading.Thread(target=take)
    thread.start()
    time.sleep(1.0)  # the first tries meet a closed port
    assert not got
    redis_server.start()
    thread.join(30)
    assert got == [True]
