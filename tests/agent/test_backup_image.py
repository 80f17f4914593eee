"""Backing up disk images end to end: every point restores byte for byte as it was backed up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import Change, make_image, mutate, write_hints
from tests.fixtures.repos import SMALL_BLOCK, run_vmkeep
from vmkeep.agent.engine.backup import BackupOptions, backup_vm
from vmkeep.agent.engine.restore import restore_point_to_dir
from vmkeep.hypervisors.image.session import ImageSession
from vmkeep.repository.format import BlobType
from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.repo import Repository


def backup(repo: Repository, image: Path, hints: Path | None = None, **options: Any) -> RecoveryPoint:
    with repo.lock("backup"), ImageSession(image, "vm", hints) as session:
        return backup_vm(session, repo, BackupOptions(workers=3, **options))


def restore_bytes(repo: Repository, point_id: str, tmp: Path) -> bytes:
    out = tmp / f"restore-{point_id[:8]}"
    [disk] = restore_point_to_dir(repo, repo.find_point(point_id), out, workers=2)
    data = Path(disk.path).read_bytes()
    shutil.rmtree(out)
    return data


@pytest.mark.parametrize("size", [0, 1, SMALL_BLOCK - 1, SMALL_BLOCK, 5 * SMALL_BLOCK + 12345, 3_000_000])
def test_full_backup_restores_identically_for_any_size(repo: Repository, tmp_path: Path, size: int) -> None:
    image = make_image(tmp_path / "disk.img", size, seed=size)
    point = backup(repo, image)
    assert point.kind == "full"
    assert restore_bytes(repo, point.id, tmp_path) == image.read_bytes()


def test_incremental_chain_every_point_restores_as_it_was(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 4_000_000, seed=7)
    snapshots = [image.read_bytes()]
    points = [backup(repo, image)]
    for round_ in range(6):
        changes = mutate(image, count=5, seed=100 + round_, max_len=40_000)
        hints = write_hints(tmp_path / f"hints{round_}.json", changes)
        point = backup(repo, image, hints)
        snapshots.append(image.read_bytes())
        points.append(point)
        disk = point.disks[0]
        assert disk.mode == "incremental", disk.reason
        touched = {
            b for c in changes for b in range(c.offset // SMALL_BLOCK, (c.offset + c.length - 1) // SMALL_BLOCK + 1)
        }
        assert disk.changed_blocks == len(touched)
        # Reads only the touched blocks, plus the sanity sample of untouched ones.
        sample = disk.read_bytes - sum(min(SMALL_BLOCK, disk.capacity - b * SMALL_BLOCK) for b in touched)
        assert 0 <= sample <= 16 * SMALL_BLOCK  # the default sample: 16 windows of (here) a whole block
    for point, expected in zip(points, snapshots, strict=True):
        assert restore_bytes(repo, point.id, tmp_path) == expected


def test_incremental_costs_one_block_and_one_node_per_tree_level(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 8_000_000, seed=3)
    backup(repo, image)
    with image.open("r+b") as f:  # change 8 bytes inside block 3
        f.seek(3 * SMALL_BLOCK + 10)
        f.write(b"changed!")
    hints = write_hints(tmp_path / "h.json", [Change(3 * SMALL_BLOCK + 10, 8)])
    trees_before = _tree_blobs(repo)
    point = backup(repo, image, hints, sanity_sample=0)
    disk = point.disks[0]
    assert (disk.read_bytes, disk.new_bytes, disk.changed_blocks) == (SMALL_BLOCK, SMALL_BLOCK, 1)
    # The point's metadata is one new leaf plus one new node per level above it, not a new list
    # of all 123 block references: the tree of a 123-block disk with fanout 4 has 4 levels.
    assert repo.geometry(disk.capacity).root_level == 3
    assert _tree_blobs(repo) - trees_before == 4
    assert restore_bytes(repo, point.id, tmp_path) == image.read_bytes()


def _tree_blobs(repo: Repository) -> int:
    return sum(1 for loc in repo.reload_index().locations() if loc.entry.blob_type == BlobType.TREE)


def test_without_hints_the_whole_image_is_read_and_deduplicated(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 2_000_000, seed=5)
    backup(repo, image)
    mutate(image, count=1, seed=9, max_len=1000)
    point = backup(repo, image)
    disk = point.disks[0]
    assert disk.mode == "full" and "no change hints" in disk.reason
    assert disk.read_bytes == 2_000_000
    assert disk.new_bytes <= 2 * SMALL_BLOCK  # the 1000 bytes touch at most two blocks
    assert restore_bytes(repo, point.id, tmp_path) == image.read_bytes()


def test_wrong_hints_are_caught_by_the_sanity_check_and_read_in_full(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 3_000_000, seed=11)
    backup(repo, image)
    changes = mutate(image, count=4, seed=12, max_len=5000)
    lying = write_hints(tmp_path / "h.json", changes[:1])  # the hints forget three changes
    point = backup(repo, image, lying, sanity_sample=10_000)  # sample every unchanged block
    disk = point.disks[0]
    assert disk.mode == "full"
    assert "CBT sanity check" in disk.reason
    assert restore_bytes(repo, point.id, tmp_path) == image.read_bytes()


def test_resized_image_is_read_in_full_and_says_why(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 1_000_000, seed=13)
    backup(repo, image)
    with image.open("ab") as f:
        f.write(b"grown" * 1000)
    hints = write_hints(tmp_path / "h.json", [Change(1_000_000, 5000)])
    point = backup(repo, image, hints)
    disk = point.disks[0]
    assert disk.mode == "full"
    assert "resized from 1000000 to 1005000" in disk.reason
    assert restore_bytes(repo, point.id, tmp_path) == image.read_bytes()


def test_forced_full_reads_everything(repo: Repository, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 1_000_000, seed=14)
    backup(repo, image)
    point = backup(repo, image, write_hints(tmp_path / "h.json", []), full_reason="asked")
    disk = point.disks[0]
    assert (disk.mode, disk.reason, disk.read_bytes, disk.new_bytes) == ("full", "asked", 1_000_000, 0)


def test_encrypted_repository_round_trip_through_the_cli(tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", 1_500_000, seed=15)
    env = {"VMKEEP_PASSPHRASE": "correct horse battery staple"}
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--encrypt", "--block-size", "128K", env=env).code == 0
    assert run_vmkeep("backup-image", image, "--repo", repo, env=env).code == 0
    result = run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", tmp_path / "out", "--json", env=env)
    assert result.code == 0, result.err
    [disk] = json.loads(result.out)["disks"]
    assert Path(disk["path"]).read_bytes() == image.read_bytes()
    # Nothing of the content is visible in clear: text the image holds is in no repository file.
    assert b"quick brown fox" in image.read_bytes()

    for f in repo.rglob("*"):
        if f.is_file() and f.stat().st_size:
            assert b"quick brown fox" not in f.read_bytes(), f


def test_full_read_of_a_sparse_image_skips_its_holes(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "sparse.img"
    with image.open("wb") as f:
        f.truncate(256 * SMALL_BLOCK)
        for offset in (10 * SMALL_BLOCK + 5, 200 * SMALL_BLOCK):
            f.seek(offset)
            f.write(b"data" * 30_000)  # 120,000 bytes: blocks 10-11 and 200-201
    point = backup(repo, image)
    disk = point.disks[0]
    assert disk.mode == "full"
    # The four data blocks, plus the default sample of 16 windows in the holes (they must read as zeros).
    assert disk.changed_blocks == 4
    assert (disk.read_bytes, disk.sanity_windows) == (4 * SMALL_BLOCK + 16 * SMALL_BLOCK, 16)
    assert restore_bytes(repo, point.id, tmp_path) == image.read_bytes()


def test_two_images_of_one_name_keep_two_chains(repo: Repository, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.img", 1_000_000, seed=21)
    b = make_image(tmp_path / "b.img", 1_000_000, seed=22)
    backup(repo, a)
    backup(repo, b)  # same VM name "vm", another image: its own full
    hints = write_hints(tmp_path / "h.json", mutate(a, 1, seed=23, max_len=1000))
    point = backup(repo, a, hints)
    assert point.disks[0].mode == "incremental"  # based on a's point, not on b's newer one
    assert restore_bytes(repo, point.id, tmp_path) == a.read_bytes()
