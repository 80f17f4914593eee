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
from contextlib import nullcontext
from dataclasses import dataclass, field

from .damage import DamagedCopy, DamageRecord
from .exceptions import CorruptRepository, FileMissing, RepositoryError
from .index import BlobLocation, BlockIndex, IndexEntry
from .kdf import KEYS_FILE
from .keys import KEYS_COPY_FILE, KeysDocument
from .locks import read_locks
from .packs import PACK_DIR, pack_name, pack_name_of, pack_path
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
    damaged_copies: int = 0  # stored copies that failed a check (an intact copy may exist elsewhere)
    damage_record: str | None = None  # the damage record written, if any

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class _CopyProblem:
    location: BlobLocation
    why: str


def verify(
    repo: Repository,
    read_data: bool = False,
    on_pack: Callable[[int], None] | None = None,
    *,
    lock: bool = True,
) -> VerifyReport:
    """Check ``repo``; ``on_pack(bytes)`` is called as each pack is read (progress).

    Damaged copies and blobs that points use but that have no intact copy are written to a
    damage record (unless ``lock`` is False: a lock-free verify writes nothing), so that no
    backup deduplicates against them again and the next one that meets their content heals them.
    """
    report = VerifyReport(read_data=read_data)
    lock = lock and repo.locking
    with repo.lock("verify") if lock else nullcontext():
        index = repo.reload_index()
        report.index_files = len(index.files)
        for name, why in sorted(index.damaged_files.items()):
            report.errors.append(
                f"index file {name} is damaged ({why.removeprefix(name + ': ')}); the blobs it names look "
                "absent: run 'vmkeep repair' to rebuild the index from the packs"
            )
        for name in sorted(index.damage_files):
            try:
                repo.read_damage_record(name)
            except RepositoryError as exc:
                report.errors.append(f"damage record {name}: {exc}")
        _check_keys(repo, report)
        for found in read_locks(repo.backend):
            if found.info is None:
                report.warnings.append(
                    f"{found.describe()}: it blocks gc until it is 30 minutes old; if no vmkeep process uses "
                    "the repository, 'vmkeep unlock --remove-all' removes it"
                )
        problems = _check_packs(repo, index, report, read_data, on_pack)
        unusable = _unusable_blobs(index, problems)
        _report_copies(index, problems, unusable, report)
        missing = check_points(repo, index, unusable, report)
        if lock:
            _record(repo, index, problems, missing, report)
        elif problems:
            report.warnings.append("verify ran without a lock: the damage found was not recorded")
    return report


def _check_keys(repo: Repository, report: VerifyReport) -> None:
    """Both copies of the keys parse, pass their checksum and belong to this repository."""
    for name in (KEYS_FILE, KEYS_COPY_FILE):
        try:
            content = repo.backend.read(name)
        except FileMissing:
            if name == KEYS_COPY_FILE:
                report.warnings.append(
                    f"there is no second copy of the keys ({name}); 'vmkeep key export --file F' then "
                    "'vmkeep key import F' writes both"
                )
            else:
                report.errors.append(f"{name} is missing; the repository opened with its second copy")
            continue
        try:
            KeysDocument.parse(content, name).check_repository(repo.config.repo_id, name)
        except CorruptRepository as exc:
            report.errors.append(f"{exc}; the other copy of the keys still opens the repository")


def _check_packs(
    repo: Repository,
    index: BlockIndex,
    report: VerifyReport,
    read_data: bool,
    on_pack: Callable[[int], None] | None,
) -> list[_CopyProblem]:
    """Every stored copy that fails a check: its pack is missing or too short, or (read_data) its bytes."""
    on_disk = {pack_name_of(f.name): f.size for f in repo.backend.list(PACK_DIR)}
    by_pack: dict[str, list[IndexEntry]] = {}
    for loc in index.locations():
        by_pack.setdefault(loc.pack, []).append(loc.entry)
    report.packs = len(by_pack)
    report.blobs = len(index)
    orphans = set(on_disk) - set(by_pack)
    if orphans and index.damaged_files:
        report.warnings.append(
            f"{len(orphans)} pack(s) that no readable index names; some may hold blobs of the damaged index "
            "file(s): run 'vmkeep repair' (gc refuses to run until then)"
        )
    elif orphans:
        report.warnings.append(
            f"{len(orphans)} pack(s) that no index names, left by an interrupted backup or gc; gc removes them"
        )

    def check(pack: str) -> tuple[list[_CopyProblem], int]:
        entries = by_pack[pack]
        size = on_disk.get(pack)
        if size is None:
            return [_CopyProblem(BlobLocation(pack, e), f"its pack {pack[:12]} is missing") for e in entries], 0
        if not read_data:
            truncated = f"its pack {pack[:12]} is truncated ({size} bytes)"
            return [_CopyProblem(BlobLocation(pack, e), truncated) for e in entries if e.offset + e.length > size], 0
        try:
            data = repo.backend.read(pack_path(pack))
        except RepositoryError as exc:
            return [_CopyProblem(BlobLocation(pack, e), f"pack {pack[:12]} unreadable: {exc}") for e in entries], 0
        found: list[_CopyProblem] = []
        for e in entries:
            where = f"pack {pack[:12]}@{e.offset}"
            if e.offset + e.length > len(data):
                found.append(_CopyProblem(BlobLocation(pack, e), f"{where}: its pack is truncated"))
                continue
            try:
                repo.codec.decode_frame(data[e.offset : e.offset + e.length], where, expected_id=e.blob_id)
            except RepositoryError as exc:
                found.append(_CopyProblem(BlobLocation(pack, e), str(exc)))
        if not found and pack_name([data]) != pack:
            report.warnings.append(
                f"pack {pack[:12]}: content does not match its name, though every indexed frame in it is intact "
                "(damage in bytes that no index uses: no recovery point is affected)"
            )
        return found, len(data)

    problems: list[_CopyProblem] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for found, nbytes in pool.map(check, sorted(by_pack)):
            report.bytes_read += nbytes
            if on_pack is not None:
                on_pack(nbytes)
            problems.extend(found)
    report.damaged_copies = len(problems)
    return problems


def _unusable_blobs(index: BlockIndex, problems: list[_CopyProblem]) -> dict[bytes, str]:
    """Blob id -> what is wrong, for blobs none of whose copies passed."""
    failed: dict[bytes, list[_CopyProblem]] = {}
    for p in problems:
        failed.setdefault(p.location.entry.blob_id, []).append(p)
    return {bid: found[0].why for bid, found in failed.items() if len(found) == len(index.copies(bid))}


def _report_copies(
    index: BlockIndex, problems: list[_CopyProblem], unusable: dict[bytes, str], report: VerifyReport
) -> None:
    """Damaged copies of blobs that still have an intact copy: damage, though no point is affected."""
    for p in problems:
        bid = p.location.entry.blob_id
        if bid in unusable:
            continue
        damaged = {q.location for q in problems if q.location.entry.blob_id == bid}
        intact = next(c for c in index.copies(bid) if c not in damaged)
        report.errors.append(
            f"blob {bid.hex()[:16]}: a copy is damaged ({p.why}); an intact copy is in pack {intact.pack[:12]}, "
            "which restores use ('vmkeep repair' or gc drop the damaged copy)"
        )


def _record(
    repo: Repository, index: BlockIndex, problems: list[_CopyProblem], missing: set[bytes], report: VerifyReport
) -> None:
    """Write what is newly known damaged, so backups stop deduplicating against it."""
    new_copies = tuple(
        DamagedCopy(p.location.entry.blob_id, p.location.pack, p.location.entry.offset, p.why)
        for p in problems
        if not index.is_bad(p.location)
    )
    new_missing = tuple(sorted(missing - index.missing))
    record = DamageRecord(new_copies, new_missing)
    if record:
        report.damage_record = repo.write_damage_record(record)


def check_points(repo: Repository, index: BlockIndex, bad: dict[bytes, str], report: VerifyReport) -> set[bytes]:
    """Walk every point; report each damaged one with what it misses; return the blobs missed."""
    scan = repo.scan_points()
    for pid, why in sorted(scan.damaged.items()):
        report.errors.append(
            f"recovery point {pid[:12]} is unreadable ({why}); it cannot be restored, other points are "
            f"not affected ('vmkeep forget {pid[:12]}' removes it)"
        )
        report.damaged_points[pid] = [why]
    points = scan.points
    report.points = len(points) + len(scan.damaged)
    absent = "in no readable index" if index.damaged_files else "in no index (missing)"

    def problem(blob_id: bytes) -> str | None:
        if blob_id in bad:
            return bad[blob_id]
        if index.lookup(blob_id) is None:
            return absent
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
    return set(users)
