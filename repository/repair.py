"""Repair: rebuild the index from what the packs really hold, and say what stays damaged.

``repair`` reads every pack front to back and checks every frame it finds (checksum,
authentication, decompression, and the id recomputed from the content). After a damaged
frame it looks for the next frame magic and goes on, so one flipped byte costs one block,
not the rest of its pack. Every intact frame is indexed, including those in packs that no
index named (a damaged index file), so the index it writes names exactly the intact copies.

It then walks every recovery point against that index. What a point still misses is written
down as *missing* in a damage record: backups then never reuse those references, and the next
backup that meets the same content stores it again, which heals every point that uses it.

Write order (a crash at any step leaves a repository that is no worse):

1. new index files (durable) naming every intact frame;
2. a damage record listing the blobs points use that no pack holds intact;
3. old index files that are not also new ones are deleted;
4. old damage records are deleted (the new index no longer names the damaged copies they list).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from .damage import DamageRecord
from .exceptions import CorruptRepository, RepositoryError
from .format import FORMAT, FRAME_HEADER_SIZE, FrameHeader
from .index import BlockIndex, IndexEntry
from .packs import PACK_DIR, pack_name_of, pack_path
from .repo import Repository
from .verify import VerifyReport, check_points
from .writer import write_index_files

log = logging.getLogger(__name__)


@dataclass
class RepairReport:
    packs: int = 0
    bytes_read: int = 0
    frames_indexed: int = 0
    frames_damaged: int = 0
    index_files_before: int = 0
    index_files_after: int = 0
    damage_records_removed: int = 0
    missing_blobs: int = 0  # blobs points use that no pack holds intact
    damaged_points: dict[str, list[str]] = field(default_factory=dict)  # point id -> what it misses
    problems: list[str] = field(default_factory=list)  # damaged frames and packs, one line each

    @property
    def complete(self) -> bool:
        """True if every point is whole again."""
        return not self.damaged_points


def repair(repo: Repository, on_pack: Callable[[int], None] | None = None) -> RepairReport:
    """Rebuild the index from the packs and record what stays missing. Takes the exclusive lock."""
    report = RepairReport()
    with repo.lock("repair", exclusive=True):
        old_index = sorted(repo.index_files())
        old_damage = sorted(repo.damage_files())
        report.index_files_before = len(old_index)

        packs: dict[str, list[IndexEntry]] = {}
        for f in repo.backend.list(PACK_DIR):
            pack = pack_name_of(f.name)
            entries = _scan_pack(repo, pack, report)
            if entries:
                packs[pack] = entries
            report.packs += 1
            report.bytes_read += f.size
            if on_pack is not None:
                on_pack(f.size)
        report.frames_indexed = sum(len(v) for v in packs.values())

        rebuilt = BlockIndex.build([packs])
        repo.adopt_index(rebuilt)  # the walk below reads tree nodes through the new index
        check = VerifyReport(read_data=False)
        missing = check_points(repo, rebuilt, {}, check)
        report.damaged_points = check.damaged_points
        report.missing_blobs = len(missing)

        new_index = set(write_index_files(repo.backend, repo.codec, packs))
        new_damage = repo.write_damage_record(DamageRecord(missing=tuple(sorted(missing)))) if missing else None
        for name in old_index:
            if name not in new_index:
                repo.backend.delete(name)
        for name in old_damage:
            if name != new_damage:
                repo.backend.delete(name)
                report.damage_records_removed += 1
        report.index_files_after = len(new_index)
        repo.reload_index()
    return report


def _scan_pack(repo: Repository, pack: str, report: RepairReport) -> list[IndexEntry]:
    """Every intact frame of a pack, resynchronising on the frame magic after damage."""
    short = pack[:12]
    try:
        data = repo.backend.read(pack_path(pack))
    except RepositoryError as exc:
        report.problems.append(f"pack {short}: unreadable ({exc})")
        return []
    if data[: len(FORMAT.PACK_MAGIC)] != FORMAT.PACK_MAGIC:
        report.problems.append(f"pack {short}: bad pack magic; looking for frames anyway")
    entries: list[IndexEntry] = []
    pos = len(FORMAT.PACK_MAGIC)
    while 0 <= pos < len(data):
        where = f"pack {short}@{pos}"
        try:
            header = FrameHeader.unpack(data[pos : pos + FRAME_HEADER_SIZE], where)
            end = pos + FRAME_HEADER_SIZE + header.stored_len
            if end > len(data):
                raise CorruptRepository(f"{where}: frame runs past the end of the pack (truncated)")
            repo.codec.decode_frame(memoryview(data)[pos:end], where)
        except CorruptRepository as exc:
            report.frames_damaged += 1
            report.problems.append(str(exc))
            pos = data.find(FORMAT.FRAME_MAGIC, pos + 1)
            continue
        entries.append(IndexEntry(header.blob_id, header.blob_type, pos, end - pos, header.raw_len, header.checksum))
        pos = end
    return entries
