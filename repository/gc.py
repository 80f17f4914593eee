"""Garbage collection: delete blobs no recovery point reaches, repacking packs mostly garbage.

Runs under the exclusive lock, so no backup can be writing or deduplicating against a blob
while gc decides it is garbage. The steps keep the repository valid at every instant:

1. find the live set by walking every point's tree;
2. copy the live frames of packs that are mostly garbage (or small) into new packs, fsync'ed;
3. write a new index naming every live blob where it now lies;
4. delete the old index files (not among the new ones);
5. delete packs that no index names any more: emptied, repacked, or orphaned by a crash;
6. empty ``tmp/``.

A crash after 3 leaves two indexes naming valid copies; after 4, packs no index names,
which the next gc deletes. Nothing a point reaches is ever unreachable on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .exceptions import BlockMissing, CorruptRepository
from .format import BlobType
from .index import BlockIndex, IndexEntry
from .packs import PACK_DIR, PackBuilder, pack_name, pack_name_of, pack_path
from .repo import Repository
from .stats import reachable_blobs
from .writer import INDEX_EVERY, write_index_file

log = logging.getLogger(__name__)

REPACK_GARBAGE_FRACTION = 0.2  # repack a pack once this fraction of it is garbage
SMALL_PACK_FRACTION = 0.25  # packs under this fraction of the target size are merged


@dataclass
class GcReport:
    points: int = 0
    live_blobs: int = 0
    packs_before: int = 0
    packs_after: int = 0
    packs_deleted: int = 0  # all garbage, or orphans no index named
    packs_repacked: int = 0
    packs_written: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    index_files_before: int = 0
    index_files_after: int = 0
    tmp_files_removed: int = 0
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after


def collect_garbage(repo: Repository, dry_run: bool = False) -> GcReport:
    with repo.lock("gc", exclusive=True):
        return _collect(repo, dry_run)


def _collect(repo: Repository, dry_run: bool) -> GcReport:
    report = GcReport(dry_run=dry_run)
    index = repo.reload_index()
    old_index_files = repo.index_files()
    points = repo.points()
    live = reachable_blobs(repo, points)
    on_disk = {pack_name_of(f.name): f.size for f in repo.backend.list(PACK_DIR)}
    report.points, report.live_blobs = len(points), len(live)
    report.packs_before, report.index_files_before = len(on_disk), len(old_index_files)
    report.bytes_before = sum(on_disk.values())

    # One location per live blob, in a pack that exists; every other entry is garbage.
    kept: dict[str, list[IndexEntry]] = {}
    chosen: set[bytes] = set()
    for loc in index.locations():
        bid = loc.entry.blob_id
        if bid in live and bid not in chosen and loc.pack in on_disk:
            chosen.add(bid)
            kept.setdefault(loc.pack, []).append(loc.entry)
    missing = live - chosen
    if missing:
        raise BlockMissing(
            f"{len(missing)} blobs that recovery points use are in no pack "
            f"(e.g. {next(iter(missing)).hex()[:16]}); "
            "gc refuses to run on a damaged repository: run 'vmkeep verify'"
        )

    repack = _packs_to_repack(kept, on_disk, repo.config.pack_size)
    delete = sorted(set(on_disk) - set(kept))
    report.packs_deleted, report.packs_repacked = len(delete), len(repack)
    rewrite_index = bool(delete or repack or len(old_index_files) > 1 or index_has_garbage(index, kept))

    if dry_run:
        remaining = sum(on_disk[p] for p in kept if p not in repack)
        report.bytes_after = remaining + sum(sum(e.length for e in kept[p]) for p in repack)
        report.packs_after = len(kept) - len(repack)
        report.index_files_after = report.index_files_before
        return report

    new_packs = _repack(repo, repack, kept, report)
    final = {p: entries for p, entries in kept.items() if p not in repack}
    final.update(new_packs)
    new_index_files: set[str] = set(old_index_files)
    if rewrite_index:
        new_index_files = set(_write_index(repo, final))
        for name in old_index_files:
            if name not in new_index_files:
                repo.backend.delete(name)
    # Packs are named by content, so a repack can reproduce an existing pack under its own name:
    # never delete a name that is (again) in the new index.
    for pack in sorted((set(delete) | set(repack)) - set(final)):
        repo.backend.delete(pack_path(pack))
    for f in repo.backend.list("tmp"):
        repo.backend.delete(f.name)
        report.tmp_files_removed += 1

    after = {pack_name_of(f.name): f.size for f in repo.backend.list(PACK_DIR)}
    report.packs_after, report.bytes_after = len(after), sum(after.values())
    report.index_files_after = len(new_index_files)
    repo.reload_index()
    return report


def _packs_to_repack(kept: dict[str, list[IndexEntry]], on_disk: dict[str, int], target: int) -> list[str]:
    """Packs that are mostly garbage, and small packs when there are several of one blob type."""
    chosen = {
        p for p, entries in kept.items() if sum(e.length for e in entries) < (1 - REPACK_GARBAGE_FRACTION) * on_disk[p]
    }
    for blob_type in BlobType:
        small = {
            p
            for p, entries in kept.items()
            if entries[0].blob_type == blob_type and on_disk[p] < SMALL_PACK_FRACTION * target
        }
        if len(small | {p for p in chosen if kept[p][0].blob_type == blob_type}) >= 2:
            chosen |= small
    return sorted(chosen)


def index_has_garbage(index: BlockIndex, kept: dict[str, list[IndexEntry]]) -> bool:
    """True if the index names anything besides one location per live blob."""
    return len(index) != sum(len(v) for v in kept.values())


def _repack(
    repo: Repository, packs: list[str], kept: dict[str, list[IndexEntry]], report: GcReport
) -> dict[str, list[IndexEntry]]:
    """Copy the live frames of ``packs`` into new packs (checked, not decoded); return their entries."""
    builders = {t: PackBuilder(repo.config.pack_size) for t in BlobType}
    written: dict[str, list[IndexEntry]] = {}

    def flush(builder: PackBuilder) -> None:
        if builder.empty:
            return
        name = pack_name(builder.chunks)
        repo.backend.write(pack_path(name), builder.chunks)
        written[name] = builder.entries
        report.packs_written += 1

    for pack in packs:
        data = repo.backend.read(pack_path(pack))
        for entry in sorted(kept[pack], key=lambda e: e.offset):
            frame = data[entry.offset : entry.offset + entry.length]
            where = f"pack {pack[:12]}@{entry.offset}"
            header = repo.codec.check_frame(frame, where)
            if header.blob_id != entry.blob_id:
                raise CorruptRepository(f"{where}: holds another blob than its index says")
            builder = builders[header.blob_type]
            builder.add(header, frame)
            if builder.full:
                flush(builder)
                builders[header.blob_type] = PackBuilder(repo.config.pack_size)
    for builder in builders.values():
        flush(builder)
    return written


def _write_index(repo: Repository, packs: dict[str, list[IndexEntry]]) -> list[str]:
    names: list[str] = []
    batch: dict[str, list[IndexEntry]] = {}
    count = 0
    for pack, entries in sorted(packs.items()):
        batch[pack] = entries
        count += len(entries)
        if count >= INDEX_EVERY:
            names.append(write_index_file(repo.backend, repo.codec, batch))
            batch, count = {}, 0
    if batch:
        names.append(write_index_file(repo.backend, repo.codec, batch))
    return names
