"""The real ``vmkeep agent`` process against the simulator."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.fixtures.agent import AgentProcess, WebhookReceiver, history, listen_address, scrape
from tests.fixtures.jobfile import write_job_file
from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import restored_disks
from vmkeep.repository.exceptions import RepositoryLocked
from vmkeep.repository.locks import Lock
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
        started = datetime.fromisoformat(str(r["run_started"]))
        assert slot.second % 4 == (0 if r["job"] == "hosts" else 2) and slot.microsecond == 0
        assert 0 <= (started - slot).total_seconds() < 2, r
    snapshots = {s.name: len(s.snapshots) for s in vcsim.api.states()}
    assert set(snapshots.values()) == {0}
    # lines logged deep in a backup carry the job and VM of the task that logged them
    cbt = [e for e in agent.events() if "change tracking was off" in e["message"]]
    assert {(e["job"], e["vm"]) for e in cbt} == {
        ("hosts", "DC0_H0_VM0"),
        ("hosts", "DC0_H0_VM1"),
        ("cluster", "DC0_C0_RP0_VM0"),
    }


ONE_JOB = """
[jobs.nightly]
source = "sim"
repository = "main"
vms = ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0"]
schedule = "{schedule}"
concurrency = 3
workers = 2
{extra}
"""


def _one_job(schedule: str = "*/2 * * * * *", extra: str = "") -> str:
    return ONE_JOB.format(schedule=schedule, extra=extra)


def test_a_failing_vm_is_retried_and_reported_while_the_others_succeed(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    hook = WebhookReceiver()
    try:
        vcsim.api.http_status(403, path_contains="DC0_H0_VM1/", count=-1)  # its disk cannot be read
        extra = f'retries = {{ count = 1, delay = 0 }}\nwebhook = "{hook.url}"'
        config = write_job_file(tmp_path, vcsim, repo_path, _one_job("*/3 * * * * *", extra))
        agent = AgentProcess.start(config, "--listen", "127.0.0.1:0")
        agents.append(agent)
        address = listen_address(agent)
        agent.wait_for(lambda: hook.received, "a failure notice")
        metrics = scrape(address)
        assert agent.stop() == 0
    finally:
        hook.close()
    rows = [r for r in history(config) if r["run_id"] == hook.received[0]["run_id"]]
    by_vm = {r["vm"]: r for r in rows}
    assert by_vm["DC0_H0_VM1"]["status"] == "failed" and by_vm["DC0_H0_VM1"]["attempts"] == 2
    assert "HTTP 403" in by_vm["DC0_H0_VM1"]["error"] and by_vm["DC0_H0_VM1"]["point_id"] is None
    for vm in ("DC0_H0_VM0", "DC0_C0_RP0_VM0"):
        assert by_vm[vm]["status"] == "succeeded" and by_vm[vm]["point_id"] in _points(repo_path)
    notice = hook.received[0]
    assert notice["job"] == "nightly" and notice["status"] == "partial"
    assert [f["vm"] for f in notice["failed"]] == ["DC0_H0_VM1"] and notice["failed"][0]["attempts"] == 2
    assert sorted(s["vm"] for s in notice["succeeded"]) == ["DC0_C0_RP0_VM0", "DC0_H0_VM0"]
    assert [e["vm"] for e in agent.events("vm-retry")][:1] == ["DC0_H0_VM1"]
    job = ("job", "nightly")
    assert metrics[("vmkeep_vm_last_backup_ok", (job, ("vm", "DC0_H0_VM1")))] == 0
    assert metrics[("vmkeep_vm_last_backup_ok", (job, ("vm", "DC0_H0_VM0")))] == 1
    assert metrics[("vmkeep_vm_backups_total", (job, ("status", "failed"), ("vm", "DC0_H0_VM1")))] >= 1
    assert ("vmkeep_vm_last_success_timestamp_seconds", (job, ("vm", "DC0_H0_VM1"))) not in metrics
    assert metrics[("vmkeep_job_failures_total", (job,))] >= 1
    assert {len(s.snapshots) for s in vcsim.api.states()} == {0}


def test_sigterm_mid_backup_removes_the_snapshots_and_commits_nothing(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    # A slow datastore: each read of a disk (4 MiB, one or two per disk here) takes 2 s, so that every
    # VM is still reading when the third snapshot appears and the agent is stopped.
    vcsim.api.delay(2.0, path_contains="-flat.vmdk", count=100_000)
    config = write_job_file(tmp_path, vcsim, repo_path, _one_job())
    agent = AgentProcess.start(config)
    agents.append(agent)
    agent.wait_for(
        lambda: sum(len(s.snapshots) for s in vcsim.api.states()) == 3, "every VM's backup to hold its snapshot"
    )
    agent.signal(signal.SIGTERM)
    assert agent.proc.wait(60) == 0
    assert {len(s.snapshots) for s in vcsim.api.states()} == {0}
    assert _points(repo_path) == {}
    rows = history(config)
    assert rows and {r["status"] for r in rows} == {"interrupted"}
    assert run_vmkeep("verify", "--repo", repo_path).code == 0


def test_a_restart_runs_a_missed_job_once(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    config = write_job_file(tmp_path, vcsim, repo_path, _one_job())
    first = AgentProcess.start(config)
    agents.append(first)
    first.wait_for(lambda: first.events("run-finished"), "a first run")
    assert first.stop() == 0
    time.sleep(5)  # the agent is down for two or more slots (every 2 s)
    second = AgentProcess.start(config)
    agents.append(second)
    second.wait_for(lambda: second.events("run-finished"), "the missed run")
    assert second.stop() == 0
    started = second.events("run-started")
    missed = [e for e in started if e["trigger"] == "missed"]
    assert len(missed) == 1 and started[0] == missed[0]  # once, first, however many slots were missed
    run = next(r for r in history(config) if r["run_id"] == missed[0]["run"])
    slot = datetime.fromisoformat(str(run["scheduled"]))
    boot = datetime.fromisoformat(second.events("agent-started")[0]["time"])
    assert slot.second % 2 == 0 and 0 <= (boot - slot).total_seconds() < 3  # the newest slot before the start
    assert run["status"] == "succeeded"


def test_sighup_with_a_broken_file_keeps_the_old_jobs(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    config = write_job_file(tmp_path, vcsim, repo_path, _one_job())
    good = config.read_text()
    agent = AgentProcess.start(config)
    agents.append(agent)
    config.write_text(good.replace('schedule = "*/2 * * * * *"', 'schedule = "*/2 * * * *  * *"'))
    agent.signal(signal.SIGHUP)
    refused = agent.wait_for(lambda: agent.events("reload-refused"), "the reload to be refused")
    assert "jobs.nightly.schedule" in refused[0]["message"] and "keeping the previous jobs" in refused[0]["message"]
    count = len(agent.events("run-started"))
    agent.wait_for(lambda: len(agent.events("run-started")) > count + 1, "the old job to go on")

    config.write_text(good.replace('schedule = "*/2 * * * * *"', 'schedule = "*/3 * * * * *"'))
    agent.signal(signal.SIGHUP)
    agent.wait_for(lambda: agent.events("reloaded"), "the valid file to be loaded")
    assert agent.stop() == 0


def _exclusive_between_runs(repo: Repository, operation: str, timeout: float = 60.0) -> Lock:
    """An exclusive lock, taken between two runs of a job: a run holds a shared lock while it lasts,
    and an exclusive lock is refused meanwhile (as it must be), so this tries again until it is free."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return repo.lock(operation, exclusive=True)
        except RepositoryLocked:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_missing_or_locked_repository_fails_its_job_and_the_agent_goes_on(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    jobs = f"""
[repositories.gone]
path = "{tmp_path / "nowhere"}"

[jobs.lost]
source = "sim"
repository = "gone"
vms = ["DC0_H0_VM1"]
schedule = "*/2 * * * * *"

[jobs.ok]
source = "sim"
repository = "main"
vms = ["DC0_H0_VM0"]
schedule = "*/2 * * * * *"
workers = 2
"""
    config = write_job_file(tmp_path, vcsim, repo_path, jobs)
    agent = AgentProcess.start(config)
    agents.append(agent)
    agent.wait_for(lambda: history(config, "--job", "lost") and history(config, "--job", "ok"), "both jobs to run")
    lost = history(config, "--job", "lost")[0]
    assert lost["status"] == "failed" and lost["vm"] is None
    assert f"repository 'gone' ({tmp_path / 'nowhere'}): " in lost["error"] and "does not exist" in lost["error"]

    with Repository.open(repo_path, None) as repo, _exclusive_between_runs(repo, "a test holds it"):
        agent.wait_for(
            lambda: any("is locked" in (r["error"] or "") for r in history(config, "--job", "ok")), "a locked run"
        )
    locked = next(r for r in history(config, "--job", "ok") if "is locked" in (r["error"] or ""))
    assert locked["status"] == "failed" and "a test holds it" in locked["error"]
    agent.wait_for(lambda: history(config, "--job", "ok")[-1]["status"] == "succeeded", "the job to succeed again")
    assert agent.proc.poll() is None
    assert agent.stop() == 0


def test_retention_runs_after_each_job(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    extra = "[jobs.nightly.retention]\nlast = 2\n"
    config = write_job_file(
        tmp_path,
        vcsim,
        repo_path,
        _one_job(extra=extra).replace('"DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0"', '"DC0_H0_VM0"'),
    )
    agent = AgentProcess.start(config)
    agents.append(agent)
    agent.wait_for(lambda: len(agent.events("point-forgotten")) >= 2, "two points forgotten")
    assert agent.stop() == 0
    made = [r["point_id"] for r in history(config) if r["status"] == "succeeded"]
    assert len(made) >= 4
    assert set(_points(repo_path)) == set(made[-2:])


def test_an_invalid_file_stops_the_agent_from_starting(tmp_path: Path) -> None:
    config = tmp_path / "vmkeep.toml"
    config.write_text('[jobs.x]\nsource = "a"\nrepository = "b"\nvms = ["v"]\nschedule = "* * *"\n')
    result = run_vmkeep("agent", "--config", config)
    assert result.code == 2
    assert_one_line_error(result, "jobs.x.schedule (line 5): a cron schedule has 5 fields")


def test_gc_runs_on_its_schedule_and_waits_for_backups(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    vcsim.api.delay(0.02, path_contains="-flat.vmdk", count=100_000)  # backups last a while
    extra = "[jobs.nightly.retention]\nlast = 1\n"  # forgotten points leave garbage for gc
    config = write_job_file(tmp_path, vcsim, repo_path, _one_job(extra=extra), agent='gc_schedule = "*/3 * * * * *"\n')
    agent = AgentProcess.start(config)
    agents.append(agent)
    agent.wait_for(lambda: len(agent.events("gc-done")) >= 3, "three collections")
    agent.wait_for(lambda: len(agent.events("run-finished")) >= 4, "four runs")
    assert agent.stop() == 0
    assert agent.events("gc-waiting")
    assert not agent.events("gc-failed")
    finished = [e for e in agent.events("run-finished")]
    assert {e["status"] for e in finished} <= {"succeeded", "interrupted"}  # the last may be cut by SIGTERM
    assert [e["status"] for e in finished[:-1]] == ["succeeded"] * (len(finished) - 1)
    assert sum(e["freed"] for e in agent.events("gc-done")) >= 0
    assert run_vmkeep("verify", "--read-data", "--repo", repo_path).code == 0
    made = {r["vm"]: r["point_id"] for r in history(config) if r["status"] == "succeeded"}
    assert set(_points(repo_path)) == set(made.values())  # the newest point of each VM, gc kept them


def test_an_encrypted_repository_is_unlocked_from_its_passphrase_source(
    tmp_path: Path, vcsim: Vcsim, agents: list[AgentProcess]
) -> None:
    repo = tmp_path / "sealed"
    assert run_vmkeep("init", repo, "--encrypt", env={"VMKEEP_PASSPHRASE": "correct horse"}).code == 0
    secret = tmp_path / "passphrase"
    secret.write_text("correct horse\n")
    config = write_job_file(tmp_path, vcsim, repo, _one_job().replace('"DC0_H0_VM1", "DC0_C0_RP0_VM0"', '"DC0_H0_VM1"'))
    config.write_text(config.read_text().replace(f'path = "{repo}"', f'path = "{repo}"\npassphrase_file = "{secret}"'))
    agent = AgentProcess.start(config)
    agents.append(agent)
    agent.wait_for(lambda: len([e for e in agent.events("run-finished") if e["status"] == "succeeded"]) >= 2, "runs")
    assert agent.stop() == 0
    with Repository.open(repo, b"correct horse") as r:
        assert {p.id for p in r.points()} == {row["point_id"] for row in history(config) if row["point_id"]}
    assert "correct horse" not in agent.log()


def test_the_agents_long_lived_handle_never_reuses_blocks_gc_removed(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path, agents: list[AgentProcess]
) -> None:
    """gc by another process between two runs: the next run re-reads the index and stores the block again."""
    vm = "DC0_H0_VM0"
    old, new = random.Random(1).randbytes(1 << 20), random.Random(2).randbytes(1 << 20)
    vcsim.api.write(vm, 0, old)
    config = write_job_file(tmp_path, vcsim, repo_path, _one_job().replace('"DC0_H0_VM1", "DC0_C0_RP0_VM0"', ""))
    agent = AgentProcess.start(config)
    agents.append(agent)

    def succeeded_after(moment: datetime) -> list[dict[str, object]]:
        rows = history(config, "--vm", vm)
        return [r for r in rows if r["status"] == "succeeded" and datetime.fromisoformat(str(r["started"])) > moment]

    start = datetime.now(UTC)
    agent.wait_for(lambda: succeeded_after(start), "a point holding the old data")
    changed = datetime.now(UTC)
    vcsim.api.write(vm, 0, new)  # the old blocks are now used only by the first point(s)
    agent.wait_for(lambda: succeeded_after(changed), "a point without them")
    assert run_vmkeep("forget", "--keep-last", "1", "--vm", vm, "--repo", repo_path).code == 0

    def collect() -> bool:  # between two of the agent's runs (it holds a lock while one runs)
        return run_vmkeep("gc", "--repo", repo_path).code == 0

    agent.wait_for(collect, "gc to find the repository free")
    back = datetime.now(UTC)
    vcsim.api.write(vm, 0, old)  # the old data again: its blocks were removed by gc
    row = agent.wait_for(lambda: succeeded_after(back), "a point holding the old data again")[0]
    assert agent.stop() == 0

    assert run_vmkeep("verify", "--read-data", "--repo", repo_path).code == 0
    with Repository.open(repo_path, None) as repo:
        point = repo.find_point(str(row["point_id"]))
        [disk] = restored_disks(repo, point, tmp_path).values()
    assert disk[: 1 << 20] == old
