"""Restoring vSphere points to the simulator as new VMs, and to files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from pyVmomi import vim

from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim, find_vm, wait_task
from tests.fixtures.vsphere import VM, cli_connection, disk_bytes, run_cli, scribble

MiB = 1 << 20


@pytest.fixture
def backed_up(vcsim: Vcsim, tmp_path: Path) -> tuple[Path, dict[int, bytes], dict]:  # type: ignore[type-arg]
    """A two-disk VM with data, backed up twice; (repo, disk images by unit number, point JSON)."""
    si = vcsim.connect()
    vm = find_vm(si, VM)
    controller = next(d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualSCSIController))
    disk = vim.vm.device.VirtualDisk(
        key=-1,
        controllerKey=controller.key,
        unitNumber=1,
        capacityInKB=5 * 1024 + 12,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent", fileName="[LocalDS_0]"),
    )
    wait_task(
        vm.ReconfigVM_Task(
            spec=vim.vm.ConfigSpec(
                numCPUs=2,
                memoryMB=1536,
                deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=disk)],
            )
        )
    )
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0  # default 1 MiB blocks: disk sizes are not multiples of it
    rng = random.Random(4)
    for _ in range(2):
        for state in vcsim.api.state(VM).disks:
            scribble(vcsim, VM, state.capacity, rng, 6, key=state.key, max_len=300_000)
        result = run_cli(vcsim, "backup", *cli_connection(vcsim), "--vm", VM, "--repo", repo, "--json")
        assert result.code == 0, result.err
    units = {d.key: d.unitNumber for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)}
    images = {units[s.key]: disk_bytes(vcsim, VM, s.capacity, key=s.key) for s in vcsim.api.state(VM).disks}
    first = vcsim.api.state(VM).disks[0]
    scribble(vcsim, VM, first.capacity, rng, 5, key=first.key)  # the VM moves on after its backup
    return repo, images, json.loads(result.out)["points"][0]


def _restore(vc: Vcsim, repo: Path, *extra: str | Path):  # type: ignore[no-untyped-def]
    return run_cli(
        vc,
        "restore",
        "latest",
        "--repo",
        repo,
        "--to-host",
        f"{vc.host}:{vc.port}",
        "--user",
        vc.user,
        "--ca-file",
        str(vc.ca_file),
        "--datastore",
        "LocalDS_0",
        *extra,
    )


def test_restore_to_host_recreates_the_vm_with_identical_disks(vcsim: Vcsim, backed_up, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, images, point = backed_up
    result = _restore(vcsim, repo, "--name", "web-restored", "--power-on", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["vm"] == "web-restored" and doc["powered_on"]
    new = find_vm(vcsim.connect(), "web-restored")
    hw = new.config.hardware
    assert (hw.numCPU, hw.memoryMB) == (2, 1536)
    assert new.runtime.powerState == "poweredOn"
    disks = {d.unitNumber: d for d in hw.device if isinstance(d, vim.vm.device.VirtualDisk)}
    assert {u: d.capacityInBytes for u, d in disks.items()} == {u: len(b) for u, b in images.items()}
    for unit, image in images.items():
        assert disk_bytes(vcsim, "web-restored", len(image), key=disks[unit].key) == image
    # The original VM is untouched and the restored one has its own MAC addresses.
    old_nics = [
        d.macAddress
        for d in find_vm(vcsim.connect(), VM).config.hardware.device
        if isinstance(d, vim.vm.device.VirtualEthernetCard)
    ]
    new_nics = [d.macAddress for d in hw.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    assert len(new_nics) == len(old_nics) and not set(new_nics) & set(old_nics)

    # --to-dir still works for vSphere points, with the same content.
    files = run_vmkeep("restore", point["id"], "--repo", repo, "--to-dir", tmp_path / "files", "--json")
    assert files.code == 0, files.err
    by_key = {d["key"]: Path(d["path"]).read_bytes() for d in json.loads(files.out)["disks"]}
    assert sorted(by_key.values()) == sorted(images.values())


def test_restore_refuses_to_overwrite_an_existing_vm(vcsim: Vcsim, backed_up) -> None:  # type: ignore[no-untyped-def]
    repo, _, _ = backed_up
    assert_one_line_error(_restore(vcsim, repo, "--name", VM), "exists already")
    assert len([v for v in vcsim.api.states() if v.name == VM]) == 1


def test_unknown_network_or_datastore_is_refused_and_leaves_nothing(vcsim: Vcsim, backed_up) -> None:  # type: ignore[no-untyped-def]
    repo, _, _ = backed_up
    before = {v.name for v in vcsim.api.states()}
    [nic] = json.loads(run_vmkeep("points", "--repo", repo, "--json").out)[-1]["hardware"]["nics"]
    assert_one_line_error(
        _restore(vcsim, repo, "--network", f"{nic['network']}=nowhere"), "network 'nowhere' does not exist"
    )
    assert_one_line_error(_restore(vcsim, repo, "--network", "elsewhere=x"), "no NIC on network 'elsewhere'")
    result = run_cli(
        vcsim,
        "restore",
        "latest",
        "--repo",
        repo,
        "--to-host",
        f"{vcsim.host}:{vcsim.port}",
        "--user",
        vcsim.user,
        "--ca-file",
        str(vcsim.ca_file),
        "--datastore",
        "nope",
    )
    assert_one_line_error(result, "no datastore named 'nope'")
    assert {v.name for v in vcsim.api.states()} == before


def test_upload_retries_a_dropped_connection(vcsim: Vcsim, backed_up) -> None:  # type: ignore[no-untyped-def]
    repo, images, _ = backed_up
    vcsim.api.drop_connection("-flat.vmdk", after_bytes=500_000, http_method="PUT", count=1)
    result = _restore(vcsim, repo, "--name", "retried")
    assert result.code == 0, result.err
    new = find_vm(vcsim.connect(), "retried")
    disks = {d.unitNumber: d for d in new.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)}
    for unit, image in images.items():
        assert disk_bytes(vcsim, "retried", len(image), key=disks[unit].key) == image


def test_a_failed_upload_removes_the_half_restored_vm(vcsim: Vcsim, backed_up) -> None:  # type: ignore[no-untyped-def]
    repo, _, _ = backed_up
    vcsim.api.drop_connection("-flat.vmdk", after_bytes=0, http_method="PUT", count=100)
    result = _restore(vcsim, repo, "--name", "doomed")
    assert_one_line_error(result, "gave up after 5 attempts")
    assert "doomed" not in {v.name for v in vcsim.api.states()}


def test_restore_into_a_folder_on_a_chosen_host(vcsim: Vcsim, backed_up) -> None:  # type: ignore[no-untyped-def]
    repo, _, _ = backed_up
    si = vcsim.connect()
    datacenter = si.content.rootFolder.childEntity[0]
    datacenter.vmFolder.CreateFolder("restored").CreateFolder("2026")
    host = find_vm(si, VM).runtime.host.name
    result = _restore(vcsim, repo, "--name", "in-folder", "--folder", "restored/2026", "--esx-host", host)
    assert result.code == 0, result.err
    vm = find_vm(vcsim.connect(), "in-folder")
    assert vm.parent.name == "2026" and vm.parent.parent.name == "restored"
    assert vm.runtime.host.name == host
    assert_one_line_error(_restore(vcsim, repo, "--name", "x", "--folder", "nowhere"), "no VM folder 'nowhere'")
    assert_one_line_error(_restore(vcsim, repo, "--name", "y", "--esx-host", "nohost"), "no host named 'nohost'")
