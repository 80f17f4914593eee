# mypy: disable-error-code="no-untyped-call"
"""QueryChangedDiskAreas through pyVmomi, against what the guest really wrote."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from typing import Any

import pytest
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
    merge,
    remove_snapshot,
    set_power,
    snapshot,
    wait_task,
)

VM = "DC0_H0_VM0"
MiB = 1024 * 1024


def _setup(vc: Vcsim, cbt: bool = True) -> tuple[Any, Any, int, int]:
    """The test VM with CBT enabled (not yet in effect), its disk key and capacity."""
    si = vc.connect()
    vm = find_vm(si, VM)
    if cbt:
        enable_cbt(vm)
    disk = disks(vm.config)[0]
    return si, vm, disk.key, disk.capacityInBytes


def test_change_tracking_is_supported(vcsim: Vcsim) -> None:
    si = vcsim.connect()
    vm = find_vm(si, VM)
    assert vm.capability.changeTrackingSupported is True
    assert not vm.config.changeTrackingEnabled


def test_cbt_takes_effect_only_after_a_stun(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim, cbt=False)
    set_power(vm, on=False)
    enable_cbt(vm)
    assert vm.config.changeTrackingEnabled is True
    # enabled, but not in effect before a stun: no changeId, and queries fail
    assert disks(vm.config)[0].backing.changeId is None
    st = vcsim.api.state(VM)
    assert st.cbt_enabled and st.cbt_pending and not st.cbt_active
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(deviceKey=key, startOffset=0, changeId="*")

    set_power(vm, on=True)  # power on is a stun
    change_id = disks(vm.config)[0].backing.changeId
    assert change_id and re.fullmatch(r"([0-9a-f]{2} ){7}[0-9a-f]{2}-([0-9a-f]{2} ){7}[0-9a-f]{2}/\d+", change_id)
    assert vcsim.api.state(VM).cbt_active

    vcsim.api.write(VM, 3 * MiB + 5, b"after the stun")
    set_power(vm, on=False)
    got = changed_areas(vm, None, key, change_id, cap)
    bs = vcsim.endpoint.block_size
    assert blocks_of(got.extents, bs) == {(3 * MiB + 5) // bs}


def test_snapshot_is_a_stun_too(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim)  # powered on, CBT pending
    vcsim.api.write(VM, 0, b"written before CBT took effect")
    snap = snapshot(vm)
    change_id = disks(snap.config)[0].backing.changeId
    assert change_id
    # '*' still sees the earlier write: it reports allocated areas, not tracked changes
    star = changed_areas(vm, snap, key, "*", cap)
    assert star.extents == [(0, vcsim.endpoint.block_size)]


def test_star_reports_allocated_areas(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim)
    bs = vcsim.endpoint.block_size
    writes = [(0, 10), (bs * 10 + 100, 2 * bs), (cap - 1, 1)]
    for off, n in writes:
        vcsim.api.write(VM, off, b"\xa5" * n)
    snap = snapshot(vm)
    star = changed_areas(vm, snap, key, "*", cap)
    assert blocks_of(star.extents, bs) == blocks_of(writes, bs)
    assert star.extents[-1][0] + star.extents[-1][1] == cap
    alloc = vcsim.api.state(VM).disk().allocated_extents
    assert [tuple(e) for e in alloc] == star.extents


def test_star_answers_the_whole_disk_on_nfs(vcsim_factory: Callable[..., Vcsim]) -> None:
    vc = vcsim_factory(datastore_type="NFS", disk_mb=4)
    _si, vm, key, cap = _setup(vc)
    ds = vm.datastore[0]
    assert ds.summary.type == "NFS"
    vc.api.write(VM, 0, b"x")
    snap = snapshot(vm)
    assert changed_areas(vm, snap, key, "*", cap).extents == [(0, cap)]
    # the switch can be flipped at run time
    vc.api.set_config(star_whole_disk=False)
    assert changed_areas(vm, snap, key, "*", cap).extents == [(0, vc.endpoint.block_size)]


def test_paging_gives_the_same_merged_extents(vcsim_factory: Callable[..., Vcsim]) -> None:
    vc = vcsim_factory(disk_mb=8)
    _si, vm, key, cap = _setup(vc)
    bs = vc.endpoint.block_size
    snap0 = snapshot(vm)
    base = disks(snap0.config)[0].backing.changeId
    # runs of 1..5 blocks with gaps, so pages split runs in the middle
    rng = random.Random(7)
    off = 0
    while off < cap:
        run = rng.randint(1, 5) * bs
        vc.api.write(VM, off, rng.randbytes(min(run, cap - off)))
        off += run + rng.randint(1, 3) * bs
    snap = snapshot(vm)

    assert vc.api.set_config(max_extents=0, max_bytes=0).max_extents == 0
    whole = changed_areas(vm, snap, key, base, cap)
    assert whole.calls == 1
    assert len(whole.extents) > 10

    for max_extents, max_bytes in [(1, 0), (3, 0), (0, 3 * bs + 4321), (2, 5 * bs), (4, 1000003)]:
        vc.api.set_config(max_extents=max_extents, max_bytes=max_bytes)
        paged = changed_areas(vm, snap, key, base, cap)
        assert paged.extents == whole.extents, (max_extents, max_bytes)
        assert paged.calls > 3
        if max_extents:
            assert all(len(page) <= max_extents for page in _pages(vm, snap, key, base, cap))
        if max_bytes:
            assert len(paged.raw) > len(paged.extents), "byte-limited pages should split some runs"
    # '*' pages the same way
    vc.api.set_config(max_extents=2, max_bytes=0)
    star_paged = changed_areas(vm, snap, key, "*", cap)
    vc.api.set_config(max_extents=0)
    assert star_paged.extents == changed_areas(vm, snap, key, "*", cap).extents


def _pages(vm: Any, snap: Any, key: int, change_id: str, cap: int) -> list[list[Any]]:
    out = []
    off = 0
    while off < cap:
        info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=off, changeId=change_id)
        out.append(list(info.changedArea))
        off = info.startOffset + info.length
    return out


def test_default_paging_is_2000_extents(vcsim_factory: Callable[..., Vcsim]) -> None:
    vc = vcsim_factory(disk_mb=20, block_kb=4)
    si, vm, key, cap = _setup(vc)
    bs = vc.endpoint.block_size
    assert bs == 4096
    assert vc.api.config().max_extents == 2000
    set_power(vm, on=False)
    image = bytearray(cap)
    for b in range(0, 2 * 2100, 2):  # 2100 separate one-block extents
        image[b * bs] = 1
    resp = vc.folder_session(si).put(backing_url(vc, disks(vm.config)[0].backing), data=bytes(image), timeout=30)
    assert resp.status_code == 200
    set_power(vm, on=True)
    snap = snapshot(vm)
    first = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0, changeId="*")
    assert len(first.changedArea) == 2000
    assert first.length == 3999 * bs  # up to the end of the 2000th extent
    got = changed_areas(vm, snap, key, "*", cap)
    assert got.calls == 2
    assert got.extents == [(b * bs, bs) for b in range(0, 4200, 2)]


def test_changed_areas_between_snapshots_match_the_writes(vcsim_factory: Callable[..., Vcsim]) -> None:
    """Randomised rounds of guest writes; each incremental must cover exactly the written blocks,
    and applying it to the previous image must give the snapshot's content byte for byte."""
    vc = vcsim_factory(disk_mb=8)
    si, vm, key, cap = _setup(vc)
    bs = vc.endpoint.block_size
    session = vc.folder_session(si)
    rng = random.Random(20240607)

    def write_some() -> set[int]:
        touched: set[int] = set()
        for _ in range(rng.randint(1, 15)):
            if rng.random() < 0.5:
                # start and end on, just before or just after a block boundary
                off = rng.randrange(cap // bs) * bs + rng.choice([0, 0, 1, bs - 1])
                end = off + rng.randint(1, 3) * bs + rng.choice([0, 0, 1, -1])
            else:
                off = rng.randrange(cap)
                end = off + rng.randint(1, 3 * bs)
            off, end = min(off, cap - 1), min(max(end, off + 1), cap)
            vc.api.write(VM, off, rng.randbytes(end - off))
            touched |= blocks_of([(off, end - off)], bs)
        return touched

    def whole(url: str) -> bytes:
        return folder_read(session, url, 0, cap)

    write_some()
    snap = snapshot(vm, "full")
    backing = disks(snap.config)[0].backing
    change_id = backing.changeId
    image = bytearray(cap)
    url = backing_url(vc, backing)
    for start, length in changed_areas(vm, snap, key, "*", cap).extents:
        image[start : start + length] = folder_read(session, url, start, length)
    assert bytes(image) == whole(url)
    remove_snapshot(snap)
    kept: Any = None

    for round_no in range(8):
        written = write_some()
        snap = snapshot(vm, f"incr{round_no}")
        backing = disks(snap.config)[0].backing
        assert backing.changeId != change_id
        assert backing.parent is None or kept is not None
        vc.api.set_config(max_extents=0, max_bytes=0)
        one = changed_areas(vm, snap, key, change_id, cap)
        vc.api.set_config(max_extents=rng.randint(1, 4), max_bytes=rng.choice([0, bs + 17, 3 * bs]))
        paged = changed_areas(vm, snap, key, change_id, cap)
        assert paged.extents == one.extents
        got = blocks_of(one.extents, bs)
        assert written <= got, f"missed blocks {sorted(written - got)}"
        assert got == written, f"blocks reported but never written: {sorted(got - written)}"

        url = backing_url(vc, backing)
        for start, length in one.extents:
            image[start : start + length] = folder_read(session, url, start, length)
        assert bytes(image) == whole(url), f"round {round_no}: incremental image differs"
        assert vc.api.read(VM, 0, cap) == bytes(image)

        # Sometimes keep the snapshot a round longer, so the next snapshot sits on top of it
        # and the older one is consolidated from the middle of the chain.
        if kept is not None:
            remove_snapshot(kept)
            kept = None
        if round_no % 3 == 1:
            kept = snap
        else:
            remove_snapshot(snap)
        change_id = backing.changeId
    if kept is not None:
        remove_snapshot(kept)
    assert vc.api.state(VM).snapshots == ()


def test_stale_change_ids_give_file_fault(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim)
    snap1 = snapshot(vm)
    id1 = disks(snap1.config)[0].backing.changeId
    vcsim.api.write(VM, 0, b"data")
    snap2 = snapshot(vm)
    id2 = disks(snap2.config)[0].backing.changeId
    assert changed_areas(vm, snap2, key, id1, cap).extents

    epoch, _, seq = id2.rpartition("/")
    bad = [
        f"{epoch}/{int(seq) + 1}",  # from the future of snapshot 2
        "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1",  # another epoch
        "garbage",
        "",
    ]
    for change_id in bad:
        with pytest.raises(vim.fault.FileFault) as err:
            vm.QueryChangedDiskAreas(snapshot=snap2, deviceKey=key, startOffset=0, changeId=change_id)
        assert "disk1" in err.value.file
    # snapshot 1 cannot answer for changes since snapshot 2
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=snap1, deviceKey=key, startOffset=0, changeId=id2)


def test_cbt_reset_invalidates_change_ids(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim)
    snap1 = snapshot(vm)
    id1 = disks(snap1.config)[0].backing.changeId
    remove_snapshot(snap1)
    new_ids = vcsim.api.cbt_reset(VM)
    assert set(new_ids) == {key}
    assert new_ids[key].split("/")[0] != id1.split("/")[0]
    assert disks(vm.config)[0].backing.changeId == new_ids[key]
    vcsim.api.write(VM, 0, b"data")
    snap2 = snapshot(vm)
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=snap2, deviceKey=key, startOffset=0, changeId=id1)
    # '*' and the new epoch's ids work
    assert changed_areas(vm, snap2, key, "*", cap).extents
    got = changed_areas(vm, snap2, key, new_ids[key], cap)
    assert blocks_of(got.extents, vcsim.endpoint.block_size) == {0}


def test_disabling_cbt_invalidates_change_ids(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim)
    snap1 = snapshot(vm)
    id1 = disks(snap1.config)[0].backing.changeId
    remove_snapshot(snap1)
    enable_cbt(vm, False)
    assert disks(vm.config)[0].backing.changeId is None
    snap2 = snapshot(vm)
    assert disks(snap2.config)[0].backing.changeId is None
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=snap2, deviceKey=key, startOffset=0, changeId="*")
    remove_snapshot(snap2)
    enable_cbt(vm, True)
    snap3 = snapshot(vm)
    id3 = disks(snap3.config)[0].backing.changeId
    assert id3 and id3.split("/")[0] != id1.split("/")[0]
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=snap3, deviceKey=key, startOffset=0, changeId=id1)
    assert changed_areas(vm, snap3, key, "*", cap).calls == 1


def test_bad_offset_and_device_key_give_invalid_argument(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim)
    snap = snapshot(vm)
    for offset in (cap, cap + 1, -1, 1 << 50):
        with pytest.raises(vmodl.fault.InvalidArgument) as err:
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=offset, changeId="*")
        assert err.value.invalidProperty == "startOffset"
    # the last byte is a valid start
    info = vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=cap - 1, changeId="*")
    assert info.startOffset + info.length == cap
    for bad_key in (key + 1, 0, -100):
        with pytest.raises(vmodl.fault.InvalidArgument) as err:
            vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=bad_key, startOffset=0, changeId="*")
        assert err.value.invalidProperty == "deviceKey"
    # a device that is not a disk
    nic = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard))
    with pytest.raises(vmodl.fault.InvalidArgument):
        vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=nic.key, startOffset=0, changeId="*")


def test_snapshot_of_another_vm_or_a_removed_one(vcsim: Vcsim) -> None:
    si, vm, key, _cap = _setup(vcsim)
    other = find_vm(si, "DC0_H0_VM1")
    enable_cbt(other)
    other_snap = snapshot(other)
    with pytest.raises(vmodl.fault.InvalidArgument):
        vm.QueryChangedDiskAreas(snapshot=other_snap, deviceKey=key, startOffset=0, changeId="*")
    snap = snapshot(vm)
    remove_snapshot(snap)
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):
        vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key, startOffset=0, changeId="*")


def test_query_without_snapshot_needs_a_powered_off_vm(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim)
    set_power(vm, on=False)
    set_power(vm, on=True)  # CBT now in effect
    with pytest.raises(vim.fault.InvalidPowerState) as err:
        vm.QueryChangedDiskAreas(deviceKey=key, startOffset=0, changeId="*")
    assert err.value.existingState == "poweredOn"
    vcsim.api.write(VM, MiB, b"y" * 100)
    set_power(vm, on=False)
    got = changed_areas(vm, None, key, "*", cap)
    assert blocks_of(got.extents, vcsim.endpoint.block_size) == {MiB // vcsim.endpoint.block_size}


def test_each_disk_has_its_own_change_id(vcsim: Vcsim) -> None:
    _si, vm, key, cap = _setup(vcsim)
    set_power(vm, on=False)
    controller = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualSCSIController))
    new_disk = vim.vm.device.VirtualDisk(
        key=-1,
        controllerKey=controller.key,
        unitNumber=1,
        capacityInKB=2048,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent", thinProvisioned=True),
    )
    spec = vim.vm.ConfigSpec(
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=new_disk)]
    )
    wait_task(vm.ReconfigVM_Task(spec=spec))
    set_power(vm, on=True)
    both = disks(vm.config)
    assert len(both) == 2
    key2 = next(d.key for d in both if d.key != key)
    vcsim.api.write(VM, 0, b"first disk", key=key)
    vcsim.api.write(VM, 1024 * 1024, b"second disk", key=key2)
    snap = snapshot(vm)
    ids = {d.key: d.backing.changeId for d in disks(snap.config)}
    assert ids[key] and ids[key2] and ids[key].split("/")[0] != ids[key2].split("/")[0]
    bs = vcsim.endpoint.block_size
    assert blocks_of(changed_areas(vm, snap, key, "*", cap).extents, bs) == {0}
    cap2 = next(d.capacityInBytes for d in disks(snap.config) if d.key == key2)
    assert cap2 == 2 * 1024 * 1024
    assert blocks_of(changed_areas(vm, snap, key2, "*", cap2).extents, bs) == {1024 * 1024 // bs}
    # a changeId of one disk means nothing to the other
    with pytest.raises(vim.fault.FileFault):
        vm.QueryChangedDiskAreas(snapshot=snap, deviceKey=key2, startOffset=0, changeId=ids[key])


def test_merge_helper() -> None:
    assert merge([(10, 5), (0, 10), (20, 1), (15, 0)]) == [(0, 15), (20, 1)]
