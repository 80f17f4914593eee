# mypy: disable-error-code="no-untyped-call"
"""Disk content over /folder: snapshots freeze it, removal consolidates, revert, extension, restore."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from pyVmomi import vim, vmodl

from tests.fixtures.vcsim import (
    Vcsim,
    backing_url,
    blocks_of,
    changed_areas,
    disks,
    enable_cbt,
    find_vm,
    folder_read,
    remove_snapshot,
    set_power,
    snapshot,
    wait_task,
)

VM = "DC0_H0_VM0"
BASE = f"[LocalDS_0] {VM}/disk1.vmdk"
MiB = 1024 * 1024


def _vm(vc: Vcsim) -> tuple[Any, Any, requests.Session]:
    si = vc.connect()
    return si, find_vm(si, VM), vc.folder_session(si)


def _get_all(session: requests.Session, url: str) -> bytes:
    resp = session.get(url, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.content


def test_disk_is_a_flat_file_of_its_capacity(vcsim: Vcsim) -> None:
    _si, vm, s = _vm(vcsim)
    disk = disks(vm.config)[0]
    assert disk.capacityInBytes == 16 * MiB
    assert disk.capacityInKB == 16 * 1024
    assert disk.backing.fileName == BASE
    assert disk.backing.uuid.startswith("6000C29")
    url = backing_url(vcsim, disk.backing)
    head = s.head(url, timeout=10)
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == disk.capacityInBytes
    assert head.headers["Accept-Ranges"] == "bytes"
    vcsim.api.write(VM, 12345, b"hello disk")
    assert folder_read(s, url, 12340, 20) == b"\0" * 5 + b"hello disk" + b"\0" * 5
    assert vcsim.api.read(VM, 12345, 10) == b"hello disk"
    # the descriptor names the flat extent with its size in sectors
    desc = s.get(vcsim.folder_url(f"{VM}/disk1.vmdk"), timeout=10).text
    assert f'RW {disk.capacityInBytes // 512} VMFS "disk1-flat.vmdk"' in desc


def test_snapshot_freezes_content_and_moves_the_vm_to_a_child(vcsim: Vcsim) -> None:
    _si, vm, s = _vm(vcsim)
    rng = random.Random(1)
    before = rng.randbytes(256 * 1024)
    vcsim.api.write(VM, MiB, before)
    frozen_image = vcsim.api.read(VM, 0, 16 * MiB)

    snap = snapshot(vm)
    sback = disks(snap.config)[0].backing
    vback = disks(vm.config)[0].backing
    assert sback.fileName == BASE and sback.parent is None
    assert vback.fileName == f"[LocalDS_0] {VM}/disk1-000001.vmdk"
    assert vback.parent.fileName == BASE
    assert vback.uuid == sback.uuid

    after = rng.randbytes(300 * 1024)
    vcsim.api.write(VM, MiB + 1000, after)
    vcsim.api.write(VM, 0, b"\xff" * 4096)
    snap_url, live_url = backing_url(vcsim, sback), backing_url(vcsim, vback)
    assert folder_read(s, snap_url, MiB, len(before)) == before
    assert _get_all(s, snap_url) == frozen_image, "a guest write leaked into the frozen layer"
    live = _get_all(s, live_url)
    assert live == vcsim.api.read(VM, 0, 16 * MiB)
    assert live[MiB + 1000 : MiB + 1000 + len(after)] == after
    assert live[:4096] == b"\xff" * 4096

    # a second snapshot freezes the child; the VM moves on to the next one
    snap2 = snapshot(vm, "second")
    s2back = disks(snap2.config)[0].backing
    assert s2back.fileName == vback.fileName and s2back.parent.fileName == BASE
    assert disks(vm.config)[0].backing.fileName == f"[LocalDS_0] {VM}/disk1-000002.vmdk"
    vcsim.api.write(VM, 0, b"\x01" * 4096)
    assert _get_all(s, backing_url(vcsim, s2back)) == live
    assert _get_all(s, snap_url) == frozen_image
    assert [layer.snapshot for layer in vcsim.api.state(VM).disk().layers] == [
        snap._moId,
        snap2._moId,
        None,
    ]


def test_removing_the_only_snapshot_consolidates(vcsim: Vcsim) -> None:
    _si, vm, s = _vm(vcsim)
    vcsim.api.write(VM, 0, b"old")
    snap = snapshot(vm)
    child_url = backing_url(vcsim, disks(vm.config)[0].backing)
    vcsim.api.write(VM, 0, b"new")
    current = vcsim.api.read(VM, 0, 16 * MiB)
    remove_snapshot(snap)
    back = disks(vm.config)[0].backing
    assert back.fileName == BASE and back.parent is None
    assert vm.snapshot is None
    assert _get_all(s, backing_url(vcsim, back)) == current
    assert s.head(child_url, timeout=10).status_code == 404
    # still writable and trackable afterwards
    vcsim.api.write(VM, 0, b"newer")
    assert folder_read(s, backing_url(vcsim, back), 0, 5) == b"newer"


def test_removing_the_oldest_of_two_snapshots_keeps_the_newer_frozen(vcsim: Vcsim) -> None:
    _si, vm, s = _vm(vcsim)
    enable_cbt(vm)
    bs = vcsim.endpoint.block_size
    vcsim.api.write(VM, 0, b"A" * 100)
    snap1 = snapshot(vm, "one")
    id1 = disks(snap1.config)[0].backing.changeId
    vcsim.api.write(VM, 3 * bs, b"B" * 100)
    snap2 = snapshot(vm, "two")
    frozen2 = _get_all(s, backing_url(vcsim, disks(snap2.config)[0].backing))
    vcsim.api.write(VM, 0, b"C" * 100)

    remove_snapshot(snap1)
    s2disk = disks(snap2.config)[0]
    s2back = s2disk.backing
    assert s2back.fileName == BASE and s2back.parent is None
    vback = disks(vm.config)[0].backing
    assert vback.parent.fileName == BASE
    assert _get_all(s, backing_url(vcsim, s2back)) == frozen2
    assert frozen2[3 * bs : 3 * bs + 100] == b"B" * 100
    assert folder_read(s, backing_url(vcsim, vback), 0, 100) == b"C" * 100
    assert s.head(vcsim.folder_url(f"{VM}/disk1-000001-flat.vmdk"), timeout=10).status_code == 404
    # the surviving snapshot still answers for changes since the removed one
    got = changed_areas(vm, snap2, s2disk.key, id1, s2disk.capacityInBytes)
    assert blocks_of(got.extents, bs) == {3}


def test_remove_all_snapshots(vcsim: Vcsim) -> None:
    _si, vm, s = _vm(vcsim)
    for i in range(3):
        vcsim.api.write(VM, i * 4096, bytes([i + 1]) * 10)
        snapshot(vm, f"s{i}")
    vcsim.api.write(VM, 3 * 4096, b"\x09" * 10)
    current = vcsim.api.read(VM, 0, 16 * MiB)
    wait_task(vm.RemoveAllSnapshots_Task())
    back = disks(vm.config)[0].backing
    assert back.fileName == BASE and back.parent is None
    assert vm.snapshot is None
    assert _get_all(s, backing_url(vcsim, back)) == current
    names = {layer.file for layer in vcsim.api.state(VM).disk().layers}
    assert names == {BASE}


def test_revert_to_the_newest_snapshot(vcsim: Vcsim) -> None:
    _si, vm, s = _vm(vcsim)
    enable_cbt(vm)
    bs = vcsim.endpoint.block_size
    vcsim.api.write(VM, 0, b"kept")
    snap1 = snapshot(vm, "user")
    frozen = _get_all(s, backing_url(vcsim, disks(snap1.config)[0].backing))
    vcsim.api.write(VM, 5 * bs, b"lost")
    # a backup snapshot taken and removed in between
    backup = snapshot(vm, "backup")
    backup_id = disks(backup.config)[0].backing.changeId
    remove_snapshot(backup)
    vcsim.api.write(VM, 9 * bs, b"lost too")

    wait_task(snap1.RevertToSnapshot_Task())
    assert vcsim.api.read(VM, 0, 16 * MiB) == frozen
    # the next incremental from the backup must report the reverted blocks
    snap2 = snapshot(vm, "after revert")
    cap = disks(snap2.config)[0].capacityInBytes
    got = changed_areas(vm, snap2, disks(snap2.config)[0].key, backup_id, cap)
    assert {5, 9} <= blocks_of(got.extents, bs)

    # reverting to anything but the newest snapshot is not modelled
    with pytest.raises(vmodl.fault.NotSupported):
        wait_task(snap1.RevertToSnapshot_Task())
    wait_task(vm.RevertToCurrentSnapshot_Task())


def _edit_capacity(vm: Any, new_bytes: int, *, kb_only: bool = False) -> Any:
    disk = disks(vm.config)[0]
    if kb_only:
        disk.capacityInKB = new_bytes // 1024  # capacityInBytes keeps the old value, as clients send it
    else:
        disk.capacityInBytes = new_bytes
    spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)])
    return vm.ReconfigVM_Task(spec=spec)


@pytest.mark.parametrize("kb_only", [False, True])
def test_extending_a_disk_grows_file_and_tracking(vcsim: Vcsim, kb_only: bool) -> None:
    _si, vm, s = _vm(vcsim)
    enable_cbt(vm)
    bs = vcsim.endpoint.block_size
    snap = snapshot(vm)
    base_id = disks(snap.config)[0].backing.changeId
    remove_snapshot(snap)
    vcsim.api.write(VM, 0, b"before")

    wait_task(_edit_capacity(vm, 20 * MiB, kb_only=kb_only))
    disk = disks(vm.config)[0]
    assert disk.capacityInBytes == 20 * MiB and disk.capacityInKB == 20 * 1024
    assert disk.backing.fileName == BASE
    url = backing_url(vcsim, disk.backing)
    assert int(s.head(url, timeout=10).headers["Content-Length"]) == 20 * MiB
    vcsim.api.write(VM, 19 * MiB, b"in the new area")

    snap = snapshot(vm)
    cap = disks(snap.config)[0].capacityInBytes
    assert cap == 20 * MiB
    got = changed_areas(vm, snap, disk.key, base_id, cap)
    blocks = blocks_of(got.extents, bs)
    assert 0 in blocks and (19 * MiB) // bs in blocks
    assert set(range(16 * MiB // bs, 20 * MiB // bs)) <= blocks, "the new area counts as changed"
    star = changed_areas(vm, snap, disk.key, "*", cap)
    assert blocks_of(star.extents, bs) == {0, 19 * MiB // bs}
    assert folder_read(s, backing_url(vcsim, disks(snap.config)[0].backing), 19 * MiB, 15) == b"in the new area"


def test_disks_with_snapshots_cannot_grow_and_disks_never_shrink(vcsim: Vcsim) -> None:
    _si, vm, _s = _vm(vcsim)
    snap = snapshot(vm)
    with pytest.raises(vmodl.fault.NotSupported):
        wait_task(_edit_capacity(vm, 32 * MiB))
    remove_snapshot(snap)
    with pytest.raises(vim.fault.InvalidDeviceSpec):
        wait_task(_edit_capacity(vm, 8 * MiB))
    assert disks(vm.config)[0].capacityInBytes == 16 * MiB


def _new_vm_spec(name: str, capacity: int, cbt: bool) -> Any:
    controller = vim.vm.device.ParaVirtualSCSIController(key=-100, busNumber=0, sharedBus="noSharing")
    disk = vim.vm.device.VirtualDisk(
        key=-101,
        controllerKey=-100,
        unitNumber=0,
        capacityInBytes=capacity,
        capacityInKB=capacity // 1024,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
            fileName=f"[LocalDS_0] {name}/{name}.vmdk", diskMode="persistent", thinProvisioned=True
        ),
    )
    return vim.vm.ConfigSpec(
        name=name,
        guestId="otherGuest64",
        numCPUs=1,
        memoryMB=64,
        changeTrackingEnabled=cbt,
        files=vim.vm.FileInfo(vmPathName=f"[LocalDS_0] {name}"),
        deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=controller),
            vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk),
        ],
    )


def _create_vm(si: Any, name: str, capacity: int, cbt: bool = True) -> Any:
    content = si.RetrieveContent()
    dc = content.rootFolder.childEntity[0]
    host_folder = dc.hostFolder.childEntity[0]
    pool = host_folder.resourcePool
    return wait_task(dc.vmFolder.CreateVM_Task(config=_new_vm_spec(name, capacity, cbt), pool=pool))


def _image(capacity: int, bs: int, seed: int) -> tuple[bytes, set[int]]:
    rng = random.Random(seed)
    data = bytearray(capacity)
    used = set(rng.sample(range(capacity // bs), 10))
    for b in used:
        data[b * bs : (b + 1) * bs] = rng.randbytes(bs)
    return bytes(data), used


def test_restore_path_create_vm_then_put_the_flat_file(vcsim: Vcsim) -> None:
    si = vcsim.connect()
    s = vcsim.folder_session(si)
    bs = vcsim.endpoint.block_size
    capacity = 4 * MiB
    vm = _create_vm(si, "restored1", capacity)
    disk = disks(vm.config)[0]
    assert disk.capacityInBytes == capacity
    url = backing_url(vcsim, disk.backing)
    assert url.endswith("/folder/restored1/restored1-flat.vmdk?dcPath=DC0&dsName=LocalDS_0")
    assert int(s.head(url, timeout=10).headers["Content-Length"]) == capacity
    assert vm.config.changeTrackingEnabled is True

    image, used = _image(capacity, bs, 5)
    resp = s.put(url, data=image, timeout=30)
    assert resp.status_code == 200, resp.text
    assert _get_all(s, url) == image
    assert vcsim.api.read("restored1", 0, capacity) == image

    set_power(vm, on=True)  # the stun makes CBT effective
    snap = snapshot(vm)
    sdisk = disks(snap.config)[0]
    assert sdisk.backing.changeId
    star = changed_areas(vm, snap, sdisk.key, "*", capacity)
    assert blocks_of(star.extents, bs) == used
    restored = bytearray(capacity)
    for start, length in star.extents:
        restored[start : start + length] = folder_read(s, backing_url(vcsim, sdisk.backing), start, length)
    assert bytes(restored) == image


def test_put_rules(vcsim: Vcsim) -> None:
    _si, vm, s = _vm(vcsim)
    url = backing_url(vcsim, disks(vm.config)[0].backing)
    # the disk of a powered-on VM is locked
    assert s.put(url, data=b"x" * 4096, timeout=10).status_code == 403
    set_power(vm, on=False)
    snap = snapshot(vm)
    # a snapshot's frozen layer is locked
    assert s.put(backing_url(vcsim, disks(snap.config)[0].backing), data=b"x", timeout=10).status_code == 403
    live = backing_url(vcsim, disks(vm.config)[0].backing)
    # bigger than the disk
    assert s.put(live, data=b"x" * (16 * MiB + 1), timeout=30).status_code == 400

    # no Content-Length (chunked)
    def chunks() -> Iterator[bytes]:
        yield b"abc"
        yield b"def"

    assert s.put(live, data=chunks(), timeout=10).status_code == 411
    # a shorter image is padded with zeros to the capacity
    assert s.put(live, data=b"short", timeout=10).status_code == 200
    assert int(s.head(live, timeout=10).headers["Content-Length"]) == 16 * MiB
    assert vcsim.api.read(VM, 0, 8) == b"short\0\0\0"
    # ordinary files: created, then replaced
    other = vcsim.folder_url(f"{VM}/notes.txt")
    assert s.put(other, data=b"one", timeout=10).status_code == 201
    assert s.put(other, data=b"two", timeout=10).status_code == 200
    assert _get_all(s, other) == b"two"


def test_destroyed_vm_disappears(vcsim: Vcsim) -> None:
    """The agent's VM can vanish behind its back: stock Destroy_Task through pyVmomi."""
    si, vm, s = _vm(vcsim)
    url = backing_url(vcsim, disks(vm.config)[0].backing)
    key = disks(vm.config)[0].key
    snapshot(vm)
    set_power(vm, on=False)
    wait_task(vm.Destroy_Task())
    with pytest.raises(LookupError):
        find_vm(si, VM)
    assert s.head(url, timeout=10).status_code == 404
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):
        vm.QueryChangedDiskAreas(deviceKey=key, startOffset=0, changeId="*")
    assert VM not in {st.name for st in vcsim.api.states()}


def test_clone_copies_content_and_leaves_the_source_alone(vcsim: Vcsim) -> None:
    _si, vm, s = _vm(vcsim)
    vcsim.api.write(VM, 2 * MiB, b"source data")
    snapshot(vm)  # the source runs on a child layer
    vcsim.api.write(VM, 3 * MiB, b"after the snapshot")
    source_backing = disks(vm.config)[0].backing.fileName
    source_image = vcsim.api.read(VM, 0, 16 * MiB)

    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(), powerOn=False, template=False)
    clone = wait_task(vm.CloneVM_Task(folder=vm.parent, name="clone1", spec=spec))
    cdisk = disks(clone.config)[0]
    assert cdisk.backing.fileName.startswith("[LocalDS_0] clone1/")
    assert cdisk.backing.parent is None
    assert _get_all(s, backing_url(vcsim, cdisk.backing)) == source_image

    sdisk = disks(vm.config)[0]
    assert sdisk.backing.fileName == source_backing
    assert sdisk.backing.parent.fileName == BASE
    # the two VMs no longer share anything: writes stay apart
    vcsim.api.write("clone1", 0, b"clone only")
    assert vcsim.api.read(VM, 0, 10) == b"\0" * 10
    assert _get_all(s, backing_url(vcsim, sdisk.backing)) == source_image


def _flat_file(vc: Vcsim, name: str) -> Any:
    [path] = vc.datastore_dir.glob(f"*LocalDS_0*/{VM}/{name}")
    return path


def test_a_snapshot_copies_nothing_until_the_running_layer_is_used(vcsim: Vcsim) -> None:
    """As ESXi starts an empty delta, a snapshot costs no copy of the disk: the running layer is a
    placeholder until it is first read or written, and a snapshot removed before that drops it."""
    _si, vm, s = _vm(vcsim)
    rng = random.Random(3)
    vcsim.api.write(VM, 0, rng.randbytes(4 * MiB))
    image = vcsim.api.read(VM, 0, 16 * MiB)
    first = snapshot(vm, "one")
    second = snapshot(vm, "two")  # the first child, never used, is frozen as it is
    child = _flat_file(vcsim, "disk1-000002-flat.vmdk")
    assert child.stat().st_size == 16 * MiB
    assert child.stat().st_blocks == 0, "the snapshot copied the disk"
    for snap in (first, second):
        assert _get_all(s, backing_url(vcsim, disks(snap.config)[0].backing)) == image
    remove_snapshot(first)
    remove_snapshot(second)
    assert disks(vm.config)[0].backing.fileName == BASE
    assert sorted(p.name for p in _flat_file(vcsim, "disk1-flat.vmdk").parent.glob("*-flat.vmdk")) == [
        "disk1-flat.vmdk"
    ]
    assert vcsim.api.read(VM, 0, 16 * MiB) == image

    # Reverting to a snapshot nothing was written after keeps the disk as it is.
    snap = snapshot(vm, "user")
    wait_task(snap.RevertToSnapshot_Task())
    assert vcsim.api.read(VM, 0, 16 * MiB) == image
    # The running layer of a powered-off VM is read whole over /folder: its copy is made first.
    set_power(vm, False)
    assert _get_all(s, backing_url(vcsim, disks(vm.config)[0].backing)) == image
    vcsim.api.write(VM, 5, b"after")
    assert _get_all(s, backing_url(vcsim, disks(snap.config)[0].backing)) == image
    assert vcsim.api.read(VM, 0, 16) == image[:5] + b"after" + image[10:16]
