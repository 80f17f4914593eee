"""Garbage collection: delete blobs no recovery point reaches, repacking packs that hold garbage.

One function, ``plan_gc``, decides everything: which packs are deleted, which are repacked and
into which new packs (laid out by ``lay_out_packs``, the packer's own rule), how many packs and
bytes remain, and what garbage stays and why. ``gc --dry-run`` prints that plan; ``gc`` computes
the same plan and carries it out, so both report the same numbers.

gc runs under the exclusive lock, so no backup can be writing or deduplicating against a blob
while gc decides it is garbage. The steps keep the repository valid at every instant:

1. refuse while an index or point file is unreadable; find the live set by walking every
   point's tree; choose one checked, undamaged copy of each live blob; and plan;
2. delete ``tmp/`` and the packs no index names (left by a crash): nothing refers to them, so
   this frees space before gc writes anything;
3. copy the live frames of the packs to repack into new packs, fsync'ed (skipped, and said so,
   when the file system has no room for them);
4. write a new index naming every live blob where it now lies;
5. delete the old index files (not among the new ones);
6. delete the packs no index names any more: emptied and repacked.

A crash after 4 leaves two indexes naming valid copies; after 5, packs no index names, which
the next gc deletes. Nothing a point reaches is ever unreachable on disk. A pack an index still
names is never deleted before the new index is durable: a backup run after a crash could
otherwise deduplicate against a blob whose pack is gone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from .exceptions import BlockMissing, CorruptRepository, RepositoryFull
from .format import FORMAT, BlobType
from .index import BlobLocation, BlockIndex, IndexEntry
from .packs import PACK_DIR, PackBuilder, PackLayout, lay_out_packs, pack_name_of, pack_path
from .repo import Repository
from .reserve import ensure_reserve, lock_making_room
from .stats import reachable_blobs
from .writer import write_index_files

log = logging.getLogger(__name__)

REPACK_GARBAGE_FRACTION = 0.2  # by default, repack a pack once this fraction of it is garbage
SMALL_PACK_FRACTION = 0.25  # packs under this fraction of the target size are merged
_MAGIC = len(FORMAT.PACK_MAGIC)


class Unreclaimed(Enum):
    """Why garbage stays in a pack after gc."""

    NONE = "none"
    UNDER_THRESHOLD = "under-threshold"  # default rule: under 20% of its pack
    WITHIN_MAX_UNUSED = "within-max-unused"  # --max-unused allows it
    NO_SPACE = "no-space"  # the file system had no room to write the repacked packs

    def explain(self, max_unused: MaxUnused) -> str:
        """The end of "1.2 MiB of unused data stays in 3 packs...": why it stays."""
        if self is Unreclaimed.UNDER_THRESHOLD:
            return (
                f", each under the default repack threshold of {REPACK_GARBAGE_FRACTION:.0%} unused "
                "('gc --max-unused 0' repacks them)"
            )
        if self is Unreclaimed.WITHIN_MAX_UNUSED:
            return f", within --max-unused {max_unused.text}"
        if self is Unreclaimed.NO_SPACE:
            return ": the file system had no room to repack them; run gc again to repack them now that space is free"
        return ""


@dataclass(frozen=True)
class MaxUnused:
    """How much unused space gc may leave (restic's ``--max-unused``).

    ``None`` for both limits is the default rule: repack each pack of which at least 20% is
    garbage. Otherwise, packs are repacked, most garbage first, until the unused space left is
    at most ``limit_bytes`` or ``percent`` of the repository (as restic: p% of what remains).
    """

    text: str = "20% per pack"
    percent: float | None = None
    limit_bytes: int | None = None

    @property
    def per_pack(self) -> bool:
        return self.percent is None and self.limit_bytes is None

    def allowed(self, live_bytes: int) -> float:
        """Bytes of unused space that may remain, for a repository of ``live_bytes`` used."""
        if self.limit_bytes is not None:
            return float(self.limit_bytes)
        assert self.percent is not None
        if self.percent >= 100:
            return float("inf")
        return self.percent / (100 - self.percent) * live_bytes


@dataclass(frozen=True)
class Repack:
    """A pack whose live frames are copied into new packs, and why it was chosen."""

    pack: str
    live: tuple[IndexEntry, ...]  # in pack order
    small: bool  # chosen only to merge small packs, not for its garbage


@dataclass(frozen=True)
class GcPlan:
    """Everything gc will do, decided before it writes or deletes anything."""

    points: int
    live_blobs: int
    live_bytes: int
    packs_before: int
    bytes_before: int
    index_files: tuple[str, ...]
    keep: Mapping[str, tuple[IndexEntry, ...]]  # packs kept as they are: their live entries
    sizes: Mapping[str, int]  # every pack on disk: its size
    delete: tuple[str, ...]  # packs with no live blob, orphans included
    orphans: tuple[str, ...]  # the packs of ``delete`` that no index names
    repack: tuple[Repack, ...]
    new_packs: tuple[PackLayout, ...]  # what the repack writes
    rewrite_index: bool
    unreclaimed_bytes: int  # unused bytes left in kept packs (garbage frames and duplicates)
    unreclaimed_packs: int
    unreclaimed_reason: Unreclaimed
    max_unused: MaxUnused

    @property
    def packs_after(self) -> int:
        return len(self.keep) + len(self.new_packs)

    @property
    def bytes_after(self) -> int:
        return sum(self.sizes[p] for p in self.keep) + sum(n.size for n in self.new_packs)

    @property
    def bytes_freed(self) -> int:
        return self.bytes_before - self.bytes_after

    def without_repack(self, reason: Unreclaimed) -> GcPlan:
        """The same plan with every repacked pack kept as it is (when there is no room to repack)."""
        keep = dict(self.keep)
        keep.update({r.pack: r.live for r in self.repack})
        garbage = [_garbage(self.sizes[p], entries) for p, entries in keep.items()]
        return replace(
            self,
            keep=keep,
            repack=(),
            new_packs=(),
            unreclaimed_bytes=sum(garbage),
            unreclaimed_packs=sum(1 for g in garbage if g),
            unreclaimed_reason=reason if any(garbage) else Unreclaimed.NONE,
        )


@dataclass(frozen=True)
class GcReport:
    """What gc planned, what it carried out, and what the repository holds afterwards."""

    plan: GcPlan  # what gc announced (the dry run prints this)
    done: GcPlan  # what it carried out: ``plan``, or ``plan.without_repack`` when space ran out
    dry_run: bool
    packs_after: int  # counted on disk after the run (the plan's figures on a dry run)
    bytes_after: int
    packs_written: int
    index_files_after: int
    tmp_files_removed: int
    repack_skipped: bool  # the file system had no room for the new packs
    reserve_released: bool  # the file system was full: the space reserve was deleted to start
    reserve_restored: bool  # and it could be written again at the end

    @property
    def bytes_freed(self) -> int:
        return self.plan.bytes_before - self.bytes_after

    def to_json(self) -> dict[str, object]:
        done = self.done
        return {
            "dry_run": self.dry_run,
            "points": done.points,
            "live_blobs": done.live_blobs,
            "live_bytes": done.live_bytes,
            "packs_before": done.packs_before,
            "packs_deleted": len(done.delete),
            "packs_repacked": len(done.repack),
            "packs_repacked_small": sum(1 for r in done.repack if r.small),  # merged for their size only
            "packs_written": self.packs_written,
            "packs_after": self.packs_after,
            "bytes_before": done.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_freed": self.bytes_freed,
            "index_files_before": len(done.index_files),
            "index_files_after": self.index_files_after,
            "tmp_files_removed": self.tmp_files_removed,
            "max_unused": done.max_unused.text,
            "unreclaimed": {
                "bytes": done.unreclaimed_bytes,
                "packs": done.unreclaimed_packs,
                "reason": done.unreclaimed_reason.value,
            },
            "planned": {
                "packs_deleted": len(self.plan.delete),
                "packs_repacked": len(self.plan.repack),
                "packs_written": len(self.plan.new_packs),
                "packs_after": self.plan.packs_after,
                "bytes_after": self.plan.bytes_after,
            },
            "repack_skipped": self.repack_skipped,
            "reserve_released": self.reserve_released,
            "reserve_restored": self.reserve_restored,
        }


def collect_garbage(
    repo: Repository,
    dry_run: bool = False,
    max_unused: MaxUnused | None = None,
    on_repack: Callable[[int, int], None] | None = None,
) -> GcReport:
    """Carry out (or with ``dry_run`` only plan) gc; ``on_repack(bytes, total)`` as each repacked pack is read."""
    lock, released = lock_making_room(repo, "gc", exclusive=True)
    with lock:
        plan = plan_gc(repo, max_unused or MaxUnused())
        if dry_run:
            restored = ensure_reserve(repo.backend)
            return GcReport(
                plan,
                plan,
                dry_run=True,
                packs_after=plan.packs_after,
                bytes_after=plan.bytes_after,
                packs_written=len(plan.new_packs),
                index_files_after=len(plan.index_files),
                tmp_files_removed=0,
                repack_skipped=False,
                reserve_released=released,
                reserve_restored=restored,
            )
        return _carry_out(repo, plan, released, on_repack)


def plan_gc(repo: Repository, max_unused: MaxUnused) -> GcPlan:
    """Decide what gc does: the one computation behind both ``gc --dry-run`` and ``gc``."""
    index = repo.reload_index()
    _refuse_if_blind(repo, index)
    index_files = tuple(sorted(index.files))
    points = repo.points()
    live = reachable_blobs(repo, points)
    on_disk = {pack_name_of(f.name): f.size for f in repo.backend.list(PACK_DIR)}

    kept, pinned, tainted = _choose_copies(repo, index, live, on_disk)
    named = set(index.packs())
    live_entries = {p: tuple(sorted(entries, key=lambda e: e.offset)) for p, entries in kept.items()}
    live_bytes = sum(e.length for entries in live_entries.values() for e in entries)

    repack = _packs_to_repack(live_entries, on_disk, repo.config.pack_size, max_unused, live_bytes)
    # Packs holding a damaged copy that is no longer kept are rewritten, so the bad bytes go too;
    # packs holding the only (damaged) copies of a blob stay untouched, for repair to judge.
    tainted_repacks = [Repack(p, live_entries[p], False) for p in sorted(tainted & set(live_entries))]
    by_pack = {r.pack: r for r in (*tainted_repacks, *repack)}
    repack = tuple(by_pack[p] for p in sorted(by_pack) if p not in pinned)
    repacked = {r.pack for r in repack}
    stay = {p: entries for p, entries in live_entries.items() if p not in repacked}
    garbage = {p: _garbage(on_disk[p], entries) for p, entries in stay.items()}
    unreclaimed = sum(garbage.values())
    if not unreclaimed:
        reason = Unreclaimed.NONE
    elif max_unused.per_pack:
        reason = Unreclaimed.UNDER_THRESHOLD
    else:
        reason = Unreclaimed.WITHIN_MAX_UNUSED
    delete = tuple(sorted(set(on_disk) - set(kept)))
    return GcPlan(
        points=len(points),
        live_blobs=len(live),
        live_bytes=live_bytes,
        packs_before=len(on_disk),
        bytes_before=sum(on_disk.values()),
        index_files=index_files,
        keep=stay,
        sizes=on_disk,
        delete=delete,
        orphans=tuple(p for p in delete if p not in named),
        repack=repack,
        new_packs=tuple(lay_out_packs(((r.pack, e) for r in repack for e in r.live), repo.config.pack_size)),
        rewrite_index=bool(delete or repack or len(index_files) > 1 or index_has_garbage(index, live_entries)),
        unreclaimed_bytes=unreclaimed,
        unreclaimed_packs=sum(1 for g in garbage.values() if g),
        unreclaimed_reason=reason,
        max_unused=max_unused,
    )


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


def _garbage(size: int, live: tuple[IndexEntry, ...]) -> int:
    """Bytes of a pack that no live blob uses: garbage frames and duplicate copies."""
    return size - _MAGIC - sum(e.length for e in live)


def _packs_to_repack(
    live: Mapping[str, tuple[IndexEntry, ...]],
    on_disk: Mapping[str, int],
    target: int,
    max_unused: MaxUnused,
    live_bytes: int,
) -> tuple[Repack, ...]:
    """Packs with too much garbage (by ``max_unused``), and small packs when there are several of a type."""
    garbage = {p: _garbage(on_disk[p], entries) for p, entries in live.items()}
    if max_unused.per_pack:
        chosen = {p for p, entries in live.items() if garbage[p] > REPACK_GARBAGE_FRACTION * on_disk[p]}
    else:
        chosen = set()
        left = sum(garbage.values())
        allowed = max_unused.allowed(live_bytes)
        for p in sorted((p for p in live if garbage[p]), key=lambda p: (-garbage[p] / on_disk[p], p)):
            if left <= allowed:
                break
            chosen.add(p)
            left -= garbage[p]
    small: set[str] = set()
    for blob_type in BlobType:
        of_type = {p for p in live if live[p][0].blob_type == blob_type}
        small_of_type = {p for p in of_type if on_disk[p] < SMALL_PACK_FRACTION * target}
        if len(small_of_type | (chosen & of_type)) >= 2:
            small |= small_of_type - chosen
    return tuple(Repack(p, live[p], p in small) for p in sorted(chosen | small))


def index_has_garbage(index: BlockIndex, kept: Mapping[str, tuple[IndexEntry, ...]]) -> bool:
    """True if the index names anything besides one location per live blob."""
    return len(index) != sum(len(v) for v in kept.values())


def _carry_out(
    repo: Repository, plan: GcPlan, reserve_released: bool, on_repack: Callable[[int, int], None] | None
) -> GcReport:
    tmp_removed = _delete_unnamed(repo, plan)
    done = plan
    try:
        new_packs = _repack(repo, plan, on_repack)
    except RepositoryFull:
        log.info("no room to write repacked packs: repacking skipped, deleting what no point uses")
        done = plan.without_repack(Unreclaimed.NO_SPACE)
        new_packs = {}
    final: dict[str, list[IndexEntry]] = {p: list(entries) for p, entries in done.keep.items()}
    final.update(new_packs)
    new_index_files: set[str] = set(plan.index_files)
    if done.rewrite_index:
        written: list[str] = []
        try:
            new_index_files = set(_write_index(repo, final, written))
        except RepositoryFull as exc:
            # The old index stays in force: delete the new index files first, then the packs
            # only they named (never a pack that existed before, which a repack may reproduce).
            for name in written:
                if name not in plan.index_files:
                    repo.backend.delete(name)
            for pack in new_packs:
                if pack not in plan.sizes:
                    repo.backend.delete(pack_path(pack))
            raise RepositoryFull(
                f"{exc}: gc could not write its new index and changed nothing but temporary and "
                "unreferenced files; free some space on the file system and run gc again"
            ) from None
        for name in plan.index_files:
            if name not in new_index_files:
                repo.backend.delete(name)
    # Packs are named by content, so a repack can reproduce an existing pack under its own name:
    # never delete a name that is (again) in the new index.
    for pack in sorted((set(done.delete) | {r.pack for r in done.repack}) - set(final)):
        repo.backend.delete(pack_path(pack))

    after = {pack_name_of(f.name): f.size for f in repo.backend.list(PACK_DIR)}
    repo.reload_index()
    restored = ensure_reserve(repo.backend)
    if not restored:
        log.warning("no room to write the repository's space reserve again; it is written at the next forget or gc")
    return GcReport(
        plan,
        done,
        dry_run=False,
        packs_after=len(after),
        bytes_after=sum(after.values()),
        packs_written=len(new_packs),
        index_files_after=len(new_index_files),
        tmp_files_removed=tmp_removed,
        repack_skipped=done is not plan,
        reserve_released=reserve_released,
        reserve_restored=restored,
    )


def _delete_unnamed(repo: Repository, plan: GcPlan) -> int:
    """Delete ``tmp/`` and the orphan packs: nothing names them, and nothing needs writing first."""
    removed = 0
    for f in repo.backend.list("tmp"):
        repo.backend.delete(f.name)
        removed += 1
    for pack in plan.orphans:
        repo.backend.delete(pack_path(pack))
    return removed


def _repack(
    repo: Repository, plan: GcPlan, on_repack: Callable[[int, int], None] | None = None
) -> dict[str, list[IndexEntry]]:
    """Write ``plan.new_packs``: the live frames of the repacked packs, checked, not decoded.

    Each source pack is read once, in plan order; a new pack is written as soon as its last
    frame is in. If the file system fills up, the new packs written so far are deleted (no
    index names them) and ``RepositoryFull`` is raised.
    """
    target = {(pack, entry.offset): n for n, layout in enumerate(plan.new_packs) for pack, entry in layout.frames}
    waiting = [len(layout.frames) for layout in plan.new_packs]
    builders: dict[int, PackBuilder] = {}
    written: dict[str, list[IndexEntry]] = {}
    total = sum(plan.sizes[r.pack] for r in plan.repack)
    backend = repo.backend
    try:
        for repack in plan.repack:
            data = backend.read(pack_path(repack.pack))
            if on_repack is not None:
                on_repack(len(data), total)
            for entry in repack.live:
                frame = data[entry.offset : entry.offset + entry.length]
                where = f"pack {repack.pack[:12]}@{entry.offset}"
                header = repo.codec.check_frame(frame, where)
                if header.blob_id != entry.blob_id:
                    raise CorruptRepository(f"{where}: holds another blob than its index says")
                n = target[(repack.pack, entry.offset)]
                builder = builders.setdefault(n, PackBuilder(repo.config.pack_size))
                builder.add(header, frame)
                waiting[n] -= 1
                if waiting[n] and builder.spilling:
                    builder.write(backend, builder.take())
                elif not waiting[n]:
                    if builder.size != plan.new_packs[n].size:
                        raise AssertionError(
                            f"repacked pack {n} is {builder.size} bytes, planned {plan.new_packs[n].size}"
                        )
                    builder.write(backend, builder.take())
                    name = builder.commit()
                    del builders[n]
                    written[name] = builder.entries
    except BaseException as exc:
        for builder in builders.values():
            builder.abort()
        if isinstance(exc, RepositoryFull):
            for name in written:
                if name not in plan.sizes:  # never a pack that existed before (a reproduced one)
                    backend.delete(pack_path(name))
        raise
    return written


def _write_index(repo: Repository, packs: dict[str, list[IndexEntry]], names: list[str]) -> list[str]:
    """Write index files naming ``packs``; each name is appended to ``names`` once written."""
    return write_index_files(repo.backend, repo.codec, packs, written=names)
