"""The five ways a point could be committed that cannot be restored, each closed.

1. a handle kept across locks deduplicating against what gc deleted in between;
2. (tests/repository/test_locks.py) a live lock judged stale across PID namespaces;
3. duplicate copies: verify reports the damaged one, restore and gc use the intact one;
4. damaged or missing blocks reused by later backups: verify records them, the next backup
   stores them again (healing older points), repair rebuilds the index;
5. one bad index or point file stopping everything.

Every restore is compared byte for byte with the image as it was backed up.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.fixtures.images import make_image
from tests.fixtures.repos import assert_one_line_error, backed_up, run_vmkeep
from vmkeep.agent.engine.backup import BackupOptions, backup_vm
from vmkeep.hypervisors.image.session import ImageSession
from vmkeep.repository.format import FRAME_HEADER_SIZE, BlobType
from vmkeep.repository.index import BlobLocation
from vmkeep.repository.packs import pack_path
from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.repo import Repository

SIZE = 1_500_000


def _backup(repo: Repository, image: Path, name: str, hints: Path | None = None) -> RecoveryPoint:
    with repo.lock("backup"), ImageSession(image, name, hints) as session:
        return backup_vm(session, repo, BackupOptions(workers=2))


def _restored(repo_path: Path, ref: str, tmp_path: Path) -> bytes:
    out = tmp_path / "restore"
    result = run_vmkeep("restore", ref, "--repo", repo_path, "--to-dir", out, "--json")
    assert result.code == 0, result.err
    [disk] = json.loads(result.out)["disks"]
    data = Path(disk["path"]).read_bytes()
    shutil.rmtree(out)
    return data


def _verify(repo_path: Path) -> tuple[int, str]:
    result = run_vmkeep("verify", "--read-data", "--repo", repo_path)
    return result.code, result.out + result.err


def _data_location(repo: Repository, point: RecoveryPoint) -> BlobLocation:
    """Where a data block of ``point`` lies (the copy a read tries first)."""
    disk = point.disks[0]
    for blob_id in repo.block_ids(bytes.fromhex(disk.tree), disk.capacity):
        loc = repo.index.lookup(blob_id)
        if blob_id != bytes(32) and loc is not None:
            return loc
    raise AssertionError("no stored block")


def _twin(image: Path, tmp_path: Path) -> Path:
    """The same disk with another first block: its packs differ, so shared blocks get a second copy."""
    twin = tmp_path / "twin.img"
    shutil.copyfile(image, twin)
    with twin.open("r+b") as f:
        f.write(b"another first block " * 100)
    return twin


def _duplicated(repo_path: Path, tmp_path: Path, seed: int) -> tuple[RecoveryPoint, bytes]:
    """Two backups holding shared locks at once, each with its index read before the other wrote,
    so the blocks their disks share are stored twice; the point of the second, and its disk."""
    image = make_image(tmp_path / "vm.img", SIZE, seed=seed)
    r1, r2 = Repository.open(repo_path, None), Repository.open(repo_path, None)
    with r1, r2, r1.lock("backup"), r2.lock("backup"):
        assert len(r2.index) == 0  # r2 reads the index now, before r1 writes
        with ImageSession(_twin(image, tmp_path), "twin") as s1:
            backup_vm(s1, r1, BackupOptions(workers=2))
        with ImageSession(image, "vm") as s2:
            point = backup_vm(s2, r2, BackupOptions(workers=2))
    return point, image.read_bytes()


def _flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))


# -- 1 ----------------------------------------------------------------------------------------


def test_a_handle_kept_across_locks_never_deduplicates_against_what_gc_deleted(repo_path: Path, tmp_path: Path) -> None:
    """One process backs up a, releases its lock; a is forgotten and gc'ed; then b (same data)."""
    image = make_image(tmp_path / "a.img", SIZE, seed=11)
    content = image.read_bytes()
    with Repository.open(repo_path, None) as repo:
        point_a = _backup(repo, image, "a")
        assert point_a.disks[0].new_bytes > 0
        # Meanwhile, other processes forget a's point and collect its blocks.
        with Repository.open(repo_path, None) as other, other.lock("forget"):
            other.delete_point(point_a.id)
        gc = run_vmkeep("gc", "--repo", repo_path, "--json")
        assert gc.code == 0, gc.err
        assert json.loads(gc.out)["bytes_after"] == 0  # every block of a is gone
        # The same handle backs up b, whose disk holds exactly those blocks.
        point_b = _backup(repo, image, "b")
    assert point_b.disks[0].new_bytes == point_a.disks[0].new_bytes  # stored again, not "new 0 B"
    assert _verify(repo_path)[0] == 0
    assert _restored(repo_path, "latest:b", tmp_path) == content


# -- 3 ----------------------------------------------------------------------------------------


def test_duplicate_copies_the_damaged_one_is_reported_and_the_intact_one_kept(repo_path: Path, tmp_path: Path) -> None:
    """Two backups holding shared locks at once, each with its index read before the other wrote."""
    point, content = _duplicated(repo_path, tmp_path, seed=12)
    with Repository.open(repo_path, None) as repo:
        disk = point.disks[0]
        shared = [b for b in repo.block_ids(bytes.fromhex(disk.tree), disk.capacity) if len(repo.index.copies(b)) == 2]
        assert shared
        first = repo.index.copies(shared[-1])[0]
    _flip(repo_path / pack_path(first.pack), first.entry.offset + FRAME_HEADER_SIZE + 3)

    code, out = _verify(repo_path)
    assert code == 3, out
    assert "a copy is damaged" in out and "an intact copy is in pack" in out
    assert "damaged recovery points" not in out  # no point is affected
    assert _restored(repo_path, point.id, tmp_path) == content

    gc = run_vmkeep("gc", "--repo", repo_path)
    assert gc.code == 0, gc.err
    assert _verify(repo_path)[0] == 0  # the damaged copy is gone, the intact one kept
    assert _restored(repo_path, point.id, tmp_path) == content


def test_gc_checks_duplicate_copies_even_before_verify_recorded_anything(repo_path: Path, tmp_path: Path) -> None:
    point, content = _duplicated(repo_path, tmp_path, seed=13)
    with Repository.open(repo_path, None) as repo:
        ids = set(repo.block_ids(bytes.fromhex(point.disks[0].tree), SIZE)) - {bytes(32)}
        damaged = [repo.index.copies(b)[0] for b in ids if len(repo.index.copies(b)) == 2]
    assert damaged
    for loc in {(d.pack, d.entry.offset) for d in damaged}:
        _flip(repo_path / pack_path(loc[0]), loc[1] + FRAME_HEADER_SIZE + 1)  # every first copy
    assert run_vmkeep("gc", "--repo", repo_path).code == 0
    assert _verify(repo_path)[0] == 0
    assert _restored(repo_path, point.id, tmp_path) == content


# -- 4 ----------------------------------------------------------------------------------------

DAMAGE = ["pack-byte", "frame-header", "tree-node", "truncated-pack", "deleted-data-pack", "deleted-tree-pack"]


def _damage(repo_path: Path, point: RecoveryPoint, kind: str) -> None:
    with Repository.open(repo_path, None) as repo:
        data = _data_location(repo, point)
        tree = repo.index.lookup(bytes.fromhex(point.disks[0].tree))
        assert tree is not None and tree.entry.blob_type is BlobType.TREE
    data_pack, tree_pack = repo_path / pack_path(data.pack), repo_path / pack_path(tree.pack)
    if kind == "pack-byte":
        _flip(data_pack, data.entry.offset + data.entry.length - 2)
    elif kind == "frame-header":
        _flip(data_pack, data.entry.offset + 20)  # inside the id
    elif kind == "tree-node":
        _flip(tree_pack, tree.entry.offset + FRAME_HEADER_SIZE + 5)
    elif kind == "truncated-pack":
        with data_pack.open("r+b") as f:
            f.truncate(data.entry.offset + data.entry.length // 2)
    elif kind == "deleted-data-pack":
        data_pack.unlink()
    else:
        tree_pack.unlink()


@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("incremental", [False, True], ids=["full-read", "hinted-incremental"])
def test_damage_is_recorded_and_the_next_backup_heals_it(
    repo_path: Path, tmp_path: Path, kind: str, incremental: bool
) -> None:
    image = make_image(tmp_path / "vm.img", SIZE, seed=14)
    content = image.read_bytes()
    assert run_vmkeep("backup-image", image, "--repo", repo_path, "--name", "vm").code == 0
    with Repository.open(repo_path, None) as repo:
        [first] = repo.points()
    _damage(repo_path, first, kind)

    code, out = _verify(repo_path)
    assert code == 3 and first.short_id in out and "recorded the damage" in out, out

    args = ["backup-image", image, "--repo", repo_path, "--name", "vm", "--json"]
    if incremental:  # change hints say nothing changed: the incremental would reuse every reference
        (tmp_path / "none.json").write_text("[]")
        args += ["--hints", tmp_path / "none.json"]
    result = run_vmkeep(*args)
    assert result.code == 0, result.err
    second = backed_up(result)
    assert second["disks"][0]["mode"] == "full"
    assert "damaged" in second["disks"][0]["reason"] or not incremental

    assert _restored(repo_path, second["id"], tmp_path) == content
    assert _restored(repo_path, first.id, tmp_path) == content  # the old point healed too
    repaired = run_vmkeep("repair", "--repo", repo_path, "--json")
    assert repaired.code == 0, repaired.out + repaired.err
    assert json.loads(repaired.out)["complete"] is True
    assert _verify(repo_path)[0] == 0
    assert not list((repo_path / "damage").iterdir())


def test_repair_says_which_points_stay_damaged_until_a_backup_heals_them(repo_path: Path, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.img", SIZE, seed=15)
    b = make_image(tmp_path / "b.img", SIZE, seed=16)
    for image in (a, b):
        assert run_vmkeep("backup-image", image, "--repo", repo_path).code == 0
    with Repository.open(repo_path, None) as repo:
        point_a = repo.find_point("latest:a")
        loc = _data_location(repo, point_a)
    (repo_path / pack_path(loc.pack)).unlink()

    result = run_vmkeep("repair", "--repo", repo_path)
    assert result.code == 3, result.out + result.err
    assert f"recovery point {point_a.short_id} stays damaged" in result.out
    assert "latest:b" not in result.out and _restored(repo_path, "latest:b", tmp_path) == b.read_bytes()
    assert_one_line_error(run_vmkeep("restore", point_a.id, "--repo", repo_path, "--to-dir", tmp_path / "x"))

    # The missing blocks are recorded: even an incremental that hints "no change" reads in full.
    (tmp_path / "none.json").write_text("[]")
    healed = run_vmkeep("backup-image", a, "--repo", repo_path, "--hints", tmp_path / "none.json", "--json")
    assert healed.code == 0, healed.err
    assert backed_up(healed)["disks"][0]["mode"] == "full"
    assert _restored(repo_path, point_a.id, tmp_path) == a.read_bytes()
    assert run_vmkeep("repair", "--repo", repo_path).code == 0
    assert _verify(repo_path)[0] == 0


# -- 5 ----------------------------------------------------------------------------------------


def test_one_damaged_index_file_costs_only_what_it_names(repo_path: Path, tmp_path: Path) -> None:
    images = [tmp_path / f"vm{i}.img" for i in range(4)]
    for image in images:  # random content: no block is shared, so each index file serves one point
        image.write_bytes(os.urandom(SIZE))
    for image in images:
        assert run_vmkeep("backup-image", image, "--repo", repo_path).code == 0
    index_files = sorted((repo_path / "index").iterdir())
    assert len(index_files) == 4
    _flip(index_files[1], 40)

    code, out = _verify(repo_path)
    assert code == 3 and f"index file index/{index_files[1].name} is damaged" in out
    assert "gc removes them" not in out  # its packs are not garbage
    assert_one_line_error(run_vmkeep("gc", "--repo", repo_path), "repair", index_files[1].name)
    restorable = [
        i
        for i in images
        if run_vmkeep("restore", f"latest:{i.stem}", "--repo", repo_path, "--to-dir", tmp_path / f"r-{i.name}").code
        == 0
    ]
    assert len(restorable) == 3  # only the point whose blocks that file named is affected
    again = run_vmkeep("backup-image", images[0], "--repo", repo_path)
    assert again.code == 0, again.err

    repaired = run_vmkeep("repair", "--repo", repo_path)
    assert repaired.code == 0, repaired.out + repaired.err
    assert _verify(repo_path)[0] == 0
    for image in images:
        assert _restored(repo_path, f"latest:{image.stem}", tmp_path) == image.read_bytes()
    assert run_vmkeep("gc", "--repo", repo_path).code == 0


def test_one_damaged_point_file_costs_only_that_point(repo_path: Path, tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.img", SIZE, seed=31)
    b = make_image(tmp_path / "b.img", SIZE, seed=32)
    for image in (a, b):
        assert run_vmkeep("backup-image", image, "--repo", repo_path).code == 0
    with Repository.open(repo_path, None) as repo:
        point_a = repo.find_point("latest:a")
    _flip(repo_path / "points" / point_a.id, 30)

    result = run_vmkeep("backup-image", b, "--repo", repo_path)
    assert result.code == 0, result.err
    assert _restored(repo_path, "latest:b", tmp_path) == b.read_bytes()
    listed = run_vmkeep("points", "--repo", repo_path, "--json")
    assert listed.code == 0 and len(json.loads(listed.out)) == 2
    code, out = _verify(repo_path)
    assert code == 3 and f"recovery point {point_a.short_id} is unreadable" in out
    failed = run_vmkeep("restore", point_a.id, "--repo", repo_path, "--to-dir", tmp_path / "x")
    assert_one_line_error(failed, "corrupt repository", f"points/{point_a.id}")
    assert failed.code == 3
    assert_one_line_error(run_vmkeep("gc", "--repo", repo_path), "unreadable", point_a.short_id)
    # A new backup of a is a full read (its chain's last readable point is gone) and restores.
    again = run_vmkeep("backup-image", a, "--repo", repo_path, "--json")
    assert again.code == 0, again.err
    assert _restored(repo_path, backed_up(again)["id"], tmp_path) == a.read_bytes()
