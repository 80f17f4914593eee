"""What recovery points reference: the live set for gc, and each point's unique size.

NAKIVO's FAQ says the size of a recovery point in a forever-incremental repository cannot be
calculated. It can: a point's *unique size* is what deleting it alone would free, the stored
size of the blobs (data blocks and tree nodes) that no other point reaches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .points import RecoveryPoint
from .repo import Repository
from .tree import ZERO, decode_node, walk_nodes

_MANY = ""  # owner of a blob reached by more than one point


def reachable_blobs(repo: Repository, points: Iterable[RecoveryPoint]) -> set[bytes]:
    """Ids of every tree node and data block that some point reaches."""
    seen: set[bytes] = set()
    for point in points:
        for disk in point.disks:
            for _ in walk_nodes(bytes.fromhex(disk.tree), repo.geometry(disk.capacity), repo.read_blob, seen):
                pass
    return seen


def unique_sizes(
    repo: Repository, points: list[RecoveryPoint], on_point: Callable[[], None] | None = None
) -> dict[str, int]:
    """Point id -> stored bytes that only that point reaches; ``on_point()`` after each point (progress).

    Each blob gets an owner: the one point that reaches it, or "many". A node found shared
    passes "many" down to its subtree. Every node is expanded at most twice, so this costs
    one walk over the repository's distinct tree nodes, not one walk per point.
    """
    owner: dict[bytes, str] = {}
    for point in points:
        for disk in point.disks:
            geometry = repo.geometry(disk.capacity)
            stack = [(geometry.root_level, 0, bytes.fromhex(disk.tree), point.id)]
            while stack:
                level, index, node_id, claim = stack.pop()
                if node_id == ZERO:
                    continue
                current = owner.get(node_id)
                if current is None:
                    owner[node_id] = claim
                elif current in (claim, _MANY):
                    continue  # this point (or everyone) already owns the whole subtree
                else:
                    owner[node_id] = claim = _MANY
                if level < 0:
                    continue
                _level, children = decode_node(repo.read_blob(node_id), f"tree node {node_id.hex()[:16]}")
                for k, child in enumerate(children):
                    stack.append((level - 1, index * geometry.fanout + k, child, claim))
        if on_point is not None:
            on_point()
    sizes = {p.id: 0 for p in points}
    for blob_id, who in owner.items():
        if who != _MANY:
            location = repo.index.lookup(blob_id)
            if location is not None:
                sizes[who] += location.entry.length
    return sizes
