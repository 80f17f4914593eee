"""HypervSession's checks of what the host answers, on the simulated host without a network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmkeep.hypervisors.base import Changes, FullRead
from vmkeep.hypervisors.hyperv.control import Consistency, HostControl
from vmkeep.hypervisors.hyperv.session import HypervSession, _parent_of
from vmkeep.hypervisors.hyperv.simulator.direct import DirectRunner, LocalStorage
from vmkeep.hypervisors.hyperv.simulator.host import SimHost

MiB = 1024 * 1024
SIZE = 8 * MiB


class Tampering(DirectRunner):
    """The simulated host, with its get-changes answers rewritten: a fake for answers no real fault gives."""

    def __init__(self, host: SimHost, answer: dict[str, object]) -> None:
        super().__init__(host)
        self.answer = answer

    def run(self, script: str, stdin: bytes | None = None, *, idempotent: bool = False) -> bytes:
        out = super().run(script, stdin, idempotent=idempotent)
        if script.startswith("# vmkeep-template: get-changes/"):
            return json.dumps(self.answer).encode()
        return out


@pytest.fixture
def host(tmp_path: Path) -> SimHost:
    h = SimHost(tmp_path / "C")
    h.create_vm("vm1", (SIZE,))
    return h


def _token(host: SimHost) -> str:
    control = HostControl(DirectRunner(host), "hv")
    cp = control.begin_backup("vm1", Consistency.CRASH)
    [rct] = control.convert_checkpoint(cp.snapshot).rct_ids.values()
    return rct


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({"processed": 0, "offsets": [], "lengths": []}, "processed 0 bytes"),
        ({"processed": SIZE + 1, "offsets": [], "lengths": []}, f"processed {SIZE + 1} bytes"),
        ({"processed": MiB, "offsets": [2 * MiB], "lengths": [4096]}, "outside"),
        ({"processed": SIZE, "offsets": [0], "lengths": [-1]}, "outside"),
    ],
)
def test_an_inconsistent_change_list_means_a_full_read(host: SimHost, answer: dict[str, object], reason: str) -> None:
    token = _token(host)
    session = HypervSession(HostControl(Tampering(host, answer), "hv"), "vm1", LocalStorage(host), quiesce=False)
    try:
        [disk] = session.disks()
        result = session.changes_since(disk, token)
        assert isinstance(result, FullRead) and reason in result.reason, result
    finally:
        session.close(False)
    assert host.checkpoints("vm1") == []


def test_changes_and_reads_through_the_session(host: SimHost) -> None:
    token = _token(host)
    host.guest_write("vm1", 3 * MiB, b"z" * 4096)
    session = HypervSession(HostControl(DirectRunner(host), "hv"), "vm1", LocalStorage(host))
    try:
        [disk] = session.disks()
        assert (disk.key, disk.label) == ("scsi0-0", "SCSI 0:0")
        changes = session.changes_since(disk, token)
        assert isinstance(changes, Changes) and [(e.offset, e.length) for e in changes.extents] == [(3 * MiB, 4096)]
        assert session.read(disk, 3 * MiB, 4) == b"zzzz"
        assert session.hardware()["disks"][0]["controller"] == "SCSI"
    finally:
        session.close(False)
        session.close(False)  # twice is harmless
    assert host.checkpoints("vm1") == []


def test_a_checkpoints_child_names_its_parent() -> None:
    assert _parent_of("C:\\VMs\\web\\Disk0_6F1C3A3B-1234-5678-9ABC-DEF012345678.avhdx") == "c:\\vms\\web\\disk0.vhdx"
    assert _parent_of("C:\\VMs\\web\\disk_a.vhdx") == "c:\\vms\\web\\disk_a.vhdx"
