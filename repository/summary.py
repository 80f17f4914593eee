"""A repository at a glance (``vmkeep info``): its size, what deduplication and compression save,
and the points of each VM, like ``restic stats`` or a PBS datastore's summary.

Everything comes from the file listing, the in-memory index and the points' trees; no data block
is read. The trees are walked once per distinct leaf: points share every leaf under which nothing
changed, so summarising a hundred points of a disk costs little more than one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .damage import DAMAGE_DIR
from .format import BlobType
from .packs import PACK_DIR
from .points import POINT_DIR, ChainKey, RecoveryPoint
from .repo import Repository
from .tree import ZERO, leaf_ids, leaf_refs
from .writer import INDEX_DIR


@dataclass(frozen=True)
class FileCount:
    files: int
    bytes: int


@dataclass(frozen=True)
class ChainSummary:
    """The points of one VM (one chain: name, kind of source, the source's own id)."""

    vm: str
    source_type: str
    points: int
    oldest: datetime
    newest: datetime
    newest_id: str


@dataclass
class RepositorySummary:
    repo_id: str
    encryption: str
    block_size: int
    files: dict[str, FileCount] = field(default_factory=dict)  # data, index, points, damage
    data_blobs: int = 0  # distinct data blocks stored
    data_raw_bytes: int = 0  # their size before compression
    data_stored_bytes: int = 0  # their size in packs (one copy each, frame headers included)
    tree_blobs: int = 0
    tree_stored_bytes: int = 0
    referenced_bytes: int = 0  # non-zero data all points reference, counted once per point
    restore_bytes: int = 0  # what restoring every point would write, zeros included
    chains: list[ChainSummary] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files.values())

    @property
    def dedup_ratio(self) -> float | None:
        """Data the points reference over the distinct data stored, both uncompressed."""
        return self.referenced_bytes / self.data_raw_bytes if self.data_raw_bytes else None

    @property
    def compression_ratio(self) -> float | None:
        return self.data_raw_bytes / self.data_stored_bytes if self.data_stored_bytes else None

    def to_json(self) -> dict[str, object]:
        return {
            "repo_id": self.repo_id,
            "encryption": self.encryption,
            "block_size": self.block_size,
            "total_bytes": self.total_bytes,
            "files": {name: {"files": f.files, "bytes": f.bytes} for name, f in self.files.items()},
            "data_blobs": self.data_blobs,
            "data_raw_bytes": self.data_raw_bytes,
            "data_stored_bytes": self.data_stored_bytes,
            "tree_blobs": self.tree_blobs,
            "tree_stored_bytes": self.tree_stored_bytes,
            "referenced_bytes": self.referenced_bytes,
            "restore_bytes": self.restore_bytes,
            "dedup_ratio": self.dedup_ratio,
            "compression_ratio": self.compression_ratio,
            "vms": [
                {
                    "vm": c.vm,
                    "source_type": c.source_type,
                    "points": c.points,
                    "oldest": c.oldest.isoformat(),
                    "newest": c.newest.isoformat(),
                    "newest_id": c.newest_id,
                }
                for c in self.chains
            ],
        }


def summarise(repo: Repository, points: list[RecoveryPoint]) -> RepositorySummary:
    summary = RepositorySummary(repo.config.repo_id, repo.config.encryption, repo.config.block_size)
    for directory in (PACK_DIR, INDEX_DIR, POINT_DIR, DAMAGE_DIR):
        listing = repo.backend.list(directory)
        summary.files[directory] = FileCount(len(listing), sum(f.size for f in listing))
    seen: set[bytes] = set()
    for location in repo.index.locations():
        entry = location.entry
        if entry.blob_id in seen:
            continue  # a second copy (two backups stored the same block): counted in the files' size
        seen.add(entry.blob_id)
        if entry.blob_type == BlobType.DATA:
            summary.data_blobs += 1
            summary.data_raw_bytes += entry.raw_len
            summary.data_stored_bytes += entry.length
        else:
            summary.tree_blobs += 1
            summary.tree_stored_bytes += entry.length
    leaf_cache: dict[tuple[bytes, int], int] = {}
    for point in points:
        for disk in point.disks:
            summary.restore_bytes += disk.capacity
            summary.referenced_bytes += _referenced(repo, disk.tree, disk.capacity, leaf_cache)
    summary.chains = _chains(points)
    return summary


def _referenced(repo: Repository, tree: str, capacity: int, cache: dict[tuple[bytes, int], int]) -> int:
    """Bytes of non-zero blocks the disk's tree references."""
    block_size = repo.config.block_size
    geometry = repo.geometry(capacity)
    total = 0
    leaves = leaf_ids(bytes.fromhex(tree), geometry, repo.read_blob)
    for j, leaf in enumerate(leaves):
        if leaf == ZERO:
            continue
        first = j * geometry.fanout
        refs_key = (leaf, min(geometry.fanout, geometry.counts[0] - first))
        if refs_key not in cache:
            refs = leaf_refs(leaf, geometry, j, repo.read_blob)
            cache[refs_key] = sum(1 for r in refs if r != ZERO) * block_size
        total += cache[refs_key]
        last = geometry.counts[0] - 1
        if j == len(leaves) - 1 and capacity % block_size:
            refs = leaf_refs(leaf, geometry, j, repo.read_blob)
            if refs[last - first] != ZERO:
                total -= block_size - capacity % block_size  # the disk's last block is short
    return total


def _chains(points: list[RecoveryPoint]) -> list[ChainSummary]:
    by_chain: dict[ChainKey, list[RecoveryPoint]] = {}
    for point in points:
        by_chain.setdefault(point.chain_key, []).append(point)
    chains = []
    for key in sorted(by_chain, key=lambda k: k.sort_key):
        members = sorted(by_chain[key], key=lambda p: p.time)
        chains.append(
            ChainSummary(key.vm, key.source_type, len(members), members[0].time, members[-1].time, members[-1].id)
        )
    return chains
