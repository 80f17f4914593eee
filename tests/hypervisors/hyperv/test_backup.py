"""Hyper-V backups end to end: pywinrm to the simulated host over WinRM, the frozen VHDX over SMB."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vmkeep.agent.engine.backup import BackupOptions
from vmkeep.agent.engine.sample_size import DEFAULT_WINDOWS, WINDOW
from vmkeep.hypervisors.hyperv import smb
from vmkeep.repository.config import RepoConfig
from vmkeep.repository.points import ReadMode
from vmkeep.repository.repo import Repository

from ...fixtures.hyperv_backup import MiB, back_up, random_writes, restored_bytes
from ...fixtures.hyperv_lab import HypervLab

VM = "web01"
SIZE = 16 * MiB


def test_full_then_incrementals_restore_to_the_frozen_parent(
    hyperv_lab: HypervLab, repo: Repository, tmp_path: Path
) -> None:
    host = hyperv_lab.host
    host.create_vm(VM, (SIZE, 8 * MiB))
    random_writes(host, VM, 20, seed=1)
    host.guest_write(VM, 0, os.urandom(MiB), disk=1)

    late = b"LATE" * 1024
    point, frozen = back_up(hyperv_lab, repo, VM, after_checkpoint=lambda h: h.guest_write(VM, 5 * MiB, late))
    assert [d.mode for d in point.disks] == [ReadMode.FULL, ReadMode.FULL]
    assert point.disks[0].reason == "no earlier recovery point of this VM"
    # A full read skips what the frozen VHDX's BAT says holds nothing (after checking a sample is zeros).
    assert point.disks[1].read_bytes - point.disks[1].sanity_bytes == MiB
    assert restored_bytes(repo, point, tmp_path / "r0") == [frozen.disks[0], frozen.disks[1]]
    assert all(d.change_token and d.change_token.startswith("rctX:") for d in point.disks)
    assert point.source["reference_point"] == host.reference_points(VM)[0].instance_id
    assert host.checkpoints(VM) == []

    for n in range(1, 3):
        random_writes(host, VM, 3, seed=10 + n)
        point, frozen = back_up(
            hyperv_lab,
            repo,
            VM,
            after_checkpoint=lambda h: h.guest_write(VM, 7 * MiB, late),
            during_read=lambda: random_writes(host, VM, 2, seed=99),
        )
        assert [d.mode for d in point.disks] == [ReadMode.INCREMENTAL, ReadMode.INCREMENTAL]
        disk0 = point.disks[0]
        # The changed ranges (plus the sanity sample), never the whole disk.
        assert disk0.read_bytes - disk0.sanity_bytes <= 6 * repo.config.block_size
        assert point.disks[1].read_bytes - point.disks[1].sanity_bytes == 0
        assert restored_bytes(repo, point, tmp_path / f"r{n}") == [frozen.disks[0], frozen.disks[1]]
        assert len(host.reference_points(VM)) == 1  # the previous one was destroyed after the commit
        assert host.checkpoints(VM) == []


def test_a_script_too_long_for_a_command_line_goes_on_stdin_and_is_still_recognised(hyperv_lab: HypervLab) -> None:
    name = "v" * 4000  # the rendered list-vms no longer fits 8,191 characters as -EncodedCommand
    with hyperv_lab.platform() as platform:
        assert platform.control.inventory(name).vms == []
    last = hyperv_lab.wsman.log.commands[-1]
    assert last.via_bootstrap
    assert hyperv_lab.host.calls_of("list-vms")[-1].params == {"vm": name}


class _CountingFile:
    """A real SMB file handle that counts what is read through it (instrumentation, not a fake:
    every byte still comes from the Samba server)."""

    def __init__(self, fh: Any, counter: list[int]) -> None:
        self._fh, self._counter = fh, counter

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._fh.read(n)
        self._counter[0] += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n: int = self._fh.readinto(buffer)
        self._counter[0] += n
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def test_an_incremental_reads_over_smb_the_changed_blocks_plus_at_most_1_mib(
    hyperv_lab: HypervLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counted on the SMB file handles, VHDX headers and block table included, with the default sample."""
    counter = [0]
    open_read = smb.SmbShare.open_read
    monkeypatch.setattr(smb.SmbShare, "open_read", lambda share, path: _CountingFile(open_read(share, path), counter))
    path = tmp_path / "repo"
    Repository.init(path, RepoConfig.new(block_size=MiB), None).close()
    host = hyperv_lab.host
    host.create_vm("big", (256 * MiB,))
    random_writes(host, "big", 40, seed=3, size=65536)
    with Repository.open(path, None) as repo:
        back_up(hyperv_lab, repo, "big", options=BackupOptions())
        for block in (10, 200):  # two 64 KiB guest writes, each inside one 1 MiB block
            host.guest_write("big", block * MiB + 4096, os.urandom(65536))
        counter[0] = 0
        point, frozen = back_up(hyperv_lab, repo, "big", options=BackupOptions())
        [disk] = point.disks
        assert disk.mode == ReadMode.INCREMENTAL, disk.reason
        assert (disk.sanity_windows, disk.sanity_bytes) == (DEFAULT_WINDOWS, DEFAULT_WINDOWS * WINDOW)
        assert counter[0] <= 2 * MiB + MiB, counter[0]
        assert restored_bytes(repo, point, tmp_path / "restored") == [frozen.disks[0]]
