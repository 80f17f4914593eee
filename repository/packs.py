"""Pack files: many frames back to back behind an 8-byte magic, named by their content."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import blake3

from .exceptions import CorruptRepository
from .format import FORMAT, FRAME_HEADER_SIZE, BlobType, FrameHeader
from .index import IndexEntry

PACK_DIR = "data"


def pack_path(name: str) -> str:
    """Repository file name of a pack: ``data/<first two hex digits>/<name>``."""
    return f"{PACK_DIR}/{name[:2]}/{name}"


def pack_name_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def pack_name(chunks: list[bytes]) -> str:
    """A pack is named by the unkeyed BLAKE3-256 of its whole content."""
    hasher = blake3.blake3(max_threads=1)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()


@dataclass
class PackBuilder:
    """Frames of one pack being assembled in memory (at most ``target_size`` plus one frame)."""

    target_size: int
    chunks: list[bytes] = field(default_factory=lambda: [FORMAT.PACK_MAGIC])
    entries: list[IndexEntry] = field(default_factory=list)
    size: int = len(FORMAT.PACK_MAGIC)

    def add(self, header: FrameHeader, frame: bytes) -> None:
        if self.size + len(frame) > FORMAT.MAX_PACK_SIZE:
            raise ValueError("pack would exceed 4 GiB")
        self.entries.append(
            IndexEntry(header.blob_id, header.blob_type, self.size, len(frame), header.raw_len, header.checksum)
        )
        self.chunks.append(frame)
        self.size += len(frame)

    @property
    def full(self) -> bool:
        return pack_is_full(self.size, self.target_size)

    @property
    def empty(self) -> bool:
        return not self.entries


def pack_is_full(size: int, target_size: int) -> bool:
    """The one rule for closing a pack: once it has reached the target size (plus one frame at most)."""
    return size >= target_size


@dataclass(frozen=True)
class PackLayout:
    """One pack-to-be: its frames (source pack, entry), in order, and its size once written."""

    blob_type: BlobType
    frames: tuple[tuple[str, IndexEntry], ...]
    size: int


def lay_out_packs(frames: Iterable[tuple[str, IndexEntry]], target_size: int) -> list[PackLayout]:
    """How frames, added in this order, fill new packs: one open pack per blob type, each
    closed by ``pack_is_full`` as ``PackBuilder`` closes it, the last ones closed at the end.

    gc plans its repack with this and then writes exactly these packs, so what it announces
    (packs and bytes after) is what it does.
    """
    open_packs: dict[BlobType, tuple[list[tuple[str, IndexEntry]], int]] = {}
    done: list[PackLayout] = []
    for pack, entry in frames:
        members, size = open_packs.get(entry.blob_type, ([], len(FORMAT.PACK_MAGIC)))
        members.append((pack, entry))
        size += entry.length
        if pack_is_full(size, target_size):
            done.append(PackLayout(entry.blob_type, tuple(members), size))
            open_packs.pop(entry.blob_type, None)
        else:
            open_packs[entry.blob_type] = (members, size)
    for blob_type in BlobType:  # the same order as BlobWriter and gc flush their last packs
        if blob_type in open_packs:
            members, size = open_packs[blob_type]
            done.append(PackLayout(blob_type, tuple(members), size))
    return done


def iter_frames(data: bytes, where: str) -> Iterator[tuple[int, FrameHeader, memoryview]]:
    """Walk a whole pack's frames in order: (offset, header, frame bytes)."""
    if data[: len(FORMAT.PACK_MAGIC)] != FORMAT.PACK_MAGIC:
        raise CorruptRepository(f"{where}: not a pack file")
    view = memoryview(data)
    pos = len(FORMAT.PACK_MAGIC)
    while pos < len(data):
        header = FrameHeader.unpack(bytes(view[pos : pos + FRAME_HEADER_SIZE]), f"{where}@{pos}")
        end = pos + FRAME_HEADER_SIZE + header.stored_len
        if end > len(data):
            raise CorruptRepository(f"{where}@{pos}: frame runs past the end of the pack (truncated)")
        yield pos, header, view[pos:end]
        pos = end
