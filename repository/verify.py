"""Checking a repository: structure always, every byte with ``read_data``.

Structure: every index and point file parses and matches its name; every pack an index
names exists and is long enough; every blob a point reaches is indexed. With ``read_data``
every indexed frame is re-read and checked (checksum, authentication, decompression, and its
keyed id recomputed from the content). Each damaged blob is reported with the recovery
points it breaks, so an administrator knows exactly which restores are affected.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .exceptions import RepositoryError
from .index import BlockIndex, IndexEntry
from .packs import PACK_DIR, pack_name, pack_name_of, pack_path
from .points import RecoveryPoint
from .repo import Repository
from .tree import ZERO, Geometry, decode_node

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    read_data: bool
    points: int = 0
    index_files: int = 0
    packs: int = 0
    blobs: int = 0
    bytes_read: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_points: dict[str, list[str]] = field(default_factory=dict)  # point id -> problems

    @property
    def ok(self) -> bool:
        return not self.errors


def verify(repo: Repository, read_data: bool = False, on_pack: Callable[[int], None] | None = None) -> VerifyReport:
    """Check ``repo``; ``on_pack(bytes)`` is called as each pack is read (progress)."""
    report = VerifyReport(read_data=read_data)
    with repo.lock("verify"):
        index = _load_index(repo, report)
        bad = _check_packs(repo, index, report, read_data, on_pack)
        _check_points(repo, index, bad, report)
    return report


def _load_index(repo: Repository, report: VerifyReport) -> BlockIndex:
    files: list[dict[str, list[IndexEntry]]] = []
    for name in repo.index_files():
        report.index_files += 1
        try:
            files.append(repo.read_index_file(name))
        except RepositoryError as exc:
            report.errors.append(f"index file {name}: {exc}")
    return BlockIndex.build(files)


def _check_packs(
    repo: Repository,
    index: BlockIndex,
    report: VerifyReport,
    read_data: bool,
    on_pack: Callable[[int], None] | None,
) -> dict[bytes, str]:
    """Blob id -> what is wrong with it, for blobs with no intact copy."""
    on_disk = {pack_name_of(f.name): f.size for f in repo.backend.list(PACK_DIR)}
    by_pack: dict[str, list[IndexEntry]] = {}
    for loc in index.locations():
        by_pack.setdefault(loc.pack, []).append(loc.entry)
    report.packs = len(by_pack)
    report.blobs = len(index)
    orphans = set(on_disk) - set(by_pack)
    if orphans:
        report.warnings.append(
            f"{len(orphans)} pack(s) that no index names, left by an interrupted backup or gc; gc removes them"
        )

    failures: dict[bytes, str] = {}  # blob id -> last failure seen
    good: set[bytes] = set()

    def check(pack: str) -> tuple[list[tuple[bytes, str | None]], int]:
        entries = by_pack[pack]
        size = on_disk.get(pack)
        if size is None:
            return [(e.blob_id, f"its pack {pack[:12]} is missing") for e in entries], 0
        if not read_data:
            truncated = f"its pack {pack[:12]} is truncated ({size} bytes)"
            return [(e.blob_id, None if e.offset + e.length <= size else truncated) for e in entries], 0
        try:
            data = repo.backend.read(pack_path(pack))
        except RepositoryError as exc:
            return [(e.blob_id, f"pack {pack[:12]} unreadable: {exc}") for e in entries], 0
        results: list[tuple[bytes, str | None]] = []
        name_ok = pack_name([data]) == pack
        for e in entries:
            where = f"pack {pack[:12]}@{e.offset}"
            if e.offset + e.length > len(data):
                results.append((e.blob_id, f"{where}: its pack is truncated"))
                continue
            try:
                repo.codec.decode_frame(data[e.offset : e.offset + e.length], where, expected_id=e.blob_id)
                results.append((e.blob_id, None))
            except RepositoryError as exc:
                results.append((e.blob_id, str(exc)))
        if not name_ok and all(r[1] is None for r in results):
            results.append((b"", f"pack {pack[:12]}: content does not match its name (bytes outside frames changed)"))
        return results, len(data)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for results, nbytes in pool.map(check, sorted(by_pack)):
            report.bytes_read += nbytes
            if on_pack is not None:
                on_pack(nbytes)
            for blob_id, problem in results:
                if not blob_id:
                    report.errors.append(problem or "")
                elif problem is None:
                    good.add(blob_id)
                else:
                    failures[blob_id] = problem
    return {bid: why for bid, why in failures.items() if bid not in good}


def _check_points(repo: Repository, index: BlockIndex, bad: dict[bytes, str], report: VerifyReport) -> None:
    points: list[RecoveryPoint] = []
    for pid in repo.point_ids():
        try:
            points.append(repo.load_point(pid))
        except RepositoryError as exc:
            report.errors.append(f"recovery point {pid[:12]}: {exc}")
    report.points = len(points)

    def problem(blob_id: bytes) -> str | None:
        if blob_id in bad:
            return bad[blob_id]
        if index.lookup(blob_id) is None:
            return "in no index (missing)"
        return None

    memo: dict[bytes, frozenset[tuple[bytes, str]]] = {}

    def damaged_under(node_id: bytes, level: int, node_index: int, geometry: Geometry) -> frozenset[tuple[bytes, str]]:
        if node_id == ZERO:
            return frozenset()
        if node_id in memo:
            return memo[node_id]
        own = problem(node_id)
        found: set[tuple[bytes, str]] = set()
        if own is not None:
            found.add((node_id, f"tree node: {own}"))
        else:
            try:
                node_level, children = decode_node(repo.read_blob(node_id), f"tree node {node_id.hex()[:16]}")
            except RepositoryError as exc:
                found.add((node_id, str(exc)))
                children, node_level = [], level
            if node_level != level or len(children) != geometry.children(level, node_index):
                if not found:
                    found.add((node_id, "tree node has the wrong shape for its disk"))
            elif level == 0:
                for child in children:
                    if child != ZERO and (why := problem(child)) is not None:
                        found.add((child, why))
            else:
                for k, child in enumerate(children):
                    found |= damaged_under(child, level - 1, node_index * geometry.fanout + k, geometry)
        memo[node_id] = result = frozenset(found)
        return result

    users: dict[bytes, tuple[str, list[str]]] = {}
    for point in points:
        for disk in point.disks:
            geometry = repo.geometry(disk.capacity)
            for blob_id, why in damaged_under(bytes.fromhex(disk.tree), geometry.root_level, 0, geometry):
                report.damaged_points.setdefault(point.id, []).append(
                    f"disk {disk.key}: blob {blob_id.hex()[:16]}: {why}"
                )
                users.setdefault(blob_id, (why, []))[1].append(point.short_id)
    for blob_id, (why, pids) in sorted(users.items()):
        names = ", ".join(sorted(set(pids)))
        report.errors.append(f"blob {blob_id.hex()[:16]}: {why}; affects recovery point(s) {names}")
    for blob_id, why in sorted(bad.items()):
        if blob_id not in users:
            report.warnings.append(f"unused blob {blob_id.hex()[:16]}: {why} (no point uses it; gc removes it)")
