"""Pack files: many frames back to back behind an 8-byte magic, named by their content."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import blake3

from .backend import Backend, PendingFile
from .exceptions import CorruptRepository
from .format import FORMAT, FRAME_HEADER_SIZE, BlobType, FrameHeader
from .index import IndexEntry

PACK_DIR = "data"
SEGMENT = 8 * 1024 * 1024  # a pack being filled is written in pieces of about this size


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
    """One pack being filled, the one packer of backups (writer.py) and gc.

    Frames are indexed as they are added; their bytes go to the backend in pieces while the pack
    fills (``take`` what was added, ``write`` it), so that little is left to write when it is
    complete; ``commit`` then names it by its content and makes it durable under that name.
    ``add`` and ``take`` run on the thread filling the pack; ``write``, ``commit`` and ``abort``
    on one thread writing it, which receives the pieces in order. Until it is committed, what
    was written lies in the backend's ``tmp/``; ``abort`` removes it.
    """

    target_size: int
    entries: list[IndexEntry] = field(default_factory=list)
    size: int = len(FORMAT.PACK_MAGIC)
    pending: list[bytes] = field(default_factory=lambda: [FORMAT.PACK_MAGIC])  # added, not yet taken
    pending_size: int = len(FORMAT.PACK_MAGIC)
    _file: PendingFile | None = None
    _hasher: blake3.blake3 = field(default_factory=lambda: blake3.blake3(max_threads=1))

    def add(self, header: FrameHeader, frame: bytes) -> None:
        if self.size + len(frame) > FORMAT.MAX_PACK_SIZE:
            raise ValueError("pack would exceed 4 GiB")
        self.entries.append(
            IndexEntry(header.blob_id, header.blob_type, self.size, len(frame), header.raw_len, header.checksum)
        )
        self.pending.append(frame)
        self.size += len(frame)
        self.pending_size += len(frame)

    def take(self) -> list[bytes]:
        """The bytes added since the last ``take``, in order, for ``write``."""
        chunks, self.pending, self.pending_size = self.pending, [], 0
        return chunks

    def write(self, backend: Backend, chunks: list[bytes]) -> None:
        """Append what ``take`` returned to the pack's file (begun at the first piece)."""
        if self._file is None:
            self._file = backend.create()
        for chunk in chunks:
            self._hasher.update(chunk)
        self._file.append(chunks)

    def commit(self, *, defer_sync: bool = False) -> str:
        """Put the pack, written whole, in place under its name (durable as ``Backend.write``
        makes a file, ``defer_sync`` included) and return the name."""
        if self.pending_size or self._file is None:
            raise ValueError("committing a pack with bytes not yet written")
        name = self._hasher.hexdigest()
        self._file.commit(pack_path(name), defer_sync=defer_sync)
        return name

    def abort(self) -> None:
        """Remove what was written of a pack that will not be committed (nothing after commit)."""
        if self._file is not None:
            self._file.abort()

    @property
    def full(self) -> bool:
        return pack_is_full(self.size, self.target_size)

    @property
    def empty(self) -> bool:
        return not self.entries

    @property
    def spilling(self) -> bool:
        """Enough has been added since the last ``take`` to write it as one piece."""
        return self.pending_size >= SEGMENT


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
