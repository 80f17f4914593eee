"""Backing up simulator VMs through pyVmomi and the datastore HTTP endpoint, and restoring them.

Every point is compared byte for byte with the disk as its snapshot froze it.
"""

from __future__ import annotations

import random
from pathlib import Path

from pyVmomi import vim

from tests.fixtures.repos import SMALL_BLOCK
from tests.fixtures.vcsim import Vcsim, add_disk, find_vm, wait_task
from tests.fixtures.vsphere import VM, back_up, blocks_touched, connect, disk_bytes, restored_disks, scribble
from vmkeep.agent.engine.progress import Progress
from vmkeep.repository.repo import Repository

MiB = 1 << 20


def _vm_disk(vc: Vcsim, vm: str = VM) -> tuple[str, int]:
    state = vc.api.state(vm)
    disk = state.disks[0]
    return str(disk.key), disk.capacity


def test_full_then_incrementals_restore_exactly_what_each_snapshot_froze(
    vcsim: Vcsim, repo: Repository, tmp_path: Path
) -> None:
    rng = random.Random(1)
    key, capacity = _vm_disk(vcsim)
    scribble(vcsim, VM, capacity, rng, 30)
    expected, points = [], []
    writes: list[tuple[int, int]] = []
    with connect(vcsim) as conn:
        for round_ in range(5):
            expected.append(disk_bytes(vcsim, VM, capacity))
            point = back_up(conn, repo, sanity_sample=0)
            points.append(point)
            disk = point.disks[0]
            if round_ == 0:
                assert disk.mode == "full" and disk.reason == "no earlier recovery point of this VM"
            else:
                assert disk.mode == "incremental", disk.reason
                touched = blocks_touched(writes, SMALL_BLOCK)
                assert disk.changed_blocks == len(touched)  # CBT granularity equals the block size here
                assert disk.read_bytes == len(touched) * SMALL_BLOCK  # only the changed blocks are read
            assert disk.change_token and disk.change_token != (points[-2].disks[0].change_token if round_ else None)
            writes = scribble(vcsim, VM, capacity, rng, rng.randint(1, 6), max_len=150_000)
        assert vcsim.api.state(VM).snapshots == ()  # every backup snapshot was removed
    for point, image in zip(points, expected, strict=True):
        assert restored_disks(repo, point, tmp_path) == {key: image}


class _WriteDuringBackup(Progress):
    """Writes into the guest's disk while its backup runs, i.e. after the snapshot was taken."""

    def __init__(self, vc: Vcsim, capacity: int) -> None:
        self.vc, self.capacity, self.writes = vc, capacity, []  # type: ignore[var-annotated]

    def disk_started(self, vm: str, key: str, total_bytes: int, mode: str, reason: str | None) -> None:
        self.writes = scribble(self.vc, VM, self.capacity, random.Random(99), 10, max_len=300_000)


def test_guest_writes_after_the_snapshot_never_leak_into_its_point(
    vcsim: Vcsim, repo: Repository, tmp_path: Path
) -> None:
    key, capacity = _vm_disk(vcsim)
    scribble(vcsim, VM, capacity, random.Random(2), 20)
    with connect(vcsim) as conn:
        back_up(conn, repo)
        frozen = disk_bytes(vcsim, VM, capacity)
        hook = _WriteDuringBackup(vcsim, capacity)
        point = back_up(conn, repo, progress=hook)
        assert hook.writes
        after = disk_bytes(vcsim, VM, capacity)
        assert after != frozen
        assert restored_disks(repo, point, tmp_path) == {key: frozen}
        # The next incremental picks the writes up.
        later = back_up(conn, repo)
        assert later.disks[0].mode == "incremental"
        assert restored_disks(repo, later, tmp_path) == {key: after}


def test_cbt_reset_makes_a_full_read_with_the_reason(vcsim: Vcsim, repo: Repository, tmp_path: Path) -> None:
    key, capacity = _vm_disk(vcsim)
    scribble(vcsim, VM, capacity, random.Random(3), 10)
    with connect(vcsim) as conn:
        back_up(conn, repo)
        back_up(conn, repo)
        vcsim.api.cbt_reset(VM)
        scribble(vcsim, VM, capacity, random.Random(4), 3)
        image = disk_bytes(vcsim, VM, capacity)
        point = back_up(conn, repo)
    disk = point.disks[0]
    assert disk.mode == "full"
    assert "refused change id" in disk.reason and "FileFault" in disk.reason
    assert restored_disks(repo, point, tmp_path) == {key: image}


def test_cbt_switched_off_between_backups_is_switched_on_again_with_a_full_read(
    vcsim: Vcsim, repo: Repository, tmp_path: Path
) -> None:
    key, capacity = _vm_disk(vcsim)
    scribble(vcsim, VM, capacity, random.Random(7), 5)
    with connect(vcsim) as conn:
        back_up(conn, repo)
        vm = find_vm(vcsim.connect(), VM)
        wait_task(vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=False)))
        image = disk_bytes(vcsim, VM, capacity)
        point = back_up(conn, repo)
    assert point.disks[0].mode == "full"
    assert "change tracking was just enabled" in point.disks[0].reason
    assert vcsim.api.state(VM).cbt_enabled
    assert restored_disks(repo, point, tmp_path) == {key: image}


def test_change_tracking_that_misses_a_write_is_caught_and_read_in_full(
    vcsim: Vcsim, repo: Repository, tmp_path: Path
) -> None:
    """A write that bypasses change tracking (the disk file changed behind the hypervisor's back)."""
    key, capacity = _vm_disk(vcsim)
    scribble(vcsim, VM, capacity, random.Random(5), 10)
    with connect(vcsim) as conn:
        back_up(conn, repo)
        state = vcsim.api.state(VM).disks[0]
        [flat] = vcsim.datastore_dir.glob(f"*{state.datastore}*/{state.layers[-1].flat_path}")
        with flat.open("r+b") as f:
            f.seek(5 * MiB + 1234)
            f.write(b"CBT never saw this")
        image = disk_bytes(vcsim, VM, capacity)
        point = back_up(conn, repo, sanity_sample=10_000)  # re-read every unchanged block
    disk = point.disks[0]
    assert disk.mode == "full" and "CBT sanity check" in disk.reason
    assert restored_disks(repo, point, tmp_path) == {key: image}


def test_multi_disk_vm_with_odd_sizes_a_disk_added_and_a_disk_extended(
    vcsim: Vcsim, repo: Repository, tmp_path: Path
) -> None:
    si = vcsim.connect()
    vm = find_vm(si, VM)
    odd = 3 * MiB + 4 * 1024 + 512 * 1024  # not a multiple of the 64 KiB block nor of 1 MiB
    add_disk(vm, 1, odd)
    rng = random.Random(6)
    with connect(vcsim) as conn:
        for disk in vcsim.api.state(VM).disks:
            scribble(vcsim, VM, disk.capacity, rng, 8, key=disk.key, max_len=100_000)
        first = back_up(conn, repo)
        assert sorted(d.capacity for d in first.disks) == sorted([16 * MiB, odd])

        add_disk(vm, 2, 2 * MiB + 3 * 1024)  # a disk added between backups
        big = next(
            d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk) and d.unitNumber == 0
        )
        big.capacityInKB += 1024  # and one extended by 1 MiB
        wait_task(
            vm.ReconfigVM_Task(
                spec=vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit", device=big)])
            )
        )
        for disk in vcsim.api.state(VM).disks:
            scribble(vcsim, VM, disk.capacity, rng, 4, key=disk.key, max_len=50_000)
        images = {str(d.key): disk_bytes(vcsim, VM, d.capacity, key=d.key) for d in vcsim.api.state(VM).disks}
        second = back_up(conn, repo)
    modes = {d.key: (d.mode, d.reason) for d in second.disks}
    by_unit = {d.unitNumber: str(d.key) for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)}
    assert modes[by_unit[0]][0] == "full" and "resized" in modes[by_unit[0]][1]
    assert modes[by_unit[1]] == ("incremental", None)
    assert modes[by_unit[2]][0] == "full" and "new since the previous" in modes[by_unit[2]][1]
    assert restored_disks(repo, second, tmp_path) == images


def test_full_every_makes_periodic_active_fulls(vcsim: Vcsim, repo: Repository) -> None:
    _key, capacity = _vm_disk(vcsim)
    scribble(vcsim, VM, capacity, random.Random(9), 5)
    kinds = []
    with connect(vcsim) as conn:
        for _ in range(7):
            point = back_up(conn, repo, full_every=3)
            kinds.append((point.kind, point.disks[0].reason or ""))
    assert [k for k, _ in kinds] == ["full", "incremental", "incremental", "full", "incremental", "incremental", "full"]
    assert "periodic active full" in kinds[3][1]
