"""The read-back check of a restore to a host: parallel pieces, each compared with what was sent."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import VM, back_up, connect, disk_bytes, scribble
from vmkeep.agent.engine.restore import disk_images
from vmkeep.hypervisors.vsphere.connection import VSphereConnection
from vmkeep.hypervisors.vsphere.exceptions import RestoreError
from vmkeep.hypervisors.vsphere.inventory import list_vms
from vmkeep.hypervisors.vsphere.restore import READ_BACK_CHUNK, VsphereRestoreTarget, restore_vm
from vmkeep.hypervisors.vsphere.transport import DatastoreFile, HttpFlatTransport
from vmkeep.repository.repo import Repository


class _AlteringTransport(HttpFlatTransport):
    """Changes one byte of each upload on its way to the host, after vmkeep noted what it sent.

    A fake fault: the simulator stores what it receives faithfully, and a host that stores
    something else (a bad disk, a broken proxy) cannot be produced otherwise.
    """

    def __init__(self, conn: VSphereConnection, at: int) -> None:
        super().__init__(conn)
        self.at = at

    def write(self, file: DatastoreFile, size: int, chunks: Callable[[], Iterator[bytes]]) -> None:
        def altered() -> Iterator[bytes]:
            position = 0
            for chunk in chunks():
                sent = chunk
                if position <= self.at < position + len(chunk):
                    i = self.at - position
                    sent = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                position += len(chunk)
                yield sent

        super().write(file, size, altered)


def test_a_disk_that_reads_back_different_fails_the_restore_and_removes_the_vm(vcsim: Vcsim, repo: Repository) -> None:
    capacity = vcsim.api.state(VM).disks[0].capacity
    assert capacity > READ_BACK_CHUNK + 12345  # the altered byte is in a piece after the first
    scribble(vcsim, VM, capacity, random.Random(21), 8)
    at = READ_BACK_CHUNK + 12345
    with connect(vcsim) as conn:
        point = back_up(conn, repo)
        images = disk_images(repo, point, workers=2)
        target = VsphereRestoreTarget("altered", datastore="LocalDS_0")
        with pytest.raises(RestoreError, match=f"differs from what was uploaded \\(from offset {READ_BACK_CHUNK} on"):
            restore_vm(conn, point.hardware, images, target, transport=_AlteringTransport(conn, at))
        assert "altered" not in {v.name for v in list_vms(conn)}


def test_a_restored_disk_reads_back_equal_in_parallel_pieces(vcsim: Vcsim, repo: Repository) -> None:
    capacity = vcsim.api.state(VM).disks[0].capacity
    scribble(vcsim, VM, capacity, random.Random(22), 12)
    image = disk_bytes(vcsim, VM, capacity)
    with connect(vcsim) as conn:
        point = back_up(conn, repo)
        restored = restore_vm(
            conn,
            point.hardware,
            disk_images(repo, point, workers=2),
            VsphereRestoreTarget("copy", datastore="LocalDS_0"),
        )
    [disk] = vcsim.api.state("copy").disks
    assert restored.disks[0]["size"] == capacity == disk.capacity
    assert disk_bytes(vcsim, "copy", capacity) == image
