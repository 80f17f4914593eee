"""The simulated Hyper-V host's model, driven through the templates without a network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmkeep.hypervisors.base import Extent
from vmkeep.hypervisors.hyperv import qemu
from vmkeep.hypervisors.hyperv.control import Consistency, HostControl
from vmkeep.hypervisors.hyperv.exceptions import HostCallError
from vmkeep.hypervisors.hyperv.simulator.direct import DirectRunner, LocalStorage
from vmkeep.hypervisors.hyperv.simulator.host import SimHost, WmiMethod
from vmkeep.hypervisors.hyperv.simulator.rct import (
    ERROR_VHD_CHANGE_TRACKING_DISABLED,
    ERROR_VHD_INVALID_CHANGE_TRACKING_ID,
)

MiB = 1024 * 1024
SIZE = 8 * MiB


@pytest.fixture
def host(tmp_path: Path) -> SimHost:
    h = SimHost(tmp_path / "C")
    h.create_vm("web01", (SIZE,))
    return h


@pytest.fixture
def control(host: SimHost) -> HostControl:
    return HostControl(DirectRunner(host), "hv01")


def _reference(host: SimHost, control: HostControl) -> tuple[str, str]:
    """A recovery checkpoint converted: (reference point id, the disk's RCT id)."""
    cp = control.begin_backup("web01", Consistency.CRASH)
    rp = control.convert_checkpoint(cp.snapshot)
    [rct] = rp.rct_ids.values()
    return rp.id, rct


def test_checkpoint_freezes_the_parent_and_writes_after_it_go_to_the_child(host: SimHost, control: HostControl) -> None:
    host.guest_write("web01", MiB, b"a" * 4096)
    cp = control.begin_backup("web01", Consistency.APPLICATION)
    [frozen] = control.checkpoint_disks(cp.snapshot)
    host.guest_write("web01", MiB, b"b" * 4096)
    assert LocalStorage(host).open_disk(frozen.path).read(MiB, 4) == b"aaaa"
    assert host.guest_view("web01")[MiB : MiB + 4] == b"bbbb"
    assert qemu.read_all(host.disk_file("web01"))[MiB : MiB + 4] == b"aaaa"  # qemu-img agrees with dissect
    control.remove_checkpoint(cp.snapshot)  # merged: the parent holds the guest's writes again
    assert qemu.read_all(host.disk_file("web01"))[MiB : MiB + 4] == b"bbbb"
    assert host.checkpoints("web01") == []


def test_changes_are_those_between_the_reference_point_and_the_checkpoint(host: SimHost, control: HostControl) -> None:
    host.guest_write("web01", 0, b"0" * 512)
    _, rct = _reference(host, control)
    host.guest_write("web01", 3 * MiB, b"x" * 8192)
    cp = control.begin_backup("web01", Consistency.CRASH)
    host.guest_write("web01", 5 * MiB, b"late" * 1024)  # after the checkpoint: not in its changes
    [frozen] = control.checkpoint_disks(cp.snapshot)
    page = control.changes(cp.snapshot, frozen.path, rct, 0, SIZE)
    assert page.processed == SIZE
    assert page.extents == [Extent(3 * MiB, 8192)]


def test_an_id_of_another_epoch_or_without_reference_point_is_refused(host: SimHost, control: HostControl) -> None:
    rp, rct = _reference(host, control)
    cp = control.begin_backup("web01", Consistency.CRASH)
    [frozen] = control.checkpoint_disks(cp.snapshot)
    control.destroy_reference_point(rp)
    with pytest.raises(HostCallError) as err:
        control.changes(cp.snapshot, frozen.path, rct, 0, SIZE)
    assert err.value.code == ERROR_VHD_INVALID_CHANGE_TRACKING_ID
    host.set_tracking("web01", False)
    with pytest.raises(HostCallError) as err:
        control.changes(cp.snapshot, frozen.path, rct, 0, SIZE)
    assert err.value.code == ERROR_VHD_CHANGE_TRACKING_DISABLED


def test_reset_tracking_refuses_earlier_ids(host: SimHost, control: HostControl) -> None:
    _, rct = _reference(host, control)
    host.reset_tracking("web01")
    cp = control.begin_backup("web01", Consistency.CRASH)
    [frozen] = control.checkpoint_disks(cp.snapshot)
    with pytest.raises(HostCallError, match="not valid"):
        control.changes(cp.snapshot, frozen.path, rct, 0, SIZE)


def test_partial_processed_length_and_coarse_ranges(host: SimHost, control: HostControl) -> None:
    _, rct = _reference(host, control)
    host.guest_write("web01", 3 * MiB + 100, b"x" * 10)
    cp = control.begin_backup("web01", Consistency.CRASH)
    [frozen] = control.checkpoint_disks(cp.snapshot)
    host.max_processed = 2 * MiB
    host.range_granularity = MiB
    first = control.changes(cp.snapshot, frozen.path, rct, 0, SIZE)
    assert (first.processed, first.extents) == (2 * MiB, [])
    second = control.changes(cp.snapshot, frozen.path, rct, 2 * MiB, SIZE - 2 * MiB)
    assert (second.processed, second.extents) == (2 * MiB, [Extent(3 * MiB, MiB)])


def test_failed_jobs_and_leftover_checkpoints(host: SimHost, control: HostControl) -> None:
    host.fail_next(WmiMethod.CREATE_SNAPSHOT, "VSS in the guest failed")
    with pytest.raises(HostCallError, match="VSS in the guest failed") as err:
        control.begin_backup("web01", Consistency.APPLICATION)
    assert err.value.state == 10
    left = host.leave_checkpoint("web01")
    cp = control.begin_backup("web01", Consistency.CRASH)
    assert cp.removed == [left.name]
    assert [c.instance_id for c in host.checkpoints("web01")] == [cp.snapshot]
    control.remove_checkpoint(cp.snapshot)
    host.leave_checkpoint("web01", "Standard", "before the upgrade")
    with pytest.raises(HostCallError, match="checkpoint of its own"):
        control.begin_backup("web01", Consistency.CRASH)


def test_conversion_failure_keeps_the_checkpoint_and_the_old_reference_point(
    host: SimHost, control: HostControl
) -> None:
    rp, _ = _reference(host, control)
    cp = control.begin_backup("web01", Consistency.CRASH)
    host.fail_next(WmiMethod.CONVERT_TO_REFERENCE_POINT, "privilege not held", 0x8007052F)
    with pytest.raises(HostCallError, match="privilege not held"):
        control.convert_checkpoint(cp.snapshot)
    assert [r.instance_id for r in host.reference_points("web01")] == [rp]
    assert len(host.checkpoints("web01")) == 1


def test_read_disk_answers_the_frozen_bytes(host: SimHost, control: HostControl) -> None:
    data = os.urandom(3000)
    host.guest_write("web01", 12345, data)
    cp = control.begin_backup("web01", Consistency.CRASH)
    [frozen] = control.checkpoint_disks(cp.snapshot)
    assert control.read_disk(frozen.path, 12345, 3000) == data
    assert control.read_disk(frozen.path, SIZE - 10, 100) == bytes(10)


def test_paths_outside_the_drive_are_refused(host: SimHost, control: HostControl) -> None:
    for bad in ("D:\\x.vhdx", "C:\\..\\etc\\passwd", "\\\\other\\share\\x.vhdx"):
        with pytest.raises(HostCallError):
            control.read_disk(bad, 0, 1)
