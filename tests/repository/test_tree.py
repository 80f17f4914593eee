"""Block-reference trees: geometry, round trips, sharing between points, zero subtrees."""

from __future__ import annotations

import hashlib
import random

import pytest

from vmkeep.repository.exceptions import CorruptRepository
from vmkeep.repository.tree import (
    ZERO,
    Geometry,
    build_root,
    encode_node,
    iter_block_ids,
    leaf_ids,
    make_node,
    walk_nodes,
)


class Store(dict[bytes, bytes]):
    def put(self, raw: bytes) -> bytes:
        node_id = hashlib.blake2b(raw, digest_size=32).digest()
        self[node_id] = raw
        return node_id


def build(blocks: list[bytes], geometry: Geometry, store: Store) -> bytes:
    f = geometry.fanout
    leaves = [make_node(0, blocks[j * f : (j + 1) * f], store.put) for j in range(geometry.leaves)]
    return build_root(leaves, geometry, store.put)


@pytest.mark.parametrize(
    ("capacity", "block", "fanout", "counts"),
    [
        (0, 4, 4, (0, 1)),
        (1, 4, 4, (1, 1)),
        (16, 4, 4, (4, 1)),
        (17, 4, 4, (5, 2, 1)),
        (64, 4, 4, (16, 4, 1)),
        (65, 4, 4, (17, 5, 2, 1)),
        (1 << 40, 1 << 20, 128, (1 << 20, 8192, 64, 1)),
    ],
)
def test_geometry(capacity: int, block: int, fanout: int, counts: tuple[int, ...]) -> None:
    assert Geometry.of(capacity, block, fanout).counts == counts


@pytest.mark.parametrize("nblocks", [0, 1, 3, 4, 5, 16, 17, 63, 64, 65, 300])
def test_round_trip(nblocks: int) -> None:
    rng = random.Random(nblocks)
    geometry = Geometry.of(nblocks * 10, 10, 4)
    blocks = [ZERO if rng.random() < 0.3 else rng.randbytes(32) for _ in range(nblocks)]
    store = Store()
    root = build(blocks, geometry, store)
    assert list(iter_block_ids(root, geometry, store.__getitem__)) == blocks


def test_all_zero_disk_stores_nothing() -> None:
    geometry = Geometry.of(1000, 10, 4)
    store = Store()
    assert build([ZERO] * geometry.blocks, geometry, store) == ZERO
    assert not store
    assert list(iter_block_ids(ZERO, geometry, store.__getitem__)) == [ZERO] * 100


def test_changing_one_block_adds_one_node_per_level() -> None:
    rng = random.Random(1)
    geometry = Geometry.of(256 * 10, 10, 4)  # 256 blocks: 64 leaves, 16, 4, 1
    blocks = [rng.randbytes(32) for _ in range(256)]
    store = Store()
    root1 = build(blocks, geometry, store)
    before = set(store)
    blocks[137] = rng.randbytes(32)
    root2 = build(blocks, geometry, store)
    assert len(set(store) - before) == geometry.root_level + 1 == 4
    shared = set(leaf_ids(root1, geometry, store.__getitem__)) & set(leaf_ids(root2, geometry, store.__getitem__))
    assert len(shared) == 63


def test_walk_visits_each_shared_node_once() -> None:
    rng = random.Random(2)
    geometry = Geometry.of(64 * 10, 10, 4)
    blocks = [rng.randbytes(32) for _ in range(64)]
    store = Store()
    roots = [build(blocks, geometry, store)]
    blocks[0] = rng.randbytes(32)
    roots.append(build(blocks, geometry, store))
    seen: set[bytes] = set()
    visited = [node for root in roots for node in walk_nodes(root, geometry, store.__getitem__, seen)]
    assert len(visited) == len(set(visited)) == len(store) + 65  # every node and every distinct block once


def test_a_node_of_the_wrong_shape_is_corruption() -> None:
    geometry = Geometry.of(17 * 10, 10, 4)
    store = Store()
    bogus_root = store.put(encode_node(1, [ZERO]))  # the root is at level 2 and lists 2 nodes
    with pytest.raises(CorruptRepository, match="expected level 2 with 2"):
        leaf_ids(bogus_root, geometry, store.__getitem__)
