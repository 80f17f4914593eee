"""A full file system under the repository: a clear error, and nothing already stored is damaged.

The repository lives on a real tmpfs of a few MiB, so the backup meets a real ENOSPC.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.images import make_image
from tests.fixtures.repos import assert_one_line_error, run_vmkeep


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_backup_onto_a_full_disk_fails_cleanly(small_fs: Path, tmp_path: Path) -> None:
    repo = small_fs / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K", "--pack-size", "1M").code == 0
    small = make_image(tmp_path / "small.img", 1_000_000, seed=1)
    first = run_vmkeep("backup-image", small, "--repo", repo, "--json")
    assert first.code == 0, first.err
    first_id = json.loads(first.out)["id"]

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


def test_restore_onto_a_file_system_without_direct_io(small_fs: Path, tmp_path: Path) -> None:
    """tmpfs refuses O_DIRECT: the restore falls back to writing through the page cache."""
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    image = make_image(tmp_path / "odd.img", 1_000_003, seed=5)  # a short last block too
    assert run_vmkeep("backup-image", image, "--repo", repo).code == 0
    restored = run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", small_fs / "out", "--json")
    assert restored.code == 0, restored.err
    assert Path(json.loads(restored.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()
