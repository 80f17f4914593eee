"""Index files and the compact in-memory index."""

from __future__ import annotations

import os
import random

import pytest

from vmkeep.repository.exceptions import CorruptRepository
from vmkeep.repository.format import BlobType
from vmkeep.repository.index import BlobLocation, BlockIndex, IndexEntry, decode_index, encode_index


def _entries(rng: random.Random, n: int) -> list[IndexEntry]:
    return [
        IndexEntry(
            rng.randbytes(32),
            rng.choice(list(BlobType)),
            rng.randrange(1 << 32),
            rng.randrange(1 << 32),
            rng.randrange(1 << 32),
            rng.randrange(1 << 64),
        )
        for _ in range(n)
    ]


def test_index_file_round_trip() -> None:
    rng = random.Random(1)
    packs = {os.urandom(32).hex(): _entries(rng, n) for n in (0, 1, 500)}
    assert decode_index(encode_index(packs), "t") == packs


def test_truncated_index_payload_is_corruption() -> None:
    payload = encode_index({os.urandom(32).hex(): _entries(random.Random(2), 10)})
    with pytest.raises(CorruptRepository):
        decode_index(payload[:-7], "t")
    with pytest.raises(CorruptRepository):
        decode_index(payload + b"x", "t")


def test_lookup_agrees_with_a_dict() -> None:
    rng = random.Random(3)
    files = [{os.urandom(32).hex(): _entries(rng, 300)} for _ in range(5)]
    index = BlockIndex.build(files)
    oracle = {e.blob_id: (pack, e) for f in files for pack, entries in f.items() for e in entries}
    assert len(index) == len(oracle)
    for blob_id, (pack, entry) in oracle.items():
        assert index.lookup(blob_id) == BlobLocation(pack, entry)
    for _ in range(200):
        assert index.lookup(rng.randbytes(32)) is None
    added = IndexEntry(rng.randbytes(32), BlobType.DATA, 8, 100, 50, 7)
    index.add_file("index/" + "cd" * 32, {"ab" * 32: [added]})
    assert added.blob_id in index and index.lookup(added.blob_id) == BlobLocation("ab" * 32, added)
    assert "index/" + "cd" * 32 in index.files


def test_every_copy_is_found_and_damaged_copies_come_last() -> None:
    rng = random.Random(4)
    blob = rng.randbytes(32)
    first, second = (IndexEntry(blob, BlobType.DATA, off, 100, 50, 7) for off in (8, 108))
    others = _entries(rng, 50)
    index = BlockIndex.build([{"aa" * 32: [first, *others[:25]]}, {"bb" * 32: [second, *others[25:]]}])
    third = IndexEntry(blob, BlobType.DATA, 8, 100, 50, 7)
    index.add_file("index/" + "cd" * 32, {"cc" * 32: [third]})
    copies = index.copies(blob)
    assert {(c.pack, c.entry.offset) for c in copies} == {("aa" * 32, 8), ("bb" * 32, 108), ("cc" * 32, 8)}
    assert len(index) == 53

    bad = copies[0]
    index.mark_bad(bad.pack, bad.entry.offset, "checksum mismatch")
    assert index.has_damage and index.is_bad(bad)
    assert index.copies(blob)[-1] == bad and index.lookup(blob) != bad
    for copy in index.copies(blob)[:-1]:
        index.mark_bad(copy.pack, copy.entry.offset, "pack missing")
    assert index.lookup(blob) is None and blob not in index  # nothing left to deduplicate against
    assert len(index.copies(blob)) == 3  # but every copy can still be tried
