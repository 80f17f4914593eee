"""A file written piece by piece (``Backend.create``): on disk as it comes, named only when complete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmkeep.repository.backend import LocalBackend

NAME = "data/ab/" + "ab" * 32


def _backend(root: Path, direct: bool) -> LocalBackend:
    (root / "tmp").mkdir(parents=True)
    backend = LocalBackend(root)
    backend._direct = backend._direct and direct  # False: as on a file system refusing O_DIRECT
    return backend


def _tmp_sizes(root: Path) -> list[int]:
    return [f.stat().st_size for f in (root / "tmp").iterdir()]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_a_pending_file_is_written_as_it_comes_and_named_whole(tmp_path: Path, direct: bool) -> None:
    backend = _backend(tmp_path, direct)
    pieces = [os.urandom(n) for n in (3 << 20, 3 << 20, 3 << 20, 4097, 1)]  # past one staging buffer
    pending = backend.create()
    pending.append(pieces[:3])
    # Only a whole staging buffer goes out with O_DIRECT; without it, every byte at once.
    assert _tmp_sizes(tmp_path) == [LocalBackend.STAGE if backend._direct else 9 << 20]
    pending.append(pieces[3:])
    assert not (tmp_path / NAME).exists()
    pending.commit(NAME)
    assert (tmp_path / NAME).read_bytes() == b"".join(pieces)  # the alignment padding cut off
    assert _tmp_sizes(tmp_path) == []
    with pytest.raises(ValueError, match="already committed"):
        pending.append([b"more"])


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "buffered"])
def test_an_aborted_file_leaves_nothing(tmp_path: Path, direct: bool) -> None:
    backend = _backend(tmp_path, direct)
    pending = backend.create()
    pending.append([os.urandom(9 << 20)])
    assert len(_tmp_sizes(tmp_path)) == 1
    pending.abort()
    pending.abort()  # twice is harmless: a writer aborts what a failed commit already removed
    assert _tmp_sizes(tmp_path) == []
    with pytest.raises(ValueError, match="already committed or aborted"):
        pending.commit(NAME)
    assert not (tmp_path / "data").exists()


def test_a_large_write_goes_through_the_same_path_whole(tmp_path: Path) -> None:
    backend = _backend(tmp_path, True)
    data = os.urandom(LocalBackend.STAGE + 12345)
    backend.write(NAME, [data[:100], data[100:]])
    assert (tmp_path / NAME).read_bytes() == data
    assert _tmp_sizes(tmp_path) == []
