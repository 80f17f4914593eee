"""restore, verify and points with --no-lock, from a real read-only mount and a really full file system.

Root ignores permission bits, so the repository is made read-only by a bind mount remounted
read-only (as root), or by taking write permission away (as any other user, for whom that is real).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.filesystems import mounted_tmpfs
from tests.fixtures.images import make_image
from tests.fixtures.repos import assert_one_line_error, run_vmkeep


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Path, Path]:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K", "--pack-size", "1M").code == 0
    image = make_image(tmp_path / "web01.img", 900_000, seed=5)
    assert run_vmkeep("backup-image", image, "--repo", repo, "-q").code == 0
    return repo, image


@pytest.fixture
def read_only(backed_up: tuple[Path, Path], tmp_path: Path) -> Iterator[Path]:
    """The backed-up repository, seen through a read-only mount (or, for a non-root user, read-only modes)."""
    repo, _image = backed_up
    if os.geteuid() != 0:
        subprocess.run(["chmod", "-R", "a-w", str(repo)], check=True)
        try:
            yield repo
        finally:
            subprocess.run(["chmod", "-R", "u+w", str(repo)], check=True)
        return
    view = tmp_path / "ro"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(repo), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        yield view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_restore_verify_and_points_from_a_read_only_mount(
    read_only: Path, backed_up: tuple[Path, Path], tmp_path: Path
) -> None:
    _repo, image = backed_up
    with pytest.raises(OSError):  # it really is read-only
        (read_only / "locks" / "probe").write_text("x")

    assert_one_line_error(
        run_vmkeep("restore", "latest", "--repo", read_only, "--to-dir", tmp_path / "a"),
        "cannot take a lock: writing locks/",
        "Read-only file system",
        "--no-lock",
    )

    restored = run_vmkeep("restore", "latest", "--repo", read_only, "--to-dir", tmp_path / "b", "--no-lock", "--json")
    assert restored.code == 0, restored.err
    assert Path(json.loads(restored.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()

    checked = run_vmkeep("verify", "--repo", read_only, "--read-data", "--no-lock")
    assert checked.code == 0, checked.out + checked.err
    assert "no errors found" in checked.out
    listed = run_vmkeep("points", "--repo", read_only, "--no-lock", "--json")
    assert listed.code == 0 and len(json.loads(listed.out)) == 1
    compared = run_vmkeep("verify", "--repo", read_only, "--against-source", image, "--no-lock")
    assert compared.code == 0, compared.out + compared.err


def test_exclusive_operations_do_not_take_no_lock(backed_up: tuple[Path, Path]) -> None:
    repo, _image = backed_up
    assert run_vmkeep("gc", "--repo", repo, "--no-lock").code == 2  # not an option of gc


@pytest.fixture
def full_fs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "small", "4m") as mount:
        yield mount


def test_restore_and_verify_from_a_full_file_system(full_fs: Path, tmp_path: Path) -> None:
    repo = full_fs / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K", "--pack-size", "1M").code == 0
    image = make_image(tmp_path / "web01.img", 900_000, seed=6)
    assert run_vmkeep("backup-image", image, "--repo", repo, "-q").code == 0
    with (full_fs / "filler").open("wb", buffering=0) as f:  # fill it to the last byte
        for size in (64 * 1024, 1):
            try:
                while True:
                    f.write(bytes(size))
            except OSError:
                pass
    probe = repo / "locks" / "probe"
    with pytest.raises(OSError):  # it really is full
        probe.write_text("x")
    probe.unlink(missing_ok=True)

    assert_one_line_error(
        run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", tmp_path / "a"), "no space left", "--no-lock"
    )
    restored = run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", tmp_path / "b", "--no-lock", "--json")
    assert restored.code == 0, restored.err
    assert Path(json.loads(restored.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()
    assert run_vmkeep("verify", "--repo", repo, "--read-data", "--no-lock").code == 0
