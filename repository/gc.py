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
from .index import BlobLocation, BlockIndex, IndexEntry
from .packs import PACK_DIR, PackBuilder, pack_name, pack_name_of, pack_path
from .repo import Repository
from .stats import reachable_blobs
from .writer import write_index_files

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
    _refuse_if_blind(repo, index)
    old_index_files = sorted(index.files)
    points = repo.points()
    live = reachable_blobs(repo, points)
    on_disk = {pack_name_of(f.name): f.size for f in repo.backend.list(PACK_DIR)}
    report.points, report.live_blobs = len(points), len(live)
    report.packs_before, report.index_files_before = len(on_disk), len(old_index_files)
    report.bytes_before = sum(on_disk.values())

    kept, pinned, tainted = _choose_copies(repo, index, live, on_disk)
    # Packs that hold a damaged copy no longer indexed are rewritten, so the bad bytes go too.
    chosen = set(_packs_to_repack(kept, on_disk, repo.config.pack_size)) | (tainted & set(kept))
    repack = sorted(chosen - pinned)
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


def _refuse_if_blind(repo: Repository, index: BlockIndex) -> None:
    """gc decides what is garbage from every point and every index: with one unreadable, it would guess."""
    if index.damaged_files:
        names = ", ".join(sorted(index.damaged_files))
        raise CorruptRepository(
            f"gc refuses to run: index file(s) {names} are damaged, so the packs they name would look "
            "like garbage; run 'vmkeep repair' first"
        )
    damaged = repo.scan_points().damaged
    if damaged:
        names = ", ".join(sorted(p[:12] for p in damaged))
        raise CorruptRepository(
            f"gc refuses to run: recovery point(s) {names} are unreadable, so gc cannot tell which blocks "
            "they use; remove them with 'vmkeep forget ID' (or put the files back) first"
        )


def _choose_copies(
    repo: Repository, index: BlockIndex, live: set[bytes], on_disk: dict[str, int]
) -> tuple[dict[str, list[IndexEntry]], set[str], set[str]]:
    """One copy of each live blob to keep, by pack; the packs that must stay untouched; and those
    holding a damaged copy.

    Where a blob has several copies, each is checked (checksum, without decryption) and an
    intact one is kept: gc must never keep a damaged copy and delete the good one. Copies
    recorded as damaged are never kept, except for a blob that has nothing better: those stay
    where they are (their packs are "pinned": not repacked, not deleted), for ``repair`` to judge.
    """
    candidates: dict[bytes, list[BlobLocation]] = {}
    for loc in index.locations():
        if loc.entry.blob_id in live and loc.pack in on_disk:
            candidates.setdefault(loc.entry.blob_id, []).append(loc)
    kept: dict[str, list[IndexEntry]] = {}
    pinned: set[str] = set()
    tainted = {loc.pack for loc in index.locations() if index.is_bad(loc)}
    for locs in candidates.values():
        good = [loc for loc in locs if not index.is_bad(loc)]
        if not good:
            for loc in locs:
                kept.setdefault(loc.pack, []).append(loc.entry)
                pinned.add(loc.pack)
            continue
        chosen = good[0] if len(good) == 1 else _first_intact(repo, good, tainted)
        if chosen is None:  # several copies and none passes: keep them all
            for loc in good:
                kept.setdefault(loc.pack, []).append(loc.entry)
                pinned.add(loc.pack)
        else:
            kept.setdefault(chosen.pack, []).append(chosen.entry)
    unknown = live - set(candidates) - index.missing
    if unknown:
        raise BlockMissing(
            f"{len(unknown)} blobs that recovery points use are in no pack "
            f"(e.g. {next(iter(unknown)).hex()[:16]}); "
            "gc refuses to run on damage it does not know of: run 'vmkeep verify' (which records it)"
        )
    return kept, pinned, tainted


def _first_intact(repo: Repository, copies: list[BlobLocation], tainted: set[str]) -> BlobLocation | None:
    for loc in copies:
        where = f"pack {loc.pack[:12]}@{loc.entry.offset}"
        try:
            frame = repo.backend.read(pack_path(loc.pack), loc.entry.offset, loc.entry.length)
            if repo.codec.check_frame(frame, where).blob_id == loc.entry.blob_id:
                return loc
        except CorruptRepository as exc:
            log.warning("gc: not keeping a damaged copy: %s", exc)
        tainted.add(loc.pack)
    return None


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
    return write_index_files(repo.backend, repo.codec, packs)
