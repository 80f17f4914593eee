# mypy: disable-error-code="no-untyped-call"
"""Reading in parallel: the disks of one VM at once, and the VMs of one job at once within the limits.

Each restore is compared byte for byte with the disks as the snapshot froze them.
"""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.agent.test_jobs import SimResources
from tests.fixtures.vcsim import Vcsim, add_disk, find_vm
from tests.fixtures.vsphere import (
    VM,
    back_up,
    cli_connection,
    connect,
    disk_bytes,
    restored_disks,
    run_cli,
    scribble,
)
from vmkeep.agent.engine.backup import BackupOptions, backup_vm
from vmkeep.agent.engine.cancel import CancelToken
from vmkeep.agent.engine.jobs import BackupTask, TaskOptions, VmStatus, run_tasks
from vmkeep.agent.engine.limits import SnapshotLimits
from vmkeep.agent.engine.progress import Progress
from vmkeep.hypervisors.vsphere.connection import VSphereConnection
from vmkeep.hypervisors.vsphere.exceptions import TransportError
from vmkeep.hypervisors.vsphere.session import VSphereSession
from vmkeep.hypervisors.vsphere.transport import DatastoreFile, HttpFlatTransport
from vmkeep.repository.repo import Repository

MiB = 1 << 20
GATE_SECONDS = 30.0  # only a failing test waits this long


def _two_disk_vm(vc: Vcsim) -> dict[str, bytes]:
    """VM with a second disk, both written; what each holds, by key."""
    add_disk(find_vm(vc.connect(), VM), 1, 12 * MiB + 4096)
    rng = random.Random(11)
    for disk in vc.api.state(VM).disks:
        scribble(vc, VM, disk.capacity, rng, 10, key=disk.key, max_len=400_000)
    return {str(d.key): disk_bytes(vc, VM, d.capacity, key=d.key) for d in vc.api.state(VM).disks}


class _GatedTransport(HttpFlatTransport):
    """The real HTTP transport, whose first read of the first disk waits until another disk is read.

    Were the disks read one after the other, that first read would wait for a read that comes
    only after it: the gate's timeout then fails the backup, and the test with it.
    """

    def __init__(self, conn: VSphereConnection) -> None:
        super().__init__(conn)
        self.first: str | None = None
        self.other_started = threading.Event()
        self.files: set[str] = set()
        self._guard = threading.Lock()

    def read(self, file: DatastoreFile, offset: int, length: int) -> bytes:
        with self._guard:
            self.first = self.first or file.path
            self.files.add(file.path)
            gated = file.path == self.first and offset == 0
            if file.path != self.first:
                self.other_started.set()
        if gated and not self.other_started.wait(GATE_SECONDS):
            raise TransportError("the other disk was not read while the first one's first read was under way")
        return super().read(file, offset, length)


def test_the_disks_of_a_vm_are_read_at_once_and_restore_exactly(vcsim: Vcsim, repo: Repository, tmp_path: Path) -> None:
    images = _two_disk_vm(vcsim)
    with connect(vcsim) as conn:
        transport = _GatedTransport(conn)
        with repo.lock("backup"), VSphereSession(conn, VM, transport=transport) as session:
            point = backup_vm(session, repo, BackupOptions(workers=2, sanity_sample=0))
            session.committed = True
        assert len(transport.files) == 2 and transport.other_started.is_set()
        assert {d.key: d.mode for d in point.disks} == dict.fromkeys(images, "full")
        assert restored_disks(repo, point, tmp_path) == images
        # An incremental of both disks, read at once again, restores exactly too.
        rng = random.Random(12)
        for disk in vcsim.api.state(VM).disks:
            scribble(vcsim, VM, disk.capacity, rng, 3, key=disk.key, max_len=200_000)
        images = {str(d.key): disk_bytes(vcsim, VM, d.capacity, key=d.key) for d in vcsim.api.state(VM).disks}
        second = back_up(conn, repo)
    assert {d.key: d.mode for d in second.disks} == dict.fromkeys(images, "incremental")
    assert restored_disks(repo, second, tmp_path) == images
    assert vcsim.api.state(VM).snapshots == ()


def test_a_failure_on_one_disk_commits_nothing_and_removes_the_snapshot(vcsim: Vcsim, repo: Repository) -> None:
    _two_disk_vm(vcsim)
    second = vcsim.api.state(VM).disks[1].flat_path.rsplit("/", 1)[-1]
    vcsim.api.http_status(403, path_contains=second, count=1000)
    with connect(vcsim) as conn, pytest.raises(TransportError, match="access denied"):
        back_up(conn, repo, sanity_sample=0)
    vcsim.api.clear_faults()
    assert repo.points(VM) == []
    assert vcsim.api.state(VM).snapshots == ()


class _Meet(Progress):
    """Each VM's backup waits, with its snapshot taken, until ``parties`` VMs are there at once."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier
        self.met = False

    def disk_started(self, vm: str, disk: str, total_bytes: int, mode: str, reason: str | None) -> None:
        if not self.met:  # a Progress per task: once per VM
            self.met = True
            self.barrier.wait(GATE_SECONDS)


class _MeetingResources(SimResources):
    def __init__(self, vc: Vcsim, repo: Repository, limits: SnapshotLimits, parties: int) -> None:
        super().__init__(vc, repo)
        self.limits = limits
        self.barrier = threading.Barrier(parties)

    def slot(self, task: BackupTask, token: CancelToken) -> Any:
        return self.limits.slot(task, token)

    def progress(self, task: BackupTask) -> Progress:
        return _Meet(self.barrier)


def test_the_vms_of_a_job_are_backed_up_at_once_up_to_the_host_limit(
    vcsim: Vcsim, repo: Repository, tmp_path: Path
) -> None:
    """Two VMs on one host, a limit of two snapshots per host: the simulator sees both snapshots at once."""
    vms = ["DC0_H0_VM0", "DC0_H0_VM1"]
    si = vcsim.connect()
    host = find_vm(si, vms[0]).runtime.host._moId
    assert find_vm(si, vms[1]).runtime.host._moId == host
    rng = random.Random(13)
    images = {}
    for vm in vms:
        state = vcsim.api.state(vm).disks[0]
        scribble(vcsim, vm, state.capacity, rng, 5, max_len=300_000)
        images[vm] = disk_bytes(vcsim, vm, state.capacity)
    vcsim.api.reset_snapshot_record()
    tasks = [BackupTask("job", vm, "vc", "main", TaskOptions(workers=2), host, ("LocalDS_0",)) for vm in vms]
    resources = _MeetingResources(vcsim, repo, SnapshotLimits(per_host=2, per_datastore=2), parties=2)
    results = run_tasks(tasks, resources, CancelToken(), concurrency=2)
    assert [r.status for r in results] == [VmStatus.SUCCEEDED, VmStatus.SUCCEEDED], [r.error for r in results]
    assert vcsim.api.snapshots()[host] == (0, 2)  # both snapshots existed at once, and none is left
    for result in results:
        assert result.point is not None
        [disk] = result.point.disks
        assert restored_disks(repo, result.point, tmp_path / result.vm) == {disk.key: images[result.vm]}


def test_the_cli_backs_up_its_vms_at_once_within_the_snapshot_limit(
    vcsim: Vcsim, repo_path: Path, tmp_path: Path
) -> None:
    """``vmkeep backup --vm A --vm B`` runs both VMs at once (each with its own login) and keeps to
    --snapshots-per-host: the simulator's record shows both snapshots at once, then never two."""
    vms = ["DC0_H0_VM0", "DC0_H0_VM1"]
    si = vcsim.connect()
    host = find_vm(si, vms[0]).runtime.host._moId
    assert find_vm(si, vms[1]).runtime.host._moId == host
    rng = random.Random(17)
    for vm in vms:
        state = vcsim.api.state(vm).disks[0]
        scribble(vcsim, vm, state.capacity, rng, 5, max_len=300_000)
    # A slow datastore: each read takes 0.5 s, so a VM's snapshot outlives the start of the other's.
    vcsim.api.delay(0.5, path_contains="-flat.vmdk", count=100_000)
    base = ["backup", *cli_connection(vcsim), "--vm", vms[0], "--vm", vms[1], "--repo", repo_path, "--json"]
    for per_host, most_at_once in ((2, 2), (1, 1)):
        images = {vm: disk_bytes(vcsim, vm, vcsim.api.state(vm).disks[0].capacity) for vm in vms}
        vcsim.api.reset_snapshot_record()
        result = run_cli(vcsim, *base, "--snapshots-per-host", str(per_host))
        assert result.code == 0, result.err
        assert vcsim.api.snapshots()[host] == (0, most_at_once)
        doc = json.loads(result.out)
        assert [r["status"] for r in doc["results"]] == ["succeeded", "succeeded"]
        with Repository.open(repo_path, None) as repo:
            for entry in doc["points"]:
                point = repo.load_point(entry["id"])
                [disk] = point.disks
                assert restored_disks(repo, point, tmp_path / point.id) == {disk.key: images[point.vm]}
        for vm in vms:  # the next round backs up something new
            scribble(vcsim, vm, vcsim.api.state(vm).disks[0].capacity, rng, 2, max_len=100_000)
