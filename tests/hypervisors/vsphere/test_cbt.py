"""QueryChangedDiskAreas through vmkeep's pager: paging never changes the answer, faults become reasons."""

from __future__ import annotations

import random

import pytest

from tests.fixtures.vcsim import Vcsim, find_vm, wait_task
from tests.fixtures.vsphere import VM, blocks_touched, connect, scribble
from vmkeep.hypervisors.base import Changes, FullRead
from vmkeep.hypervisors.vsphere.exceptions import VSphereError
from vmkeep.hypervisors.vsphere.session import VSphereSession


def test_paged_answers_merge_to_the_same_extents_and_cover_every_write(vcsim: Vcsim) -> None:
    capacity = vcsim.api.state(VM).disks[0].capacity
    with connect(vcsim) as conn:
        with VSphereSession(conn, VM):  # enables CBT; the snapshot activates it
            pass
        with VSphereSession(conn, VM) as first:
            token = first.disks()[0].change_token
        writes = scribble(vcsim, VM, capacity, random.Random(8), 40, max_len=40_000)
        answers = []
        for max_extents, max_bytes in ((0, 0), (1, 0), (3, 131072), (0, 65536)):
            vcsim.api.set_config(max_extents=max_extents, max_bytes=max_bytes)
            with VSphereSession(conn, VM) as session:
                answers.append(session.changes_since(session.disks()[0], token))
    assert all(isinstance(a, Changes) for a in answers)
    assert len({tuple(a.extents) for a in answers}) == 1  # type: ignore[union-attr]
    extents = answers[0].extents  # type: ignore[union-attr]
    block = vcsim.endpoint.block_size
    reported = {b for e in extents for b in range(e.offset // block, (e.end - 1) // block + 1)}
    assert blocks_touched(writes, block) <= reported  # never misses a change


def test_cbt_state_problems_are_full_read_reasons(vcsim: Vcsim) -> None:
    with connect(vcsim) as conn:
        with VSphereSession(conn, VM) as session:
            disk = session.disks()[0]
            assert isinstance(session.changes_since(disk, disk.change_token), FullRead)  # CBT just enabled
        with VSphereSession(conn, VM) as session:
            disk = session.disks()[0]
            assert isinstance(session.changes_since(disk, disk.change_token), Changes)
            bogus = session.changes_since(disk, "not-a-change-id")
            assert isinstance(bogus, FullRead) and "FileFault" in bogus.reason
            assert isinstance(session.changes_since(disk, None), FullRead)


def test_templates_are_refused(vcsim: Vcsim) -> None:
    vm = find_vm(vcsim.connect(), "DC0_H0_VM1")
    wait_task(vm.PowerOffVM_Task())
    vm.MarkAsTemplate()
    with connect(vcsim) as conn, pytest.raises(VSphereError, match="is a template"):
        VSphereSession(conn, "DC0_H0_VM1")
