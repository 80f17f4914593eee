"""'vmkeep jobs', 'jobs run' and 'history': through a running agent, and in the foreground without one."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures.agent import AgentProcess, history, listen_address, scrape, status
from tests.fixtures.jobfile import write_job_file
from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim
from vmkeep.repository.repo import Repository

JOBS = """
[jobs.yearly]
source = "sim"
repository = "main"
vms = ["DC0_H0_*"]
schedule = "0 3 1 1 *"
workers = 2
"""


@pytest.fixture
def config(tmp_path: Path, vcsim: Vcsim, repo_path: Path) -> Path:
    return write_job_file(tmp_path, vcsim, repo_path, JOBS)


def test_jobs_run_in_the_foreground_without_an_agent(config: Path, repo_path: Path) -> None:
    result = run_vmkeep("jobs", "run", "yearly", "--vm", "DC0_H0_VM1", "--config", config, "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["agent"] is False and doc["status"] == "succeeded" and doc["trigger"] == "manual"
    [vm] = doc["vms"]
    assert vm["vm"] == "DC0_H0_VM1" and vm["kind"] == "full"
    with Repository.open(repo_path, None) as repo:
        assert [(p.id, p.vm) for p in repo.points()] == [(vm["point_id"], "DC0_H0_VM1")]
    [row] = history(config, "--vm", "DC0_H0_VM1")
    assert row["point_id"] == vm["point_id"] and row["trigger"] == "manual" and row["read_bytes"] == vm["read_bytes"]
    assert history(config, "--vm", "DC0_H0_VM0") == []
    assert history(config, "--since", "1h") == [row]
    assert history(config, "--since", "2999-01-01") == []

    text = run_vmkeep("history", "--config", config)
    assert text.code == 0 and "DC0_H0_VM1" in text.out and vm["point_id"][:12] in text.out

    outsider = run_vmkeep("jobs", "run", "yearly", "--vm", "DC0_C0_RP0_VM0", "--config", config, "--json")
    assert outsider.code == 1
    assert json.loads(outsider.out)["vms"][0]["error"] == "VM 'DC0_C0_RP0_VM0' is not in job 'yearly'"
    assert_one_line_error(run_vmkeep("jobs", "run", "nope", "--config", config), "no job named 'nope'")


def test_jobs_and_jobs_run_through_the_running_agent(config: Path, repo_path: Path) -> None:
    agent = AgentProcess.start(config, "--listen", "127.0.0.1:0")
    address = listen_address(agent)
    try:
        listing = run_vmkeep("jobs", "--config", config, "--json")
        assert listing.code == 0, listing.err
        doc = json.loads(listing.out)
        assert doc["agent_running"] is True
        [job] = doc["jobs"]
        assert job["job"] == "yearly" and job["last_run"] is None and "-01-01T03:00:00" in job["next_run"]

        started = run_vmkeep("jobs", "run", "yearly", "--config", config, "--json")
        assert started.code == 0, started.err
        run_id = json.loads(started.out)["run_id"]
        agent.wait_for(lambda: agent.events("run-finished", run=run_id), "the agent's run")
        rows = history(config)
        assert {r["vm"] for r in rows} == {"DC0_H0_VM0", "DC0_H0_VM1"}
        assert {r["run_id"] for r in rows} == {run_id} and {r["trigger"] for r in rows} == {"manual"}
        last = json.loads(run_vmkeep("jobs", "--config", config, "--json").out)["jobs"][0]["last_run"]
        assert last["id"] == run_id and last["status"] == "succeeded"
        last_vms = json.loads(run_vmkeep("jobs", "--config", config, "--json").out)["jobs"][0]["last_vms"]
        assert last_vms == {"DC0_H0_VM0": "succeeded", "DC0_H0_VM1": "succeeded"}
        text = run_vmkeep("jobs", "--config", config)
        assert "yearly" in text.out and "succeeded" in text.out and "DC0_H0_VM0 ok, DC0_H0_VM1 ok" in text.out

        metrics = scrape(address)  # /metrics says what the history and the repository say
        for row in rows:
            labels = (("job", "yearly"), ("vm", row["vm"]))
            assert metrics[("vmkeep_vm_last_backup_read_bytes", labels)] == row["read_bytes"] > 0
            assert metrics[("vmkeep_vm_last_backup_stored_bytes", labels)] == row["stored_bytes"]
            assert metrics[("vmkeep_vm_last_backup_ok", labels)] == 1
            assert metrics[("vmkeep_vm_last_success_timestamp_seconds", labels)] == pytest.approx(
                datetime.fromisoformat(row["ended"]).timestamp(), abs=1
            )
            assert metrics[("vmkeep_vm_backups_total", tuple(sorted((*labels, ("status", "succeeded")))))] == 1
        assert metrics[("vmkeep_job_runs_total", (("job", "yearly"),))] == 1
        assert metrics[("vmkeep_job_failures_total", (("job", "yearly"),))] == 0
        on_disk = sum(f.stat().st_size for f in repo_path.rglob("*") if f.is_file())
        assert metrics[("vmkeep_repository_size_bytes", (("repository", "main"),))] == on_disk
        doc = status(address)
        assert doc["jobs"]["yearly"]["running"] is False and "-01-01T03:00:00" in doc["jobs"]["yearly"]["next_run"]
    finally:
        assert agent.stop() == 0
    with Repository.open(repo_path, None) as repo:
        assert sorted(p.id for p in repo.points()) == sorted(r["point_id"] for r in rows)


def test_a_vm_two_patterns_select_fails_in_both_jobs(tmp_path: Path, vcsim: Vcsim, repo_path: Path) -> None:
    jobs = JOBS + '\n[jobs.ones]\nsource = "sim"\nrepository = "main"\nvms = ["*_VM1"]\nschedule = "0 4 * * *"\n'
    config = write_job_file(tmp_path, vcsim, repo_path, jobs)
    assert run_vmkeep("config", "check", "--offline", "--config", config).code == 0  # patterns: known only at run time
    result = run_vmkeep("jobs", "run", "yearly", "--config", config, "--json")
    assert result.code == 1
    by_vm = {v["vm"]: v for v in json.loads(result.out)["vms"]}
    assert by_vm["DC0_H0_VM0"]["status"] == "succeeded"
    assert by_vm["DC0_H0_VM1"]["status"] == "failed"
    assert by_vm["DC0_H0_VM1"]["error"] == "VM 'DC0_H0_VM1' is also selected by job(s) ones; a VM belongs to one job"
    other = json.loads(run_vmkeep("jobs", "run", "ones", "--config", config, "--json").out)
    assert {v["vm"]: v["status"] for v in other["vms"]} == {"DC0_C0_RP0_VM1": "succeeded", "DC0_H0_VM1": "failed"}
    with Repository.open(repo_path, None) as repo:
        assert sorted(p.vm for p in repo.points()) == ["DC0_C0_RP0_VM1", "DC0_H0_VM0"]


def test_the_history_lives_next_to_the_job_file_unless_told_otherwise(
    tmp_path: Path, vcsim: Vcsim, repo_path: Path
) -> None:
    config = write_job_file(tmp_path, vcsim, repo_path, JOBS)
    config.write_text("\n".join(line for line in config.read_text().splitlines() if not line.startswith("state_dir")))
    assert run_vmkeep("jobs", "run", "yearly", "--vm", "DC0_H0_VM0", "--config", config).code == 0
    assert (tmp_path / "history.sqlite").is_file()
    elsewhere = tmp_path / "systemd-state"
    env = {"STATE_DIRECTORY": str(elsewhere)}
    assert run_vmkeep("jobs", "run", "yearly", "--vm", "DC0_H0_VM0", "--config", config, env=env).code == 0
    assert (elsewhere / "history.sqlite").is_file()
    rows = json.loads(run_vmkeep("history", "--config", config, "--json", env=env).out)
    assert [r["kind"] for r in rows] == ["incremental"]  # each database has its own run
    assert len(history(config)) == 1
