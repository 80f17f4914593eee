"""Restoring Hyper-V points to the simulated host: VHDX by qemu-img, uploaded over SMB, the VM over WinRM."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmkeep.agent.engine.restore import disk_images
from vmkeep.hypervisors.hyperv import qemu
from vmkeep.hypervisors.hyperv.exceptions import RestoreError
from vmkeep.hypervisors.hyperv.platform import HypervRestoreTarget
from vmkeep.hypervisors.hyperv.restore import HypervRestoreSpec
from vmkeep.hypervisors.hyperv.simulator.host import WmiMethod
from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.repo import Repository

from ...fixtures.hyperv_backup import MiB, back_up, random_writes, restored_bytes
from ...fixtures.hyperv_lab import HypervLab

VM = "app01"


@pytest.fixture
def point(hyperv_lab: HypervLab, repo: Repository) -> RecoveryPoint:
    host = hyperv_lab.host
    host.create_vm(VM, (8 * MiB, 4 * MiB), cpu=4, memory_mb=3072, switches=("External", "Internal"))
    random_writes(host, VM, 10, seed=5)
    host.guest_write(VM, 0, os.urandom(MiB), disk=1)
    p, _ = back_up(hyperv_lab, repo, VM)
    return p


def _restore(
    lab: HypervLab, repo: Repository, point: RecoveryPoint, name: str, power_on: bool = False, **spec: object
) -> object:
    target = HypervRestoreTarget(name=name, power_on=power_on, spec=HypervRestoreSpec(**spec))  # type: ignore[arg-type]
    with lab.platform() as platform:
        return platform.restore_to_host(point.hardware, disk_images(repo, point, 2), target)


def test_restore_creates_the_recorded_vm_whose_disks_read_back_equal(
    hyperv_lab: HypervLab, repo: Repository, point: RecoveryPoint, tmp_path: Path
) -> None:
    restored = _restore(hyperv_lab, repo, point, "app01-restored", network_map={"Internal": "External"})
    vm = hyperv_lab.host.vms["app01-restored"]
    assert (vm.generation, vm.cpu, vm.memory_mb) == (2, 4, 3072)
    assert vm.state == "Off" and not restored.powered_on  # type: ignore[attr-defined]
    assert [n["switch"] for n in vm.nics] == ["External", "External"]
    assert [(d.controller, d.controller_number, d.location) for d in vm.disks] == [("SCSI", 0, 0), ("SCSI", 0, 1)]
    expected = restored_bytes(repo, point, tmp_path / "dir")
    # Read back over SMB by the agent's reader, and independently by qemu-img from the host's file.
    with hyperv_lab.platform() as platform:
        for disk, data in zip(vm.disks, expected, strict=True):
            reader = platform.storage.open_disk(disk.path)
            try:
                assert reader.read(0, disk.capacity) == data
            finally:
                reader.close()
            assert qemu.read_all(hyperv_lab.host.local_path(disk.path)) == data
    assert restored.id == vm.id  # type: ignore[attr-defined]


def test_an_existing_vm_is_never_overwritten(hyperv_lab: HypervLab, repo: Repository, point: RecoveryPoint) -> None:
    with pytest.raises(RestoreError, match="exists already"):
        _restore(hyperv_lab, repo, point, VM)
    assert len(hyperv_lab.host.vms) == 1


def test_power_on_starts_the_restored_vm(hyperv_lab: HypervLab, repo: Repository, point: RecoveryPoint) -> None:
    restored = _restore(hyperv_lab, repo, point, "app01-running", power_on=True)
    assert hyperv_lab.host.vms["app01-running"].state == "Running"
    assert restored.powered_on  # type: ignore[attr-defined]


@pytest.mark.parametrize("fault", ["switch", "attach", "start"])
def test_a_failed_restore_removes_what_it_created(
    hyperv_lab: HypervLab, repo: Repository, point: RecoveryPoint, fault: str
) -> None:
    host = hyperv_lab.host
    before = sorted(p for p in host.storage.rglob("*") if p.is_file())
    spec: dict[str, object] = {}
    if fault == "attach":
        host.fail_next(WmiMethod.ADD_DISK, "the file is in use")
    elif fault == "start":
        host.fail_next(WmiMethod.REQUEST_STATE_CHANGE, "not enough memory in the system to start the VM")
    else:
        spec = {"network_map": {"Internal": "Lab"}}  # no switch of that name on the host
    with pytest.raises(RestoreError) as err:
        _restore(hyperv_lab, repo, point, "app01-new", power_on=fault == "start", **spec)
    assert {"switch": "Lab", "attach": "in use", "start": "not enough memory"}[fault] in str(err.value)
    assert sorted(host.vms) == [VM]
    after = sorted(p for p in host.storage.rglob("*") if p.is_file())
    assert after == before
