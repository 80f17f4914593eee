"""The blob writer writes packs while a job fills them, and leaves nothing of a job that fails."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.fixtures.repos import small_config
from vmkeep.repository.format import BlobType
from vmkeep.repository.packs import SEGMENT, pack_name, pack_path
from vmkeep.repository.repo import Repository
from vmkeep.repository.verify import verify


def _blocks(repo: Repository, count: int, size: int = 1 << 20) -> list[tuple[bytes, bytes]]:
    """(id, frame) of random blocks: they do not compress, so the pack grows by their size."""
    blocks = []
    for _ in range(count):
        data = os.urandom(size)
        blob_id = repo.codec.blob_id(data)
        blocks.append((blob_id, repo.codec.encode_frame(BlobType.DATA, blob_id, data)))
    return blocks


def _on_disk(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def _wait_for(condition: object, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_a_pack_is_on_disk_before_it_is_complete_and_whole_after_flush(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    Repository.init(path, small_config(pack_size=64 << 20), None).close()
    with Repository.open(path, None) as repo, repo.lock("test"):
        writer = repo.writer()
        try:
            blocks = _blocks(repo, 20)  # 20 MiB in one pack of 64 MiB: it never fills
            for _, frame in blocks:
                assert writer.add(frame)
            # Two pieces of 8 MiB are written while the pack is open, with no flush asked.
            assert _wait_for(lambda: _on_disk(path / "tmp") >= 2 * SEGMENT)
            assert not list((path / "data").rglob("*.*")) and _on_disk(path / "data") == 0
            writer.flush()
        finally:
            writer.close()
        [pack] = [f for f in (path / "data").rglob("*") if f.is_file()]
        content = pack.read_bytes()
        assert pack_path(pack_name([content])) == pack.relative_to(path).as_posix()
        assert len(content) == 8 + sum(len(frame) for _, frame in blocks)  # magic, then the frames
        assert all(repo.read_blob(blob_id) for blob_id, _ in blocks[:3])
        assert _on_disk(path / "tmp") == 0
    assert verify(Repository.open(path, None), read_data=True).ok


def test_a_job_that_stops_before_its_flush_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    Repository.init(path, small_config(pack_size=64 << 20), None).close()
    with Repository.open(path, None) as repo, repo.lock("test"):
        writer = repo.writer()
        for _, frame in _blocks(repo, 14):
            writer.add(frame)
        assert _wait_for(lambda: _on_disk(path / "tmp") >= SEGMENT)  # a piece of the open pack
        writer.close()  # as a failed job does: what was added since the last flush is dropped
        assert _on_disk(path / "tmp") == 0
        assert _on_disk(path / "data") == 0 and repo.index_files() == []
