"""The sanity checks sample small windows: an incremental reads its changed blocks plus at most 1 MiB.

Source reads are counted where the source serves them: for an image, every byte the engine asks
the image session for; for vSphere, every body byte the simulator's ``/folder`` sends.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.fixtures.images import Change, write_hints
from tests.fixtures.repos import backed_up, run_vmkeep
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import VM, back_up, connect, disk_bytes, restored_disks, scribble
from vmkeep.agent.engine.backup import BackupOptions, backup_vm
from vmkeep.agent.engine.plan import complement, extents_to_runs
from vmkeep.agent.engine.restore import restore_point_to_dir
from vmkeep.agent.engine.sanity import DEFAULT_WINDOWS, WINDOW, Window, sample_windows
from vmkeep.hypervisors.base import DiskInfo, Extent
from vmkeep.hypervisors.image.session import ImageSession
from vmkeep.repository.config import RepoConfig
from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.repo import Repository

MiB = 1 << 20
SEED = 7


class CountingImageSession(ImageSession):
    """The real image session; it only adds up the bytes the engine reads from the source."""

    read_bytes = 0

    def read(self, disk: DiskInfo, offset: int, length: int) -> bytes:
        data = super().read(disk, offset, length)
        self.read_bytes += len(data)
        return data


class HidingImageSession(CountingImageSession):
    """An allocation map that leaves out data: a fault a real file system cannot produce (it
    reports every extent it holds), so this session hides the extents at ``hidden`` from it."""

    hidden: ClassVar[tuple[Extent, ...]] = ()

    def allocated(self, disk: DiskInfo) -> list[Extent] | None:
        extents = super().allocated(disk) or []
        return [e for e in extents if not any(h.offset < e.end and e.offset < h.end for h in self.hidden)]


@pytest.fixture
def mib_repo(tmp_path: Path) -> Iterator[Repository]:
    """1 MiB blocks (the default), so that a 64 KiB window is a sixteenth of a block."""
    path = tmp_path / "repo"
    Repository.init(path, RepoConfig.new(block_size=MiB, tree_fanout=16), None).close()
    with Repository.open(path, None) as repo:
        yield repo


def _image(path: Path, size: int, seed: int) -> Path:
    """Random data in every block, so that any window of any block differs if it is rewritten."""
    rng = random.Random(seed)
    with path.open("wb") as f:
        for _ in range(size // MiB):
            f.write(rng.randbytes(MiB))
    return path


def _write(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _backup(
    repo: Repository, image: Path, hints: Path | None = None, session_class: type[ImageSession] = CountingImageSession
) -> tuple[RecoveryPoint, int]:
    with repo.lock("backup"), session_class(image, "vm", hints) as session:
        point = backup_vm(session, repo, BackupOptions(workers=3, sanity_seed=SEED))
        return point, getattr(session, "read_bytes", 0)


def _restored(repo: Repository, point: RecoveryPoint, tmp: Path) -> bytes:
    [disk] = restore_point_to_dir(repo, point, tmp / f"restore-{point.id[:8]}", workers=2)
    return Path(disk.path).read_bytes()


def _windows_for(changes: list[Change], capacity: int, block_size: int = MiB) -> list[Window]:
    """The windows the engine samples for these hints under SEED (the same function, the same seed)."""
    runs = extents_to_runs([Extent(c.offset, c.length) for c in changes], block_size)
    unchanged = complement(runs, -(-capacity // block_size))
    return sample_windows(unchanged, DEFAULT_WINDOWS, block_size, capacity, random.Random(SEED))


def test_the_default_sample_is_16_windows_in_distinct_blocks_for_any_disk_up_to_2_tib() -> None:
    for capacity in (20 * MiB, 64 << 30, 2 << 40):
        blocks = capacity // MiB
        unchanged = [range(0, 5), range(9, blocks)]
        windows = sample_windows(unchanged, DEFAULT_WINDOWS, MiB, capacity, random.Random())
        assert len(windows) == DEFAULT_WINDOWS and sum(w.length for w in windows) == MiB
        assert len({w.block for w in windows}) == DEFAULT_WINDOWS  # 16 distinct blocks (8 before)
        for w in windows:
            assert w.block in unchanged[0] or w.block in unchanged[1]
            assert w.offset % WINDOW == 0 and w.block * MiB <= w.offset < (w.block + 1) * MiB
        # A quarter look at the start of the first unchanged blocks (partition table, superblocks).
        assert [w.offset for w in windows[:4]] == [0, MiB, 2 * MiB, 3 * MiB]


def test_a_seeded_sample_is_reproducible_and_a_large_one_covers_every_window() -> None:
    runs = [range(3, 40)]
    first = sample_windows(runs, 16, MiB, 40 * MiB, random.Random(1))
    assert first == sample_windows(runs, 16, MiB, 40 * MiB, random.Random(1))
    every = sample_windows(runs, 10_000, MiB, 40 * MiB - 1000, random.Random(1))
    assert len(every) == 37 * 16 and every[-1].length == WINDOW - 1000  # the disk's short end
    assert sample_windows(runs, 0, MiB, 40 * MiB, random.Random(1)) == []


def test_image_incremental_reads_the_changed_blocks_plus_at_most_1_mib(mib_repo: Repository, tmp_path: Path) -> None:
    image = _image(tmp_path / "disk.img", 256 * MiB, seed=1)
    _full, full_reads = _backup(mib_repo, image)
    assert full_reads == 256 * MiB  # no holes: no zeros sample either
    changes = [Change(b * MiB + 128 * 1024, 64 * 1024) for b in (17, 100, 201)]  # 64 KiB in 3 blocks
    for c in changes:
        _write(image, c.offset, random.randbytes(c.length))
    point, reads = _backup(mib_repo, image, write_hints(tmp_path / "h.json", changes))
    disk = point.disks[0]
    assert disk.mode == "incremental", disk.reason
    assert reads <= 3 * MiB + MiB
    assert reads == disk.read_bytes == 3 * MiB + disk.sanity_bytes
    assert (disk.sanity_windows, disk.sanity_bytes) == (DEFAULT_WINDOWS, DEFAULT_WINDOWS * WINDOW)
    assert _restored(mib_repo, point, tmp_path) == image.read_bytes()


def test_a_missed_write_inside_a_sampled_window_is_caught(mib_repo: Repository, tmp_path: Path) -> None:
    image = _image(tmp_path / "disk.img", 64 * MiB, seed=2)
    _backup(mib_repo, image)
    hinted = [Change(5 * MiB, 4096)]
    _write(image, 5 * MiB, b"hinted" * 100)
    window = _windows_for(hinted, 64 * MiB)[-1]  # a random one, not at the start of the disk
    _write(image, window.offset + window.length - 10, b"missed")  # the hints do not name this write
    point, reads = _backup(mib_repo, image, write_hints(tmp_path / "h.json", hinted))
    disk = point.disks[0]
    assert disk.mode == "full" and "CBT sanity check" in (disk.reason or "")
    assert f"block {window.block} unchanged" in (disk.reason or "")
    assert _restored(mib_repo, point, tmp_path) == image.read_bytes()  # read in full: nothing lost
    # The record counts every byte read, the check's windows included (the check stops at the
    # first mismatch), and every block once.
    assert disk.changed_blocks == 64 and 1 <= disk.sanity_windows <= DEFAULT_WINDOWS
    assert disk.read_bytes == reads == disk.sanity_bytes + 64 * MiB
    assert disk.sanity_bytes == disk.sanity_windows * WINDOW


def test_a_missed_write_outside_every_window_is_not_claimed_to_be_caught(mib_repo: Repository, tmp_path: Path) -> None:
    """A sample proves nothing about the bytes it did not read: the point is incremental, and wrong."""
    image = _image(tmp_path / "disk.img", 64 * MiB, seed=3)
    _backup(mib_repo, image)
    hinted = [Change(5 * MiB, 4096)]
    _write(image, 5 * MiB, b"hinted" * 100)
    window = _windows_for(hinted, 64 * MiB)[-1]
    # Same sampled block, but the 64 KiB next to its window (or before it, at the block's end).
    inside = window.offset - window.block * MiB
    missed = window.offset + (WINDOW if inside + 2 * WINDOW <= MiB else -WINDOW)
    _write(image, missed, b"missed")
    point, _reads = _backup(mib_repo, image, write_hints(tmp_path / "h.json", hinted))
    disk = point.disks[0]
    assert disk.mode == "incremental" and disk.sanity_windows == DEFAULT_WINDOWS
    restored, source = _restored(mib_repo, point, tmp_path), image.read_bytes()
    differing = [b for b in range(64) if restored[b * MiB : (b + 1) * MiB] != source[b * MiB : (b + 1) * MiB]]
    assert differing == [window.block]  # the missed write, carried forward until an active full


def test_a_full_read_checks_windows_of_what_the_allocation_map_calls_unused(
    mib_repo: Repository, tmp_path: Path
) -> None:
    image = tmp_path / "sparse.img"
    with image.open("wb") as f:
        f.truncate(512 * MiB)
    _write(image, 3 * MiB, b"allocated" * 1000)
    point, reads = _backup(mib_repo, image)
    disk = point.disks[0]
    assert disk.mode == "full" and reads == MiB + DEFAULT_WINDOWS * WINDOW  # one block and the zeros sample
    assert disk.sanity_windows == DEFAULT_WINDOWS

    second = tmp_path / "second.img"
    with second.open("wb") as f:
        f.truncate(64 * MiB)
    _write(second, 3 * MiB, b"allocated" * 1000)
    unused = complement(extents_to_runs([Extent(3 * MiB, 9000)], MiB), 64)
    window = sample_windows(unused, DEFAULT_WINDOWS, MiB, 64 * MiB, random.Random(SEED))[-1]
    _write(second, window.offset + 100, b"the map says this is a hole")
    HidingImageSession.hidden = (Extent(window.offset, 100 + 27),)
    point, reads = _backup(mib_repo, second, session_class=HidingImageSession)
    disk = point.disks[0]
    assert disk.mode == "full" and disk.changed_blocks == 64  # every block read after the mismatch
    assert _restored(mib_repo, point, tmp_path) == second.read_bytes()


def test_vsphere_incremental_reads_the_changed_blocks_plus_at_most_1_mib(vcsim_factory: object, tmp_path: Path) -> None:
    vcsim: Vcsim = vcsim_factory(disk_mb=128)  # type: ignore[operator]
    path = tmp_path / "repo"
    Repository.init(path, RepoConfig.new(block_size=MiB, tree_fanout=16), None).close()
    capacity = vcsim.api.state(VM).disks[0].capacity
    scribble(vcsim, VM, capacity, random.Random(4), 40)
    with Repository.open(path, None) as repo, connect(vcsim) as conn:
        back_up(conn, repo)
        writes = [(b * MiB + 256 * 1024, 64 * 1024) for b in (10, 70)]  # two 64 KiB guest writes
        for offset, length in writes:
            vcsim.api.write(VM, offset, random.randbytes(length))
        before = vcsim.api.folder_bytes_served()
        point = back_up(conn, repo)
        served = vcsim.api.folder_bytes_served() - before
        disk = point.disks[0]
        assert disk.mode == "incremental", disk.reason
        assert served <= 2 * MiB + MiB
        assert served == disk.read_bytes == 2 * MiB + DEFAULT_WINDOWS * WINDOW
        expected = disk_bytes(vcsim, VM, capacity)
        assert restored_disks(repo, point, tmp_path) == {disk.key: expected}


def test_the_cli_sets_the_sample_and_still_takes_the_old_option(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    image = _image(tmp_path / "web01.img", 8 * MiB, seed=5)
    assert run_vmkeep("backup-image", image, "--repo", repo).code == 0
    hints = write_hints(tmp_path / "h.json", [Change(MiB, 10)])
    args = ("backup-image", image, "--repo", repo, "--hints", hints, "--json")
    [disk] = backed_up(run_vmkeep(*args, "--sanity-sample", "3"))["disks"]
    assert (disk["sanity_windows"], disk["sanity_bytes"], disk["read_bytes"]) == (3, 3 * WINDOW, MiB + 3 * WINDOW)
    old = run_vmkeep(*args, "--sanity-blocks", "0")
    [disk] = backed_up(old)["disks"]
    assert (disk["sanity_windows"], disk["read_bytes"]) == (0, MiB)
    assert "--sanity-blocks is deprecated: use --sanity-sample" in old.err
    bad = run_vmkeep(*args, "--sanity-sample", "-1")
    assert bad.code == 2 and "argument --sanity-sample: must be a whole number of at least 0" in bad.err
