# mypy: disable-error-code="no-untyped-call"
"""Fault injection through the test-only API, and the fixes for stock simulator defects."""

from __future__ import annotations

import http.client
import time
from typing import Any

import pytest
import requests
from pyVmomi import vim, vmodl

from tests.fixtures.vcsim import (
    Vcsim,
    backing_url,
    disks,
    find_vm,
    folder_read,
    remove_snapshot,
    set_power,
    snapshot,
    wait_task,
)
from vmkeep.hypervisors.vsphere.simulator import SimulatorError

VM = "DC0_H0_VM0"
MiB = 1024 * 1024


def _vm(vc: Vcsim) -> tuple[Any, Any]:
    si = vc.connect()
    return si, find_vm(si, VM)


# --------------------------------------------------------------------------- faults


def test_task_fault_fails_the_task_without_doing_anything(vcsim: Vcsim) -> None:
    _si, vm = _vm(vcsim)
    armed = vcsim.api.fail_task("CreateSnapshot_Task", message="datastore is full")
    assert armed.kind == "task" and armed.remaining == 1
    task = vm.CreateSnapshot_Task(name="x", memory=False, quiesce=False)
    with pytest.raises(vmodl.fault.SystemError) as err:
        wait_task(task)
    assert err.value.reason == "datastore is full"
    assert task.info.entity == vm
    assert vm.snapshot is None
    assert vcsim.api.state(VM).snapshots == ()
    # count=1: the next call goes through
    snap = snapshot(vm)
    info: Any = vm.snapshot
    assert info.currentSnapshot == snap
    [fault] = vcsim.api.faults()
    assert fault.hits == 1 and fault.remaining == 0


def test_task_fault_with_a_named_fault_type(vcsim: Vcsim) -> None:
    _si, vm = _vm(vcsim)
    snap = snapshot(vm)
    vcsim.api.fail_task("RemoveSnapshot_Task", fault="FileLocked", count=2)
    for _ in range(2):
        with pytest.raises(vim.fault.FileLocked):
            wait_task(snap.RemoveSnapshot_Task(removeChildren=False))
    assert len(vcsim.api.state(VM).snapshots) == 1
    remove_snapshot(snap)


def test_soap_fault(vcsim: Vcsim) -> None:
    _si, vm = _vm(vcsim)
    snap = snapshot(vm)
    key = disks(snap.config)[0].key
    vcsim.api.soap_fault("QueryChangedDiskAreas", fault="FileFault", message="[LocalDS_0] x.vmdk")
    with pytest.raises(vim.fault.FileFault) as err:
        vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0, changeId="*")
    assert err.value.file == "[LocalDS_0] x.vmdk"
    # the fault is spent; CBT is off, so the real answer is a FileFault naming the disk
    with pytest.raises(vim.fault.FileFault) as err:
        vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0, changeId="*")
    assert "disk1" in err.value.file


def test_dropped_connection_during_a_folder_read(vcsim: Vcsim) -> None:
    si, vm = _vm(vcsim)
    s = vcsim.folder_session(si)
    url = backing_url(vcsim, disks(vm.config)[0].backing)
    vcsim.api.write(VM, 0, b"\x5a" * MiB)
    vcsim.api.drop_connection("-flat.vmdk", after_bytes=100_000)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        s.get(url, headers={"Range": f"bytes=0-{MiB - 1}"}, timeout=10)
    # a retry succeeds
    assert folder_read(s, url, 0, MiB) == b"\x5a" * MiB


def test_dropped_upload_leaves_the_disk_untouched(vcsim: Vcsim) -> None:
    si, vm = _vm(vcsim)
    set_power(vm, on=False)
    s = vcsim.folder_session(si)
    url = backing_url(vcsim, disks(vm.config)[0].backing)
    vcsim.api.write(VM, 0, b"original")
    vcsim.api.drop_connection("-flat.vmdk", after_bytes=65536, http_method="PUT")
    with pytest.raises(requests.exceptions.ConnectionError):
        s.put(url, data=b"\x77" * (4 * MiB), timeout=10)
    assert vcsim.api.read(VM, 0, 8) == b"original"
    assert s.put(url, data=b"\x77" * (4 * MiB), timeout=10).status_code == 200
    assert vcsim.api.read(VM, 0, 8) == b"\x77" * 8


def test_delay_slows_a_soap_method_and_a_folder_path(vcsim: Vcsim) -> None:
    si, vm = _vm(vcsim)
    vcsim.api.delay(0.6, method="CreateSnapshot_Task")
    started = time.monotonic()
    snapshot(vm)
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    snapshot(vm, "undelayed")
    assert time.monotonic() - started < 0.5

    s = vcsim.folder_session(si)
    url = backing_url(vcsim, disks(vm.config)[0].backing)
    vcsim.api.delay(1.0, path_contains="-flat.vmdk")
    with pytest.raises(requests.exceptions.ReadTimeout):
        s.get(url, headers={"Range": "bytes=0-9"}, timeout=0.3)
    assert folder_read(s, url, 0, 10) == b"\0" * 10


def test_http_status_fault(vcsim: Vcsim) -> None:
    si, vm = _vm(vcsim)
    s = vcsim.folder_session(si)
    url = backing_url(vcsim, disks(vm.config)[0].backing)
    vcsim.api.http_status(503, path_contains="-flat.vmdk", count=2)
    assert s.head(url, timeout=10).status_code == 503
    assert s.head(url, timeout=10).status_code == 503
    assert s.head(url, timeout=10).status_code == 200
    vcsim.api.http_status(503, method="CurrentTime")
    with pytest.raises(http.client.HTTPException, match="503"):
        si.CurrentTime()
    assert si.CurrentTime() is not None


def test_unlimited_faults_fire_until_cleared(vcsim: Vcsim) -> None:
    si, _ = _vm(vcsim)
    vcsim.api.soap_fault("CurrentTime", count=-1)
    for _ in range(3):
        with pytest.raises(vmodl.fault.SystemError):
            si.CurrentTime()
    [fault] = vcsim.api.faults()
    assert fault.remaining == -1 and fault.hits == 3
    vcsim.api.clear_faults()
    assert vcsim.api.faults() == []
    assert si.CurrentTime() is not None


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "bogus", "method": "CurrentTime"},
        {"kind": "task", "method": "CurrentTime"},
        {"kind": "task", "method": "CreateSnapshot_Task", "fault": "NoSuchFaultType"},
        {"kind": "drop", "after_bytes": 10},
        {"kind": "delay", "method": "CurrentTime", "seconds": 0},
        {"kind": "status", "path_contains": "x", "status": 200},
        {"kind": "soap", "method": "CurrentTime", "count": 0},
        {"kind": "soap", "method": "CurrentTime", "typo": 1},
    ],
)
def test_bad_fault_specs_are_refused(vcsim: Vcsim, spec: dict[str, Any]) -> None:
    with pytest.raises(SimulatorError, match="400"):
        vcsim.api.add_fault(spec)
    assert vcsim.api.faults() == []


def test_test_api_errors(vcsim: Vcsim) -> None:
    with pytest.raises(SimulatorError, match="404"):
        vcsim.api.write("no-such-vm", 0, b"x")
    with pytest.raises(SimulatorError, match="400"):
        vcsim.api.write(VM, 16 * MiB - 1, b"xy")  # past the end of the disk
    with pytest.raises(SimulatorError, match="409"):
        vcsim.api.cbt_reset(VM)  # CBT is not in effect
    assert vcsim.api.set_config(max_extents=7).max_extents == 7
    assert vcsim.api.config().max_extents == 7


# --------------------------------------------------------------------------- stock defects


def test_snapshot_tasks_name_the_vm(vcsim: Vcsim) -> None:
    """0.24.2 puts the snapshot in task.info.entity; pyVmomi cannot even read such a task."""
    _si, vm = _vm(vcsim)
    snap = snapshot(vm)
    for task in (snap.RevertToSnapshot_Task(), snap.RemoveSnapshot_Task(removeChildren=False)):
        wait_task(task)
        assert task.info.entity == vm
        assert task.info.entityName == VM


def test_snapshot_config_does_not_share_devices_with_the_vm(vcsim: Vcsim) -> None:
    _si, vm = _vm(vcsim)
    snap = snapshot(vm)
    before = [(type(d).__name__, d.key) for d in snap.config.hardware.device]
    # edit and remove devices of the running VM
    cdrom = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualCdrom))
    nic = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard))
    assert nic.connectable is not None
    nic.connectable.startConnected = not nic.connectable.startConnected
    spec = vim.vm.ConfigSpec(
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic),
            vim.vm.device.VirtualDeviceSpec(operation="remove", device=cdrom),
        ]
    )
    wait_task(vm.ReconfigVM_Task(spec=spec))
    assert cdrom.key not in [d.key for d in vm.config.hardware.device]
    after = [(type(d).__name__, d.key) for d in snap.config.hardware.device]
    assert after == before
    sdisk, vdisk = disks(snap.config)[0], disks(vm.config)[0]
    assert sdisk.backing.fileName != vdisk.backing.fileName


def test_query_changed_disk_areas_exists_for_every_vm(vcsim: Vcsim) -> None:
    si, _ = _vm(vcsim)
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    for vm in view.view:
        set_power(vm, on=False)
        disk = disks(vm.config)[0]
        # CBT is off: FileFault, not MethodNotFound as in stock vcsim
        with pytest.raises(vim.fault.FileFault):
            vm.QueryChangedDiskAreas(deviceKey=disk.key, startOffset=0, changeId="*")
