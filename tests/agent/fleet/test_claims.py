"""A VM's task claim on a real redis-server, and the run's mark that guards it when Redis loses its data."""

from __future__ import annotations

import time

from tests.fixtures.redis import RedisServer
from vmkeep.agent.fleet.claims import Claim, RunMark, TaskClaim

LEASE = 2.0


def claim(redis_server: RedisServer, owner: str) -> TaskClaim:
    return TaskClaim(redis_server.client(), "run1", "vm1", owner, LEASE)  # type: ignore[arg-type]


def test_a_task_is_claimed_once_while_its_run_is_marked(redis_server: RedisServer) -> None:
    RunMark(redis_server.client(), "run1", LEASE).start()  # type: ignore[arg-type]
    first, second = claim(redis_server, "a"), claim(redis_server, "b")
    assert first.try_claim() == Claim.TAKEN
    assert second.try_claim() == Claim.HELD
    first.release()
    assert second.try_claim() == Claim.TAKEN


def test_after_redis_lost_the_run_a_running_holder_claims_again_before_anyone_else(redis_server: RedisServer) -> None:
    RunMark(redis_server.client(), "run1", LEASE).start()  # type: ignore[arg-type]
    running, resent = claim(redis_server, "running"), claim(redis_server, "resent")
    assert running.try_claim() == Claim.TAKEN

    redis_server.restart()  # empty: the claim and the run's mark are gone
    assert resent.try_claim() == Claim.NOT_YET, "a delivery may not take a task Redis just forgot"
    mark = RunMark(redis_server.client(), "run1", LEASE)  # type: ignore[arg-type]
    assert not mark.present()
    mark.loss()  # the agent noticed: claims are safe again a lease from now
    assert mark.present()
    assert resent.try_claim() == Claim.NOT_YET
    assert running.refresh(), "the worker still running the task takes its claim again"
    deadline = time.monotonic() + 30
    while resent.try_claim() == Claim.NOT_YET and time.monotonic() < deadline:
        assert running.refresh()  # as its claim keeper does while the backup runs
        time.sleep(0.1)
    assert resent.try_claim() == Claim.HELD
    assert resent.holder() == "running"


def test_a_task_nobody_runs_is_claimed_a_lease_after_the_loss(redis_server: RedisServer) -> None:
    mark = RunMark(redis_server.client(), "run1", LEASE)  # type: ignore[arg-type]
    mark.start()
    redis_server.restart()
    mark = RunMark(redis_server.client(), "run1", LEASE)  # type: ignore[arg-type]
    mark.loss()
    resent = claim(redis_server, "resent")
    assert resent.try_claim() == Claim.NOT_YET
    deadline = time.monotonic() + 30
    while (state := resent.try_claim()) == Claim.NOT_YET and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state == Claim.TAKEN
    assert resent.holder() == "resent"


def test_without_the_mark_a_claim_is_taken_only_when_told_the_agent_is_gone(redis_server: RedisServer) -> None:
    lone = claim(redis_server, "lone")
    assert lone.try_claim() == Claim.NOT_YET  # no agent marked run1
    assert lone.try_claim(ignore_mark=True) == Claim.TAKEN
