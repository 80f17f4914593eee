"""Disks are shown by label and restored files named after it; the sanity sample is shown apart."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from tests.fixtures.images import make_image, mutate, write_hints
from tests.fixtures.repos import backed_up, run_vmkeep
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import VM, cli_connection, disk_bytes, run_cli
from vmkeep.agent.engine.restore import restored_file_names
from vmkeep.repository.points import DiskRecord, RecoveryPoint

TREE = "00" * 32
BLOCK = 64 * 1024


def _point(*disks: tuple[str, str]) -> RecoveryPoint:
    records = [DiskRecord(key=key, capacity=BLOCK, tree=TREE, label=label) for key, label in disks]
    return RecoveryPoint(vm="web01", time=datetime.now(UTC), disks=records, block_size=BLOCK)


def test_restored_files_are_named_after_the_labels() -> None:
    point = _point(("2000", "Hard disk 1"), ("2001", "Hard disk 2"))
    assert restored_file_names(point) == ["web01-hard-disk-1.img", "web01-hard-disk-2.img"]


def test_without_labels_or_with_clashing_ones_the_keys_name_the_files() -> None:
    assert restored_file_names(_point(("disk0", ""))) == ["web01-disk0.img"]
    clash = _point(("2000", "Hard disk 1"), ("2001", "hard-disk 1"))
    assert restored_file_names(clash) == ["web01-2000.img", "web01-2001.img"]


def test_vsphere_disks_are_shown_by_label_and_the_key_stays_in_json(vcsim: Vcsim, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    [disk] = vcsim.api.state(VM).disks
    backup = run_cli(vcsim, "backup", *cli_connection(vcsim), "--vm", VM, "--repo", repo)
    assert backup.code == 0, backup.err
    [point] = json.loads(run_vmkeep("points", "--repo", repo, "--json").out)
    [record] = point["disks"]
    assert record["key"] == str(disk.key)
    label = record["label"]
    assert label and label != str(disk.key)
    assert f"\n  {label}: " in backup.out and f"disk {disk.key}" not in backup.out
    inventory = run_cli(vcsim, "vms", *cli_connection(vcsim), "--json")
    [vm] = [v for v in json.loads(inventory.out) if v["name"] == VM]
    [listed] = vm["disks"]
    assert (listed["key"], listed["label"]) == (record["key"], label)  # one key type in every --json

    restored = run_vmkeep("restore", f"latest:{VM}", "--repo", repo, "--to-dir", tmp_path / "out")
    assert restored.code == 0, restored.err
    slug = "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())
    target = tmp_path / "out" / f"{VM}-{slug}.img"
    assert f"restored {VM} {label} " in restored.out and str(target) in restored.out
    assert target.read_bytes() == disk_bytes(vcsim, VM, disk.capacity)
    host = ["--to-host", f"{vcsim.host}:{vcsim.port}", "--user", vcsim.user, "--ca-file", str(vcsim.ca_file)]
    to_host = run_cli(vcsim, "restore", f"latest:{VM}", "--repo", repo, *host, "--datastore", "LocalDS_0")
    assert to_host.code == 0, to_host.err
    assert f"\n  {label}: " in to_host.out and f"disk {disk.key}" not in to_host.out


def test_the_sanity_sample_is_shown_apart_from_what_was_read(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    image = make_image(tmp_path / "web01.img", 64 * BLOCK, seed=3)
    full = run_vmkeep("backup-image", image, "--name", "web01", "--repo", repo, "--json")
    [first] = backed_up(full)["disks"]
    # A full read of a sparse image reads what is allocated, plus a sample of the holes (must be zeros).
    assert first["read_bytes"] == first["changed_blocks"] * BLOCK + first["sanity_bytes"]
    hints = write_hints(tmp_path / "hints.json", mutate(image, 2, seed=4, max_len=1000))
    args = ("backup-image", image, "--name", "web01", "--repo", repo, "--hints", hints)
    incremental = run_vmkeep(*args, "--json")
    [second] = backed_up(incremental)["disks"]
    assert second["mode"] == "incremental"
    # The default sample: 16 windows, one per unchanged block, each a whole 64 KiB block here.
    assert (second["sanity_bytes"], second["sanity_windows"]) == (16 * BLOCK, 16)
    assert second["read_bytes"] == second["changed_blocks"] * BLOCK + second["sanity_bytes"]
    text = run_vmkeep(*args)
    assert text.code == 0, text.err
    changed = second["changed_blocks"] * 64
    assert f"read {changed}.0 KiB + 1.0 MiB sanity check (16 windows)" in text.out
