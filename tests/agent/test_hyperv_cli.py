"""The vSphere verbs against the simulated Hyper-V host: vms, backup and restore --to-hyperv, as a real process."""

from __future__ import annotations

import json
from pathlib import Path

from vmkeep.repository.repo import Repository

from ..fixtures.hyperv import HypervAccount
from ..fixtures.hyperv_backup import MiB, random_writes
from ..fixtures.hyperv_lab import HypervLab
from ..fixtures.repos import assert_one_line_error, backed_up, run_vmkeep

VM = "web01"


def _host_options(lab: HypervLab, account: HypervAccount, flag: str = "--hyperv") -> list[str]:
    return [
        flag,
        lab.wsman.endpoint,
        "--user",
        account.qualified,
        "--smb-share",
        lab.share_option,
        "--smb-port",
        str(lab.samba.port),
    ]


def test_vms_backup_and_restore_through_the_cli(
    hyperv_lab: HypervLab, hyperv_account: HypervAccount, repo_path: Path, tmp_path: Path
) -> None:
    host = hyperv_lab.host
    host.create_vm(VM, (8 * MiB,), cpu=2, memory_mb=2048)
    random_writes(host, VM, 8, seed=21)
    env = {"VMKEEP_PASSWORD": hyperv_account.password}
    options = _host_options(hyperv_lab, hyperv_account)

    listed = run_vmkeep("vms", *options, "--json", env=env)
    table = run_vmkeep("vms", *options, env=env)
    assert table.out.splitlines()[0].split()[:3] == ["VM", "POWER", "RCT"], table.out  # not vSphere's "CBT"
    assert listed.code == 0, listed.err
    [vm] = json.loads(listed.out)
    assert (vm["name"], vm["tracking"], vm["generation"]) == (VM, "on", 2)

    first = backed_up(run_vmkeep("backup", *options, "--vm", VM, "--repo", repo_path, "--json", env=env))
    random_writes(host, VM, 2, seed=22)
    host.create_vm("db01", (4 * MiB,), cpu=1, memory_mb=1024)
    random_writes(host, "db01", 4, seed=23)
    # Two VMs in one command run at once, each task logged in on its own.
    both = run_vmkeep("backup", *options, "--vm", VM, "--vm", "db01", "--repo", repo_path, "--json", env=env)
    assert both.code == 0, both.err
    second, other = json.loads(both.out)["points"]
    assert (first["kind"], second["kind"], other["kind"]) == ("full", "incremental", "full")
    assert (second["vm"], other["vm"]) == (VM, "db01")
    db01 = run_vmkeep("restore", "latest:db01", "--repo", repo_path, "--to-dir", tmp_path / "db01", env=env)
    assert db01.code == 0, db01.err
    [db01_image] = (tmp_path / "db01").iterdir()
    assert db01_image.read_bytes() == host.guest_view("db01")

    restored = run_vmkeep(
        "restore",
        "latest:" + VM,
        "--repo",
        repo_path,
        *_host_options(hyperv_lab, hyperv_account, "--to-hyperv"),
        "--name",
        "web01-copy",
        "--json",
        env=env,
    )
    assert restored.code == 0, restored.err
    doc = json.loads(restored.out)
    assert doc["vm"] == "web01-copy" and doc["id"] == host.vms["web01-copy"].id
    to_dir = run_vmkeep("restore", "latest:" + VM, "--repo", repo_path, "--to-dir", tmp_path / "out", env=env)
    assert to_dir.code == 0, to_dir.err
    with Repository.open(repo_path, None) as repo:
        point = repo.find_point("latest:" + VM)
    [image] = (tmp_path / "out").iterdir()
    assert image.read_bytes() == host.guest_view("web01-copy")
    assert point.source["type"] == "hyperv"


def test_verify_against_the_vm_reads_a_checkpoint_and_finds_what_the_guest_wrote_since(
    hyperv_lab: HypervLab, hyperv_account: HypervAccount, repo_path: Path
) -> None:
    host = hyperv_lab.host
    host.create_vm(VM, (4 * MiB,))
    random_writes(host, VM, 6, seed=31)
    env = {"VMKEEP_PASSWORD": hyperv_account.password}
    options = _host_options(hyperv_lab, hyperv_account)
    point = backed_up(run_vmkeep("backup", *options, "--vm", VM, "--repo", repo_path, "--json", env=env))

    same = run_vmkeep("verify", "--repo", repo_path, "--against-vm", VM, *options, "--json", env=env)
    assert same.code == 0, same.err
    doc = json.loads(same.out)
    assert doc["identical"] is True and doc["point"] == point["id"]
    assert doc["disks"][0]["bytes_read"] == 4 * MiB
    assert host.checkpoints(VM) == []

    host.guest_write(VM, 3 * MiB + 512, b"written after the backup")
    moved = run_vmkeep("verify", "--repo", repo_path, "--against-vm", VM, *options, "--json", env=env)
    assert moved.code == 3, moved.err
    [disk] = json.loads(moved.out)["disks"]
    assert disk["differing_blocks"] == 1 and disk["first_differences"] == [3 * MiB]
    assert host.checkpoints(VM) == []


def test_cli_errors_are_one_line(hyperv_lab: HypervLab, hyperv_account: HypervAccount, repo_path: Path) -> None:
    hyperv_lab.host.create_vm(VM, (4 * MiB,))
    options = _host_options(hyperv_lab, hyperv_account)
    wrong = run_vmkeep("vms", *options, env={"VMKEEP_PASSWORD": "wrong"})
    assert_one_line_error(wrong, "refused the user")
    assert "wrong" not in wrong.err.replace("wrong user name", "")
    env = {"VMKEEP_PASSWORD": hyperv_account.password}
    missing = run_vmkeep("backup", *options, "--vm", "nope", "--repo", repo_path, env=env)
    assert_one_line_error(missing, "no VM named 'nope'")
    bad_share = run_vmkeep("vms", *options, "--smb-share", "nonsense", env=env)
    assert_one_line_error(bad_share, "--smb-share takes PREFIX=SHARE")
    tls_on_http = run_vmkeep("vms", *options, "--insecure", env=env)
    assert_one_line_error(tls_on_http, "NTLM message encryption protects the traffic")


def test_a_host_with_a_port_is_reached_there_and_a_bad_address_is_one_line() -> None:
    # HOST:PORT once became 'http://HOST:PORT:5985/wsman' and an unexpected ValueError.
    env = {"VMKEEP_PASSWORD": "not-used"}
    unreachable = run_vmkeep("vms", "--hyperv", "127.0.0.1:1", "--user", "admin", env=env)
    assert_one_line_error(unreachable, "127.0.0.1:1")
    assert "unexpected" not in unreachable.err
    bad = run_vmkeep("vms", "--hyperv", "hv1:port", "--user", "admin", env=env)
    assert_one_line_error(bad, "not a Hyper-V host name or WinRM URL")
    assert bad.code == 2
