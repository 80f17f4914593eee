"""The fleet for real: redis-server, `vmkeep worker` processes, the agent's run, vcsim, one repository."""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.agent import history
from tests.fixtures.fleet import WorkerProcess, executor_toml
from tests.fixtures.jobfile import write_job_file
from tests.fixtures.redis import RedisServer
from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import connect, disk_bytes, restored_disks
from vmkeep.hypervisors.vsphere.inventory import list_vms
from vmkeep.repository.repo import Repository

DISK_MB = 2
PER_HOST = 2

JOB = """
[jobs.fleet]
source = "sim"
repository = "main"
vms = ["DC0_*"]
schedule = "0 3 1 1 *"
workers = 2
"""


@dataclass
class Fleet:
    vc: Vcsim
    redis: RedisServer
    config: Path
    repo: Path
    tmp: Path
    hosts: dict[str, str]  # VM -> host moref
    workers: list[WorkerProcess]

    def start_worker(self, name: str, hosts: list[str], *extra: str) -> WorkerProcess:
        worker = WorkerProcess.start(
            self.config, name, self.tmp / name, "--hosts", ",".join(hosts), "--concurrency", "2", *extra
        )
        self.workers.append(worker)
        return worker

    def run_job(self) -> dict[str, object]:
        result = run_vmkeep("jobs", "run", "fleet", "--config", self.config, "--json", timeout=600)
        logs = "\n".join(f"--- {w.name}\n{w.log()[-4000:]}" for w in self.workers)
        assert result.out, f"{result.err}\n{logs}"
        assert self.redis.password not in result.out + result.err
        doc: dict[str, object] = json.loads(result.out)
        return doc


@pytest.fixture
def fleet(
    tmp_path: Path, vcsim_factory: Callable[..., Vcsim], redis_server: RedisServer, repo_path: Path
) -> Iterator[Fleet]:
    vc = vcsim_factory(vms=6, disk_mb=DISK_MB)
    executor = executor_toml(redis_server, visibility_timeout=6.0, claim_ttl=4.0, slot_ttl=4.0, result_timeout=300.0)
    config = write_job_file(
        tmp_path,
        vc,
        repo_path,
        executor + JOB,
        agent=f"snapshots_per_host = {PER_HOST}\nsnapshots_per_datastore = 12\n",
    )
    with connect(vc) as conn:
        hosts = {v.name: v.host for v in list_vms(conn) if v.name.startswith("DC0_")}
    assert len(hosts) == 12
    rng = random.Random(13)
    for vm in hosts:  # something to back up on every disk
        for _ in range(3):
            vc.api.write(vm, rng.randrange(0, (DISK_MB << 20) - 100_000, 4096), rng.randbytes(rng.randint(1, 100_000)))
    fleet = Fleet(vc, redis_server, config, repo_path, tmp_path, hosts, [])
    try:
        yield fleet
    finally:
        for worker in fleet.workers:
            worker.stop()


def assert_every_vm_once_and_restorable(fleet: Fleet, doc: dict[str, object]) -> None:
    vms = doc["vms"]
    assert isinstance(vms, list)
    assert sorted(v["vm"] for v in vms) == sorted(fleet.hosts), vms
    assert all(v["status"] == "succeeded" for v in vms), vms
    with Repository.open(fleet.repo, None) as repo:
        points = repo.points()
        assert sorted(p.vm for p in points) == sorted(fleet.hosts), "one point per VM, no more"
        assert {p.id for p in points} == {v["point_id"] for v in vms}
        for point in points:
            capacity = point.disks[0].capacity
            [content] = restored_disks(repo, point, fleet.tmp).values()
            assert content == disk_bytes(fleet.vc, point.vm, capacity), f"{point.vm} does not restore bit-exact"
    for state in fleet.vc.api.states():
        assert not state.snapshots, f"{state.name} kept a snapshot"


def test_three_workers_back_up_twelve_vms_once_each_within_the_host_limit(fleet: Fleet) -> None:
    standalone = sorted({h for vm, h in fleet.hosts.items() if vm.startswith("DC0_H0_")})
    cluster = sorted({h for vm, h in fleet.hosts.items() if vm.startswith("DC0_C0_")})
    fleet.start_worker("proxy-a", standalone)
    fleet.start_worker("proxy-b", cluster)
    fleet.start_worker("proxy-c", cluster + standalone)
    fleet.vc.api.reset_snapshot_record()

    doc = fleet.run_job()

    assert doc["status"] == "succeeded", json.dumps(doc, indent=1, default=str)[:6000]
    assert_every_vm_once_and_restorable(fleet, doc)
    record = fleet.vc.api.snapshots()
    assert all(most <= PER_HOST for _, most in record.values()), record
    assert max(most for _, most in record.values()) == PER_HOST, "the limit was never reached: the test shows nothing"
    by_worker = {w.name: {e["vm"] for e in w.events("task-succeeded")} for w in fleet.workers}
    assert sum(len(v) for v in by_worker.values()) == 12, by_worker
    assert by_worker["proxy-b"] <= {vm for vm, h in fleet.hosts.items() if h in cluster}, "served a foreign queue"
    assert len([w for w, vms in by_worker.items() if vms]) >= 2, by_worker
    rows = history(fleet.config)
    assert sorted(r["vm"] for r in rows) == sorted(fleet.hosts)
    assert {r["point_id"] for r in rows} == {v["point_id"] for v in doc["vms"]}  # type: ignore[union-attr]
    for worker in fleet.workers:
        assert fleet.redis.password not in worker.log()

    # points read back and restored on a chosen worker
    ids = [v["point_id"] for v in doc["vms"]]  # type: ignore[union-attr]
    checked = run_vmkeep("fleet", "verify", *ids, "--worker", "proxy-b", "--config", fleet.config, "--json")
    assert checked.code == 0, checked.out + checked.err
    answers = json.loads(checked.out)
    assert [a["point"] for a in answers] == ids and {a["worker"] for a in answers} == {"proxy-b"}
    for answer in answers:
        [digest] = answer["sha256"].values()
        capacity = DISK_MB << 20
        assert digest == hashlib.sha256(disk_bytes(fleet.vc, answer["vm"], capacity)).hexdigest()
    target = fleet.tmp / "restored-on-c"
    restored = run_vmkeep(
        "fleet", "restore", ids[0][:12], "--to", target, "--worker", "proxy-c", "--config", fleet.config, "--json"
    )
    assert restored.code == 0, restored.out + restored.err
    [file] = json.loads(restored.out)["files"]
    vm = doc["vms"][0]["vm"]  # type: ignore[index]
    assert Path(file["path"]).read_bytes() == disk_bytes(fleet.vc, vm, DISK_MB << 20)
    nobody = run_vmkeep("fleet", "verify", ids[0], "--worker", "proxy-z", "--config", fleet.config)
    assert_one_line_error(nobody, "worker 'proxy-z' does not answer")


def test_a_worker_killed_mid_backup_is_replaced_and_no_point_doubles(fleet: Fleet) -> None:
    every_host = sorted(set(fleet.hosts.values()))
    victim_vm = "DC0_H0_VM0"
    # the victim's disk reads stall, so that its worker is surely in the middle of its backup when killed
    fleet.vc.api.delay(3.0, path_contains=f"{victim_vm}/", count=4)
    workers = [fleet.start_worker(name, every_host) for name in ("proxy-a", "proxy-b", "proxy-c")]

    outcome: dict[str, dict[str, object]] = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("doc", fleet.run_job()))
    runner.start()
    victim = None
    while victim is None and runner.is_alive():
        victim = next((w for w in workers if w.events("task-started", vm=victim_vm)), None)
        time.sleep(0.1)
    assert victim is not None, "no worker started the victim's task"
    time.sleep(1.0)  # into its stalled disk reads: snapshot taken, nothing committed
    victim.kill9()
    runner.join(300)
    assert not runner.is_alive()

    doc = outcome["doc"]
    assert doc["status"] == "succeeded", json.dumps(doc, indent=1, default=str)[:6000]
    assert_every_vm_once_and_restorable(fleet, doc)
    others = [w for w in workers if w is not victim]
    assert any(w.events("task-retried", vm=victim_vm) for w in others), "the task was not retried elsewhere"
    assert not victim.events("task-succeeded", vm=victim_vm)
    verify = run_vmkeep("verify", "--repo", fleet.repo)
    assert verify.code == 0, verify.out + verify.err


def test_a_worker_killed_between_its_commit_and_its_snapshot_removal_leaves_no_snapshot(fleet: Fleet) -> None:
    """The task's retry finds the committed point, and removes the snapshot the lost worker left.

    vcsim holds the run's first snapshot removal for 8 s, so the worker is surely killed with its
    point committed and its snapshot still on the VM (a removal whose client is gone is dropped).
    """
    every_host = sorted(set(fleet.hosts.values()))
    fleet.vc.api.delay(8.0, method="RemoveSnapshot_Task", count=1)
    victim = fleet.start_worker("proxy-a", every_host)

    outcome: dict[str, dict[str, object]] = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("doc", fleet.run_job()))
    runner.start()
    deadline = time.monotonic() + 120
    committed: list[str] = []
    while not committed and time.monotonic() < deadline:
        with Repository.open(fleet.repo, None, lock=False) as repo:
            committed = [p.vm for p in repo.points()]
        time.sleep(0.1)
    assert committed, "no point was committed"
    victim.kill9()
    rescuer = fleet.start_worker("proxy-b", every_host)
    runner.join(300)
    assert not runner.is_alive()

    doc = outcome["doc"]
    assert doc["status"] == "succeeded", json.dumps(doc, indent=1, default=str)[:6000]
    assert_every_vm_once_and_restorable(fleet, doc)  # no VM kept a snapshot
    # The VM whose removal was held answered through the retry (another VM may have committed and
    # finished in full before the kill: which one it is, the rescuer's log says).
    found = rescuer.events("task-already-committed")
    assert found, "no retry found its point committed"
    for event in found:
        [result] = [v for v in doc["vms"] if v["vm"] == event["vm"]]  # type: ignore[union-attr]
        assert result["point_id"].startswith(event["point"])
        assert any("left by an interrupted backup" in w for w in result["warnings"]), result


def test_a_worker_of_another_version_refuses_the_task(fleet: Fleet) -> None:
    from vmkeep.agent.config.load import load_config
    from vmkeep.agent.fleet.app import BACKUP_TASK, make_app
    from vmkeep.agent.fleet.settings import FleetSettings

    worker = fleet.start_worker("proxy-a", sorted(set(fleet.hosts.values())))
    app = make_app(FleetSettings.of(load_config(fleet.config)))
    task = {
        "job": "fleet",
        "vm": "DC0_H0_VM1",
        "source": "sim",
        "repository": "main",
        "host": fleet.hosts["DC0_H0_VM1"],
    }
    payload = {"task": task, "run": "r1", "version": "0.0.1-elsewhere", "per_host": 2, "per_datastore": 2}
    answer = app.send_task(BACKUP_TASK, args=[payload], queue=f"vmkeep.host.{task['host']}").get(timeout=60)
    assert answer["status"] == "failed" and answer["worker"] == "proxy-a"
    assert "runs vmkeep" in answer["error"] and "0.0.1-elsewhere" in answer["error"]
    assert "run the same vmkeep version on the agent and on every worker" in answer["error"]
    assert worker.events("task-refused")
    with Repository.open(fleet.repo, None) as repo:
        assert repo.points() == []


def test_redis_restarting_empty_mid_run_loses_no_result_and_doubles_no_point(fleet: Fleet) -> None:
    every_host = sorted(set(fleet.hosts.values()))
    for vm in ("DC0_H0_VM3", "DC0_C0_RP0_VM3", "DC0_C0_RP0_VM5"):  # a run long enough to restart Redis in
        fleet.vc.api.delay(2.0, path_contains=f"{vm}/", count=3)
    for name in ("proxy-a", "proxy-b", "proxy-c"):
        fleet.start_worker(name, every_host)
    outcome: dict[str, dict[str, object]] = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("doc", fleet.run_job()))
    runner.start()
    deadline = time.monotonic() + 120
    while len(history(fleet.config)) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    finished_before = history(fleet.config)
    assert 0 < len(finished_before) < len(fleet.hosts), "the restart was not in the middle of the run"
    fleet.redis.restart()  # empty: no persistence
    runner.join(300)
    assert not runner.is_alive()

    doc = outcome["doc"]
    assert doc["status"] == "succeeded", json.dumps(doc, indent=1, default=str)[:6000]
    assert_every_vm_once_and_restorable(fleet, doc)
    rows = history(fleet.config)
    assert sorted(r["vm"] for r in rows) == sorted(fleet.hosts)
    assert all(row in rows for row in finished_before)


def test_redis_restarting_empty_while_every_task_waits_in_its_queue_loses_none(fleet: Fleet) -> None:
    vms = ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"]
    queues = sorted({f"vmkeep.host.{fleet.hosts[vm]}" for vm in vms})
    picks = [arg for vm in vms for arg in ("--vm", vm)]
    outcome: dict[str, object] = {}
    runner = threading.Thread(
        target=lambda: outcome.setdefault(
            "result", run_vmkeep("jobs", "run", "fleet", *picks, "--config", fleet.config, "--json", timeout=600)
        )
    )
    runner.start()  # no worker yet: every task waits in its queue
    client = fleet.redis.client()
    deadline = time.monotonic() + 120
    while sum(client.llen(q) for q in queues) < len(vms) and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.1)
    assert sum(client.llen(q) for q in queues) == len(vms)  # type: ignore[attr-defined]
    fleet.redis.restart()  # empty: every task is gone
    for name in ("proxy-a", "proxy-b"):
        fleet.start_worker(name, sorted(set(fleet.hosts.values())))
    runner.join(300)
    assert not runner.is_alive()

    result = outcome["result"]
    doc = json.loads(result.out)  # type: ignore[attr-defined]
    assert doc["status"] == "succeeded", json.dumps(doc, indent=1, default=str)[:6000]
    assert sorted(v["vm"] for v in doc["vms"]) == sorted(vms)
    with Repository.open(fleet.repo, None) as repo:
        assert sorted(p.vm for p in repo.points()) == sorted(vms), "one point per VM, no more"
    assert sorted(r["vm"] for r in history(fleet.config)) == sorted(vms)
    assert "Redis lost the run's records: handing out again 4 queued task(s) now" in result.err  # type: ignore[attr-defined]


def test_the_running_agent_records_the_workers_results_in_history_and_metrics(fleet: Fleet) -> None:
    from tests.fixtures.agent import AgentProcess, listen_address, scrape

    worker = fleet.start_worker("proxy-a", sorted(set(fleet.hosts.values())))
    agent = AgentProcess.start(fleet.config, "--listen", "127.0.0.1:0")
    try:
        address = listen_address(agent)
        started = run_vmkeep(
            "jobs", "run", "fleet", "--vm", "DC0_H0_VM1", "--vm", "DC0_C0_RP0_VM2", "--config", fleet.config, "--json"
        )
        assert started.code == 0, started.err
        run_id = json.loads(started.out)["run_id"]
        agent.wait_for(lambda: agent.events("run-finished", run=run_id), "the agent's run")
        assert {e["vm"] for e in agent.events("task-sent")} == {"DC0_H0_VM1", "DC0_C0_RP0_VM2"}
        assert not agent.events("queue-unserved")
        rows = history(fleet.config)
        assert {r["vm"] for r in rows} == {"DC0_H0_VM1", "DC0_C0_RP0_VM2"}
        assert {r["status"] for r in rows} == {"succeeded"} and {r["run_id"] for r in rows} == {run_id}
        assert {e["vm"] for e in worker.events("task-succeeded")} == {r["vm"] for r in rows}
        metrics = scrape(address)
        for row in rows:
            labels = (("job", "fleet"), ("vm", row["vm"]))
            assert metrics[("vmkeep_vm_last_backup_read_bytes", labels)] == row["read_bytes"] > 0
            assert metrics[("vmkeep_vm_last_backup_ok", labels)] == 1
    finally:
        assert agent.stop() == 0


def test_the_running_agent_shows_the_vms_its_workers_back_up_in_its_status(fleet: Fleet) -> None:
    from tests.fixtures.agent import AgentProcess, listen_address, status

    fleet.vc.api.delay(1.0, path_contains="DC0_H0_VM1/", count=4)  # long enough to be seen running
    fleet.start_worker("proxy-a", sorted(set(fleet.hosts.values())))
    agent = AgentProcess.start(fleet.config, "--listen", "127.0.0.1:0")
    try:
        address = listen_address(agent)
        assert status(address)["running_vms"] == {}
        started = run_vmkeep("jobs", "run", "fleet", "--vm", "DC0_H0_VM1", "--config", fleet.config, "--json")
        assert started.code == 0, started.err
        run_id = json.loads(started.out)["run_id"]
        agent.wait_for(lambda: status(address)["running_vms"] == {"fleet": ["DC0_H0_VM1"]}, "the VM shown running")
        agent.wait_for(lambda: agent.events("run-finished", run=run_id), "the agent's run")
        assert status(address)["running_vms"] == {}
        assert [r["status"] for r in history(fleet.config)] == ["succeeded"]
    finally:
        assert agent.stop() == 0


def test_a_vm_whose_host_no_worker_serves_fails_with_the_queue_named(fleet: Fleet) -> None:
    fleet.config.write_text(fleet.config.read_text().replace("result_timeout = 300.0", "result_timeout = 3.0"))
    standalone = fleet.hosts["DC0_H0_VM0"]
    fleet.start_worker("proxy-a", [standalone])
    result = run_vmkeep(
        "jobs", "run", "fleet", "--vm", "DC0_H0_VM0", "--vm", "DC0_C0_RP0_VM0", "--config", fleet.config, "--json"
    )
    doc = json.loads(result.out)
    by_vm = {v["vm"]: v for v in doc["vms"]}
    assert doc["status"] == "partial" and by_vm["DC0_H0_VM0"]["status"] == "succeeded"
    queue = f"vmkeep.host.{fleet.hosts['DC0_C0_RP0_VM0']}"
    assert by_vm["DC0_C0_RP0_VM0"]["error"] == (
        f"no worker answered within 3s (does a running `vmkeep worker` serve queue {queue}?)"
    )
    assert f"no running worker serves queue {queue}" in result.err


def test_stopping_the_agent_stops_its_tasks_on_the_workers(fleet: Fleet) -> None:
    from tests.fixtures.agent import AgentProcess

    for vm in fleet.hosts:  # every backup slow enough to be stopped in the middle
        fleet.vc.api.delay(1.0, path_contains=f"{vm}/", count=50)
    worker = fleet.start_worker("proxy-a", sorted(set(fleet.hosts.values())))
    agent = AgentProcess.start(fleet.config)
    try:
        started = run_vmkeep("jobs", "run", "fleet", "--config", fleet.config, "--json")
        assert started.code == 0, started.err
        worker.wait_for(lambda: worker.events("task-started"), "a task to start")
    finally:
        assert agent.stop() == 0
    rows = history(fleet.config)
    assert sorted(r["vm"] for r in rows) == sorted(fleet.hosts)
    interrupted = [r for r in rows if r["status"] == "interrupted"]
    assert interrupted and all(r["point_id"] is None for r in interrupted)
    assert all("stopping" in r["error"] for r in interrupted), interrupted
    worker.wait_for(lambda: not any(s.snapshots for s in fleet.vc.api.states()), "the snapshots to go")
    with Repository.open(fleet.repo, None) as repo:
        assert sorted(p.vm for p in repo.points()) == sorted(r["vm"] for r in rows if r["point_id"])
