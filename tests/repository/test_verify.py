"""verify finds damage, says which recovery points it breaks, and never mistakes a clean repository."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.images import make_image, mutate, write_hints
from tests.fixtures.repos import run_vmkeep
from vmkeep.repository.format import FRAME_HEADER_SIZE, BlobType, FrameHeader
from vmkeep.repository.packs import PackBuilder, pack_path
from vmkeep.repository.repo import Repository
from vmkeep.repository.verify import verify


def _two_points(repo_path: Path, tmp_path: Path) -> tuple[str, str]:
    image = make_image(tmp_path / "vm.img", 2_000_000, seed=21)
    assert run_vmkeep("backup-image", image, "--repo", repo_path).code == 0
    hints = write_hints(tmp_path / "h.json", mutate(image, 3, seed=22))
    assert run_vmkeep("backup-image", image, "--repo", repo_path, "--hints", hints).code == 0
    with Repository.open(repo_path, None) as repo:
        first, second = (p.id for p in repo.points())
    return first, second


def _data_blob_used_only_by(repo: Repository, point_id: str) -> tuple[str, int]:
    """A (pack, offset) of a data block the given point uses and the other point does not."""
    points = {p.id: p for p in repo.points()}
    mine = set(repo.block_ids(bytes.fromhex(points[point_id].disks[0].tree), points[point_id].disks[0].capacity))
    others = set()
    for pid, p in points.items():
        if pid != point_id:
            others |= set(repo.block_ids(bytes.fromhex(p.disks[0].tree), p.disks[0].capacity))
    for blob_id in sorted(mine - others):
        loc = repo.index.lookup(blob_id)
        if loc is not None and loc.entry.blob_type == BlobType.DATA:
            return loc.pack, loc.entry.offset
    raise AssertionError("no block unique to the point")


def test_clean_repository_verifies(repo_path: Path, tmp_path: Path) -> None:
    _two_points(repo_path, tmp_path)
    with Repository.open(repo_path, None) as repo:
        report = verify(repo, read_data=True)
    assert report.ok, report.errors
    assert report.points == 2 and report.bytes_read > 0


def test_flipped_bit_is_found_by_read_data_and_names_the_point(repo_path: Path, tmp_path: Path) -> None:
    first, second = _two_points(repo_path, tmp_path)
    with Repository.open(repo_path, None) as repo:
        pack, offset = _data_blob_used_only_by(repo, first)
    path = repo_path / pack_path(pack)
    data = bytearray(path.read_bytes())
    data[offset + FRAME_HEADER_SIZE + 5] ^= 0x10
    path.write_bytes(bytes(data))

    structural = run_vmkeep("verify", "--repo", repo_path)
    assert structural.code == 0  # structure is intact: only reading the data can tell
    result = run_vmkeep("verify", "--repo", repo_path, "--read-data")
    assert result.code == 3
    assert "checksum mismatch" in result.out
    assert f"damaged recovery points: {first[:12]}" in result.out
    assert second[:12] not in result.out.split("damaged recovery points:")[1]
    # The damaged point's restore fails loudly instead of writing wrong data; the other restores.
    bad = run_vmkeep("restore", first, "--repo", repo_path, "--to-dir", tmp_path / "bad")
    assert bad.code == 3 and "corrupt repository" in bad.err and "checksum mismatch" in bad.err
    assert run_vmkeep("restore", second, "--repo", repo_path, "--to-dir", tmp_path / "good").code == 0


def test_truncated_pack_is_found_without_reading_data(repo_path: Path, tmp_path: Path) -> None:
    first, _ = _two_points(repo_path, tmp_path)
    with Repository.open(repo_path, None) as repo:
        pack, _offset = _data_blob_used_only_by(repo, first)
    path = repo_path / pack_path(pack)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size - 100)
    result = run_vmkeep("verify", "--repo", repo_path)
    assert result.code == 3
    assert "is truncated" in result.out and first[:12] in result.out


def test_missing_pack_and_corrupt_index(repo_path: Path, tmp_path: Path) -> None:
    _first, second = _two_points(repo_path, tmp_path)
    with Repository.open(repo_path, None) as repo:
        pack, _ = _data_blob_used_only_by(repo, second)
        index_file = repo.index_files()[0]
    (repo_path / pack_path(pack)).unlink()
    result = run_vmkeep("verify", "--repo", repo_path)
    assert result.code == 3 and "is missing" in result.out and second[:12] in result.out

    (repo_path / index_file).write_bytes(b"VMKF" + bytes(40))
    result = run_vmkeep("verify", "--repo", repo_path, "--json")
    assert result.code == 3
    assert index_file in result.out


def test_orphan_pack_is_a_warning_not_an_error(repo_path: Path, tmp_path: Path) -> None:
    _two_points(repo_path, tmp_path)
    with Repository.open(repo_path, None) as repo:
        # A pack no index names, as a crash between writing a pack and its index leaves it.
        data = b"orphan block" * 1000
        frame = repo.codec.encode_frame(BlobType.DATA, repo.codec.blob_id(data), data)
        builder = PackBuilder(1 << 20)
        builder.add(FrameHeader.unpack(frame[:FRAME_HEADER_SIZE], "test"), frame)
        builder.write(repo.backend, builder.take())
        builder.commit()
        report = verify(repo, read_data=True)
    assert report.ok
    assert any("no index names" in w for w in report.warnings)


def test_verify_checks_both_copies_of_the_keys(repo_path: Path) -> None:
    copy = repo_path / "keyscopy"
    content = bytearray(copy.read_bytes())
    content[content.index(b'"id_key"') + 12] ^= 0x01
    copy.write_bytes(bytes(content))
    result = run_vmkeep("verify", "--repo", repo_path)
    assert result.code == 3 and "keyscopy" in result.out and "still opens the repository" in result.out
    copy.unlink()
    result = run_vmkeep("verify", "--repo", repo_path)
    assert result.code == 0 and "no second copy of the keys" in result.out
