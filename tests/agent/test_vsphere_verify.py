"""verify --against-vm: a vSphere point compared with its VM, every block, read from a snapshot taken
for the comparison (and removed after it) over the same HTTP transport as a backup."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.images import make_image
from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import VM, blocks_touched, cli_connection, run_cli, scribble

BLOCK = 64 * 1024


def _verify(vc: Vcsim, repo: Path, *extra: str | Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = run_cli(vc, "verify", "--repo", repo, "--against-vm", VM, *cli_connection(vc), "--json", *extra)
    assert result.code in (0, 3), result.err
    return result.code, json.loads(result.out)


def test_a_point_matches_its_vm_until_the_guest_writes_and_then_the_differing_blocks_are_named(
    vcsim: Vcsim, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    disk = vcsim.api.state(VM).disk()
    rng = random.Random(21)
    scribble(vcsim, VM, disk.capacity, rng, 8)
    backup = run_cli(vcsim, "backup", *cli_connection(vcsim), "--vm", VM, "--repo", repo, "--json")
    assert backup.code == 0, backup.err
    point = json.loads(backup.out)["points"][0]["id"]

    code, doc = _verify(vcsim, repo)
    assert code == 0 and doc["identical"] is True and doc["point"] == point and doc["warnings"] == []
    [compared] = doc["disks"]
    assert compared["key"] == str(disk.key) and compared["bytes_read"] == disk.capacity
    assert compared["blocks"] == -(-disk.capacity // BLOCK)
    assert vcsim.api.state(VM).snapshots == ()  # the comparison's snapshot is gone

    writes = scribble(vcsim, VM, disk.capacity, rng, 3, max_len=100_000)
    code, doc = _verify(vcsim, repo)
    assert code == 3 and doc["identical"] is False
    [compared] = doc["disks"]
    touched = sorted(blocks_touched(writes, BLOCK))
    assert compared["differing_blocks"] == len(touched)
    assert compared["first_differences"] == [b * BLOCK for b in touched][:10]
    assert vcsim.api.state(VM).snapshots == ()

    text = run_cli(vcsim, "verify", "--repo", repo, "--against-vm", VM, *cli_connection(vcsim), "--point", point)
    assert text.code == 3
    assert f"{len(touched)} of {compared['blocks']} blocks of 64.0 KiB differ" in text.out


def test_a_point_of_an_image_or_a_host_without_the_vm_option_is_refused_in_one_line(
    vcsim: Vcsim, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    image = make_image(tmp_path / f"{VM}.img", 2_000_000, seed=3)
    assert run_vmkeep("backup-image", image, "--repo", repo).code == 0

    other = run_cli(vcsim, "verify", "--repo", repo, "--against-vm", VM, *cli_connection(vcsim))
    assert_one_line_error(other, "was made from a disk image, not a vSphere VM")
    assert other.code == 2
    assert vcsim.api.state(VM).snapshots == ()

    alone = run_cli(vcsim, "verify", "--repo", repo, *cli_connection(vcsim))
    assert_one_line_error(alone, "--vcenter goes with --against-vm NAME")
    both = run_cli(vcsim, "verify", "--repo", repo, "--against-vm", VM, "--against-source", image)
    assert_one_line_error(both, "compare with one source")
    no_host = run_cli(vcsim, "verify", "--repo", repo, "--against-vm", VM)
    assert_one_line_error(no_host, "--against-vm needs the VM's host")


def test_sigterm_mid_comparison_removes_the_snapshot(vcsim: Vcsim, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    backup = run_cli(vcsim, "backup", *cli_connection(vcsim), "--vm", VM, "--repo", repo)
    assert backup.code == 0, backup.err
    vcsim.api.delay(2.0, path_contains="-flat.vmdk", count=100_000)  # each read of the disk takes 2 s
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")} | {"VMKEEP_PASSWORD": vcsim.password}
    args = ["verify", "--repo", str(repo), "--against-vm", VM, *cli_connection(vcsim)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmkeep.agent.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not vcsim.api.state(VM).snapshots:
        assert proc.poll() is None and time.monotonic() < deadline, "no snapshot appeared"
        time.sleep(0.05)
    time.sleep(0.3)  # reading now
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert (
        err.strip().splitlines()[-1] == "vmkeep: error: interrupted; the job was cleaned up and nothing was committed"
    )
    assert "Traceback" not in err and "identical" not in out
    assert vcsim.api.state(VM).snapshots == ()
