"""The job runner against the simulator: retries, one VM's failure, cancellation, task descriptions."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import cli_connection, connect, run_cli
from vmkeep.agent.engine.cancel import CancelToken
from vmkeep.agent.engine.jobs import BackupTask, Resources, RetryPolicy, TaskOptions, VmStatus, run_tasks
from vmkeep.agent.engine.leases import SharedRepository
from vmkeep.agent.engine.limits import SnapshotLimits
from vmkeep.hypervisors.base import BackupSession
from vmkeep.hypervisors.vsphere.inventory import list_vms
from vmkeep.hypervisors.vsphere.session import VSphereSession
from vmkeep.repository.repo import Repository

VMS = ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0"]


class SimResources(Resources):
    """A shared repository handle, and one connection (login) per task, as the agent runs them."""

    def __init__(self, vc: Vcsim, repo: Repository) -> None:
        self.vc = vc
        self.shared_repo = SharedRepository(repo)

    def repository(self, task: BackupTask) -> AbstractContextManager[Repository]:
        return self.shared_repo.shared()

    @contextmanager
    def session(self, task: BackupTask) -> Iterator[BackupSession]:
        with connect(self.vc) as conn, VSphereSession(conn, task.vm, quiesce=task.options.quiesce) as session:
            yield session


def _tasks(vms: list[str]) -> list[BackupTask]:
    return [BackupTask("nightly", vm, "vc", "main", TaskOptions(workers=2)) for vm in vms]


def _snapshots(vc: Vcsim) -> dict[str, int]:
    return {s.name: len(s.snapshots) for s in vc.api.states()}


def test_a_failing_vm_is_retried_while_the_others_succeed(vcsim: Vcsim, repo: Repository) -> None:
    vcsim.api.http_status(403, path_contains="DC0_H0_VM1/", count=-1)  # its datastore files are refused
    seen: list[str] = []
    results = run_tasks(
        _tasks(VMS),
        SimResources(vcsim, repo),
        CancelToken(),
        concurrency=2,
        retry=RetryPolicy(count=2, delay=0),
        on_result=lambda r: seen.append(r.vm),
    )
    assert [r.vm for r in results] == VMS
    assert sorted(seen) == sorted(VMS)
    by_vm = {r.vm: r for r in results}
    failed = by_vm["DC0_H0_VM1"]
    assert failed.status == VmStatus.FAILED and failed.attempts == 3
    assert failed.point_id is None and failed.error is not None and "HTTP 403" in failed.error
    points = {p.id: p for p in repo.points()}
    for vm in ("DC0_H0_VM0", "DC0_C0_RP0_VM0"):
        ok = by_vm[vm]
        assert ok.status == VmStatus.SUCCEEDED and ok.attempts == 1 and ok.error is None
        assert ok.point_id in points and points[ok.point_id].vm == vm
        assert ok.kind == "full" and ok.read_bytes == sum(d.read_bytes for d in points[ok.point_id].disks)
    assert sorted(p.vm for p in points.values()) == ["DC0_C0_RP0_VM0", "DC0_H0_VM0"]
    assert set(_snapshots(vcsim).values()) == {0}  # every snapshot removed, the failed VM's too


def test_a_transient_failure_is_retried_and_succeeds(vcsim: Vcsim, repo: Repository) -> None:
    vcsim.api.fail_task("CreateSnapshot_Task", fault="FileLocked", count=2)  # quiesced, then crash-consistent
    [result] = run_tasks(_tasks(VMS[:1]), SimResources(vcsim, repo), CancelToken(), retry=RetryPolicy(1, 0))
    assert result.status == VmStatus.SUCCEEDED and result.attempts == 2
    assert [p.id for p in repo.points()] == [result.point_id]


def test_without_retries_a_failure_is_final(vcsim: Vcsim, repo: Repository) -> None:
    vcsim.api.fail_task("CreateSnapshot_Task", fault="FileLocked", count=2)  # quiesced, then crash-consistent
    [result] = run_tasks(_tasks(VMS[:1]), SimResources(vcsim, repo), CancelToken())
    assert result.status == VmStatus.FAILED and result.attempts == 1
    assert repo.points() == []


def test_a_cancelled_job_touches_no_vm(vcsim: Vcsim, repo: Repository) -> None:
    job = CancelToken()
    job.cancel("the agent is stopping")
    results = run_tasks(_tasks(VMS), SimResources(vcsim, repo), job, concurrency=2, retry=RetryPolicy(3, 0))
    assert {r.status for r in results} == {VmStatus.INTERRUPTED}
    assert all(r.error == "the agent is stopping" and r.attempts == 1 for r in results)
    assert repo.points() == []
    assert set(_snapshots(vcsim).values()) == {0}


def test_cancelling_a_parent_cancels_its_children_but_not_the_reverse() -> None:
    process = CancelToken()
    job = process.child("job")
    vm = job.child("vm")
    vm.cancel("this VM only")
    assert not job.cancelled and not process.cancelled
    other = job.child("other")
    process.cancel("SIGTERM")
    assert job.cancelled and other.cancelled and job.reason == "SIGTERM"
    assert vm.reason == "this VM only"  # the first reason stays
    assert job.child("late").cancelled  # a token made under a cancelled one starts cancelled


def test_a_task_description_is_plain_json(tmp_path: Path) -> None:
    task = BackupTask(
        "nightly", "web01", "vc1", "main", TaskOptions(full_every=7, quiesce=False), "host-21", ("datastore-1",)
    )
    doc = json.loads(json.dumps(task.to_json()))
    assert BackupTask.from_json(doc) == task


class CountingResources(SimResources):
    """Counts the sessions (snapshots) open at once per host and per datastore."""

    def __init__(self, vc: Vcsim, repo: Repository, limits: SnapshotLimits) -> None:
        super().__init__(vc, repo)
        self.limits = limits
        self.guard = threading.Lock()
        self.open: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def slot(self, task: BackupTask, token: CancelToken) -> AbstractContextManager[object]:
        return self.limits.slot(task, token)

    @contextmanager
    def session(self, task: BackupTask) -> Iterator[BackupSession]:
        keys = [f"host:{task.host}"] + [f"datastore:{d}" for d in task.datastores]
        with super().session(task) as session:
            with self.guard:
                for key in keys:
                    self.open[key] += 1
                    self.peak[key] = max(self.peak[key], self.open[key])
            try:
                yield session
            finally:
                with self.guard:
                    for key in keys:
                        self.open[key] -= 1


def test_snapshots_are_limited_per_host_and_per_datastore(vcsim: Vcsim, repo: Repository) -> None:
    vcsim.api.delay(0.01, path_contains="-flat.vmdk", count=100_000)
    with connect(vcsim) as conn:
        inventory = list_vms(conn)
    tasks = [BackupTask("all", v.name, "vc", "main", TaskOptions(workers=2), v.host, v.datastores) for v in inventory]
    assert len({t.host for t in tasks}) < len(tasks) and len({t.datastores for t in tasks}) == 1
    resources = CountingResources(vcsim, repo, SnapshotLimits(per_host=1, per_datastore=2))
    results = run_tasks(tasks, resources, CancelToken(), concurrency=len(tasks))
    assert {r.status for r in results} == {VmStatus.SUCCEEDED}
    hosts = {k: v for k, v in resources.peak.items() if k.startswith("host:")}
    datastores = {k: v for k, v in resources.peak.items() if k.startswith("datastore:")}
    assert set(hosts.values()) == {1} and max(datastores.values()) <= 2
    assert set(resources.open.values()) == {0}


def test_the_backup_command_retries_through_the_runner(vcsim: Vcsim, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    vcsim.api.fail_task("CreateSnapshot_Task", fault="FileLocked", count=2)  # quiesced, then crash-consistent
    args = ["backup", *cli_connection(vcsim), "--vm", VMS[0], "--repo", repo, "--json"]
    result = run_cli(vcsim, *args, "--retries", "1", "--retry-delay", "0")
    assert result.code == 0, result.err
    [vm] = json.loads(result.out)["results"]
    assert vm["status"] == "succeeded" and vm["attempts"] == 2 and vm["point_id"]
    assert "attempt 1 of 2 failed" in result.err
    assert_one_line_error(run_cli(vcsim, *args, "--retries", "-1"), "--retries and --retry-delay cannot be negative")
