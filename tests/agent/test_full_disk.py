"""A full file system under the repository: a clear error, and nothing already stored is damaged.

The repository lives on a real tmpfs of a few MiB, so the backup meets a real ENOSPC.
"""

from __future__ import annotations

import errno
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.filesystems import mounted_tmpfs
from tests.fixtures.images import make_image
from tests.fixtures.repos import assert_one_line_error, backed_up, run_vmkeep


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "8m") as mount:
        yield mount


def test_backup_onto_a_full_disk_fails_cleanly(small_fs: Path, tmp_path: Path) -> None:
    repo = small_fs / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K", "--pack-size", "1M").code == 0
    small = make_image(tmp_path / "small.img", 1_000_000, seed=1)
    first = run_vmkeep("backup-image", small, "--repo", repo, "--json")
    assert first.code == 0, first.err
    first_id = backed_up(first)["id"]

    big = tmp_path / "big.img"
    big.write_bytes(os.urandom(12 * 1024 * 1024))  # random: does not compress, cannot fit
    result = run_vmkeep("backup-image", big, "--repo", repo)
    assert_one_line_error(result, "no space left")

    assert not list((repo / "tmp").iterdir()), "a failed write must not leave its temporary file"
    assert len(json.loads(run_vmkeep("points", "--repo", repo, "--json").out)) == 1
    check = run_vmkeep("verify", "--repo", repo, "--read-data")
    assert check.code == 0, check.out
    restored = run_vmkeep("restore", first_id, "--repo", repo, "--to-dir", tmp_path / "out", "--json")
    assert restored.code == 0, restored.err
    assert Path(json.loads(restored.out)["disks"][0]["path"]).read_bytes() == small.read_bytes()

    # gc reclaims what the failed backup wrote; then a backup that fits works again.
    assert run_vmkeep("gc", "--repo", repo).code == 0
    small.write_bytes(small.read_bytes()[::-1])
    assert run_vmkeep("backup-image", small, "--repo", repo).code == 0


def test_restore_onto_another_file_system(small_fs: Path, tmp_path: Path) -> None:
    """A restore onto tmpfs (no O_DIRECT there, no write-back to start), with a short last block."""
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    image = make_image(tmp_path / "odd.img", 1_000_003, seed=5)  # a short last block too
    assert run_vmkeep("backup-image", image, "--repo", repo).code == 0
    restored = run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", small_fs / "out", "--json")
    assert restored.code == 0, restored.err
    assert Path(json.loads(restored.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()


def test_restore_onto_a_full_file_system_fails_cleanly(small_fs: Path, tmp_path: Path) -> None:
    """The workers meet ENOSPC writing the disk: one error line, and no partial file is left."""
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    image = make_image(tmp_path / "big.img", 12 * 1024 * 1024, seed=6)  # more than the 8 MiB file system
    assert run_vmkeep("backup-image", image, "--repo", repo).code == 0
    out = small_fs / "out"
    restored = run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", out)
    assert_one_line_error(restored, "writing ", "No space left on device")
    assert restored.code == 1
    assert list(out.iterdir()) == []
    again = run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", tmp_path / "out", "--json")
    assert Path(json.loads(again.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()


def _fill(fs: Path) -> Path:
    """Fill the file system to the last page with a file outside the repository."""
    filler = fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1024 * 1024, 64 * 1024, 4096, 512, 1):
            chunk = os.urandom(size)
            try:
                while True:
                    os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (fs / "one-more-byte").write_bytes(b"x")
    assert full.value.errno == errno.ENOSPC
    return filler


def _rewrite_every_third_block(image: Path, seed: int) -> None:
    rng = random.Random(seed)
    with image.open("r+b") as f:
        for offset in range(0, image.stat().st_size, 3 * 64 * 1024):
            f.seek(offset)
            f.write(rng.randbytes(64 * 1024))


def test_forget_and_gc_work_on_a_full_file_system(small_fs: Path, tmp_path: Path) -> None:
    """With no byte free, forget and gc still run: they delete the space reserve to take their lock.

    gc writes its new index in the room the reserve left, and cannot write repacked packs there:
    it skips the repack, says so, and still deletes the packs no point uses. Once space is free
    again, the next gc repacks.
    """
    repo = small_fs / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K", "--pack-size", "1M").code == 0
    assert (repo / "reserve").stat().st_size == 1024 * 1024
    image = tmp_path / "vm.img"
    image.write_bytes(random.Random(1).randbytes(40 * 64 * 1024))  # random: every block stays its size
    for n in range(3):  # a full, then twice the same third of the blocks rewritten
        if n:
            _rewrite_every_third_block(image, seed=100 + n)
        assert run_vmkeep("backup-image", image, "--repo", repo, "--name", "vm").code == 0
    filler = _fill(small_fs)

    assert_one_line_error(run_vmkeep("backup-image", image, "--repo", repo), "no space left")
    forget = run_vmkeep("forget", "--keep-last", "1", "--repo", repo)
    assert forget.code == 0, forget.err
    assert "deleted its space reserve" in forget.err
    assert "removed 2 of 3" in forget.out

    gc = run_vmkeep("gc", "--repo", repo, "--json")
    assert gc.code == 0, gc.err
    report = json.loads(gc.out)
    assert report["repack_skipped"] and report["planned"]["packs_repacked"] > 0
    assert report["packs_deleted"] > 0 and report["bytes_freed"] > 0
    assert report["unreclaimed"]["reason"] == "no-space"
    assert run_vmkeep("verify", "--repo", repo, "--read-data").code == 0
    restored = run_vmkeep("restore", "latest:vm", "--repo", repo, "--to-dir", tmp_path / "out1", "--json")
    assert restored.code == 0, restored.err
    assert Path(json.loads(restored.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()

    filler.unlink()  # the administrator makes room: now gc repacks, and writes the reserve again
    again = run_vmkeep("gc", "--repo", repo)
    assert again.code == 0, again.err
    assert "repacking skipped" not in again.out and "no unused data stays in any pack" in again.out
    assert (repo / "reserve").stat().st_size == 1024 * 1024
    assert run_vmkeep("verify", "--repo", repo, "--read-data").code == 0
    restored = run_vmkeep("restore", "latest:vm", "--repo", repo, "--to-dir", tmp_path / "out2", "--json")
    assert restored.code == 0, restored.err
    assert Path(json.loads(restored.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()


def test_a_full_file_system_without_a_reserve_is_a_clear_error(small_fs: Path, tmp_path: Path) -> None:
    repo = small_fs / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    assert run_vmkeep("backup-image", make_image(tmp_path / "a.img", 200_000), "--repo", repo).code == 0
    (repo / "reserve").unlink()
    filler = _fill(small_fs)
    result = run_vmkeep("forget", "--keep-last", "1", "--repo", repo)
    assert_one_line_error(result, "no space left", "no space reserve left to delete")
    filler.unlink()
    assert run_vmkeep("forget", "--keep-last", "1", "--repo", repo).code == 0
    assert (repo / "reserve").stat().st_size == 1024 * 1024  # written again once there is room
