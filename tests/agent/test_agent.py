"""The real ``vmkeep agent`` process against the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures.agent import AgentProcess, history
from tests.fixtures.jobfile import write_job_file
from tests.fixtures.vcsim import Vcsim
from vmkeep.repository.repo import Repository

TWO_JOBS = """
[jobs.hosts]
source = "sim"
repository = "main"
vms = ["DC0_H0_*"]
schedule = "*/4 * * * * *"
concurrency = 2
workers = 2

[jobs.cluster]
source = "sim"
repository = "main"
vms = ["DC0_C0_RP0_VM0"]
schedule = "2-59/4 * * * * *"
workers = 2
"""


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def _points(repo: Path) -> dict[str, str]:
    with Repository.open(repo, None) as r:
        return {p.id: p.vm for p in r.points()}


def _done(rows: list[dict[str, object]], vm: str) -> list[dict[str, object]]:
    return [r for r in rows if r["vm"] == vm and r["status"] == "succeeded"]


def test_jobs_run_at_their_times_and_history_matches_the_repository(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    config = write_job_file(tmp_path, vcsim, repo_path, TWO_JOBS)
    agent = AgentProcess.start(config)
    agents.append(agent)
    vms = ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0"]
    agent.wait_for(lambda: all(len(_done(history(config), vm)) >= 2 for vm in vms), "two points of every VM")
    assert agent.stop() == 0
    assert agent.events("agent-stopped")

    rows = history(config)
    points = _points(repo_path)
    succeeded = {r["point_id"]: r["vm"] for r in rows if r["status"] == "succeeded"}
    assert succeeded == points  # every point the history names exists, and no other
    assert {r["status"] for r in rows} <= {"succeeded", "interrupted"}
    for vm in vms:
        kinds = [r["kind"] for r in _done(rows, vm)]
        assert kinds[0] == "full" and set(kinds[1:]) == {"incremental"}
    runs = agent.events("run-started")
    for event in runs:
        assert event["trigger"] == "schedule"
    for r in rows:  # on its job's slots (seconds 0, 4, 8... and 2, 6, 10...), started within a second or two
        slot = datetime.fromisoformat(str(r["scheduled"]))
        started = datetime.fromisoformat(str(r["started"]))
        assert slot.second % 4 == (0 if r["job"] == "hosts" else 2) and slot.microsecond == 0
        assert 0 <= (started - slot).total_seconds() < 3, r
    snapshots = {s.name: len(s.snapshots) for s in vcsim.api.states()}
    assert set(snapshots.values()) == {0}
