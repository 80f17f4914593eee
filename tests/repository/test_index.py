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
    index.add(BlobLocation("ab" * 32, added))
    assert added.blob_id in index and index.lookup(added.blob_id) == BlobLocation("ab" * 32, added)
