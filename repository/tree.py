"""A disk's block-reference list, stored as a tree of content-addressed nodes.

Block ``i`` of a disk covers bytes ``[i*B, min((i+1)*B, capacity))``. Leaf ``j`` lists the
ids of blocks ``[j*F, (j+1)*F)`` (the last leaf may be shorter); a node at level ``L > 0`` lists
the ids of up to ``F`` nodes of level ``L-1``. The root's id is kept in the recovery point.

Nodes are blobs like any other, so a point that changed nothing under a node shares that node
with the point before it: a point costs new leaves for what changed, plus the path to the root.
The zero id stands for an all-zero block, and for a node whose subtree is all zeros (never stored).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from .exceptions import CorruptRepository
from .format import FORMAT, TREE_HEADER_SIZE

ZERO = FORMAT.ZERO_ID


def encode_node(level: int, ids: Sequence[bytes]) -> bytes:
    return FORMAT.TREE_HEADER.pack(FORMAT.TREE_MAGIC, level, len(ids)) + b"".join(ids)


def decode_node(raw: bytes, where: str) -> tuple[int, list[bytes]]:
    if len(raw) < TREE_HEADER_SIZE:
        raise CorruptRepository(f"{where}: truncated tree node")
    magic, level, count = FORMAT.TREE_HEADER.unpack_from(raw)
    size = FORMAT.ID_SIZE
    if magic != FORMAT.TREE_MAGIC or len(raw) != TREE_HEADER_SIZE + count * size:
        raise CorruptRepository(f"{where}: malformed tree node")
    return level, [raw[o : o + size] for o in range(TREE_HEADER_SIZE, len(raw), size)]


@dataclass(frozen=True)
class Geometry:
    """How many nodes each level of a disk's tree has: ``counts[0]`` blocks, ``counts[1]`` leaves..."""

    counts: tuple[int, ...]
    fanout: int

    @classmethod
    def of(cls, capacity: int, block_size: int, fanout: int) -> Geometry:
        counts = [-(-capacity // block_size)]
        while True:
            counts.append(max(1, -(-counts[-1] // fanout)))
            if counts[-1] == 1:
                break
        return cls(tuple(counts), fanout)

    @property
    def blocks(self) -> int:
        return self.counts[0]

    @property
    def leaves(self) -> int:
        return self.counts[1]

    @property
    def root_level(self) -> int:
        """Level of the root node; leaves are level 0 (``counts[1]``)."""
        return len(self.counts) - 2

    def children(self, level: int, index: int) -> int:
        """How many ids node ``index`` of tree level ``level`` holds (a leaf, level 0, holds block ids)."""
        below = self.counts[level]
        return max(0, min(self.fanout, below - index * self.fanout))


LoadNode = Callable[[bytes], bytes]  # node id -> raw node content
StoreNode = Callable[[bytes], bytes]  # raw node content -> node id (stored if new)


def leaf_ids(root: bytes, geometry: Geometry, load: LoadNode) -> list[bytes]:
    """The ids of every leaf, in disk order (zero for all-zero leaves)."""
    level_ids = [root]
    for level in range(geometry.root_level, 0, -1):
        expanded: list[bytes] = []
        for index, node_id in enumerate(level_ids):
            expanded.extend(_children(node_id, level, geometry.children(level, index), load))
        level_ids = expanded
    return level_ids


def leaf_refs(leaf_id: bytes, geometry: Geometry, leaf_index: int, load: LoadNode) -> list[bytes]:
    """The block ids of one leaf."""
    return _children(leaf_id, 0, geometry.children(0, leaf_index), load)


def iter_block_ids(root: bytes, geometry: Geometry, load: LoadNode) -> Iterator[bytes]:
    """Every block id of the disk, in order."""
    for j, leaf in enumerate(leaf_ids(root, geometry, load)):
        yield from leaf_refs(leaf, geometry, j, load)


def _children(node_id: bytes, level: int, count: int, load: LoadNode) -> list[bytes]:
    if node_id == ZERO:
        return [ZERO] * count
    node_level, ids = decode_node(load(node_id), f"tree node {node_id.hex()[:16]}")
    if node_level != level or len(ids) != count:
        raise CorruptRepository(
            f"tree node {node_id.hex()[:16]}: level {node_level} with {len(ids)} entries, "
            f"expected level {level} with {count}"
        )
    return ids


def make_node(level: int, ids: Sequence[bytes], store: StoreNode) -> bytes:
    """Id of a node over ``ids``; the zero id, without storing anything, if all are zero."""
    if all(i == ZERO for i in ids):
        return ZERO
    return store(encode_node(level, ids))


def build_root(leaves: Sequence[bytes], geometry: Geometry, store: StoreNode) -> bytes:
    """Build the levels above the leaves and return the root id."""
    if len(leaves) != geometry.leaves:
        raise ValueError(f"{len(leaves)} leaves for a tree of {geometry.leaves}")
    level_ids = list(leaves)
    fanout = geometry.fanout
    for level in range(1, geometry.root_level + 1):
        level_ids = [make_node(level, level_ids[k : k + fanout], store) for k in range(0, len(level_ids), fanout)]
    return level_ids[0]


def walk_nodes(root: bytes, geometry: Geometry, load: LoadNode, seen: set[bytes]) -> Iterator[tuple[int, bytes]]:
    """Every (level, id) of distinct stored nodes under ``root`` not already in ``seen``.

    Level 0 entries yield the ids of data blocks as ``(-1, id)``. Subtrees whose root is in
    ``seen`` are skipped, so walking all points of a repository costs each shared node once.
    """
    stack: list[tuple[int, int, bytes]] = [(geometry.root_level, 0, root)]
    while stack:
        level, index, node_id = stack.pop()
        if node_id == ZERO or node_id in seen:
            continue
        seen.add(node_id)
        yield level, node_id
        ids = _children(node_id, level, geometry.children(level, index), load)
        for k, child in enumerate(ids):
            if level == 0:
                if child != ZERO and child not in seen:
                    seen.add(child)
                    yield -1, child
            else:
                stack.append((level - 1, index * geometry.fanout + k, child))
