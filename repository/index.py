"""Index files (which pack holds which blob) and the compact in-memory index built from them."""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, overload

from .exceptions import CorruptRepository
from .format import FORMAT, INDEX_ENTRY_SIZE, BlobType


class IndexEntry(NamedTuple):
    """Where one frame lies in its pack. ``length`` counts header and payload.

    A NamedTuple rather than a frozen dataclass: every command that writes reads every entry of
    the index, and a frozen dataclass takes 1.2 us to build against 0.5 us (0.7 s per million
    entries, of a repository of 1 TiB in 1 MiB blocks).
    """

    blob_id: bytes
    blob_type: BlobType
    offset: int
    length: int
    raw_len: int
    checksum: int


@dataclass(frozen=True, slots=True)
class BlobLocation:
    pack: str  # pack name: 64 hex digits
    entry: IndexEntry


def encode_index(packs: dict[str, list[IndexEntry]]) -> bytes:
    """The payload of an index file (sealed by the codec before it is written)."""
    out = [FORMAT.INDEX_COUNT.pack(len(packs))]
    for pack, entries in packs.items():
        out.append(FORMAT.INDEX_PACK.pack(bytes.fromhex(pack), len(entries)))
        out.extend(
            FORMAT.INDEX_ENTRY.pack(e.blob_id, e.blob_type, e.offset, e.length, e.raw_len, e.checksum) for e in entries
        )
    return b"".join(out)


# Blob types by their number: a dict lookup per entry, where BlobType(n) costs an enum call (an
# index of 100,000 entries is read by every command that writes).
_BLOB_TYPES = {t.value: t for t in BlobType}


def decode_index(payload: bytes, where: str) -> dict[str, list[IndexEntry]]:
    try:
        (npacks,) = FORMAT.INDEX_COUNT.unpack_from(payload, 0)
        pos = FORMAT.INDEX_COUNT.size
        packs: dict[str, list[IndexEntry]] = {}
        for _ in range(npacks):
            name, count = FORMAT.INDEX_PACK.unpack_from(payload, pos)
            pos += FORMAT.INDEX_PACK.size
            end = pos + count * INDEX_ENTRY_SIZE
            if end > len(payload):
                raise CorruptRepository(f"{where}: truncated")
            packs[name.hex()] = [
                IndexEntry(bid, _BLOB_TYPES[btype], off, length, raw_len, csum)
                for bid, btype, off, length, raw_len, csum in FORMAT.INDEX_ENTRY.iter_unpack(payload[pos:end])
            ]
            pos = end
    except KeyError as exc:
        raise CorruptRepository(f"{where}: malformed index (unknown blob type {exc})") from None
    except (struct.error, ValueError) as exc:
        raise CorruptRepository(f"{where}: malformed index ({exc})") from None
    if pos != len(payload):
        raise CorruptRepository(f"{where}: trailing bytes")
    return packs


class BlockIndex:
    """id -> locations of every blob in the repository, and which copies are known damaged.

    Held as one sorted buffer of fixed 57-byte records (about 57 MB per million blocks,
    a third of what a dict of objects costs), searched by bisection; copies of one blob are
    adjacent. Index files written by this process later are added to a small dict beside it.

    ``files`` and ``damage_files`` are the names it was built from (plus those this process
    wrote): the repository compares them with a fresh listing whenever a lock is taken, so an
    index is never trusted beyond the lock under which it was read.
    """

    _RECORD = struct.Struct("<32sIIIIBQ")  # id, pack number, offset, length, raw_len, type, checksum

    def __init__(self) -> None:
        self._packs: list[str] = []
        self._pack_numbers: dict[str, int] = {}
        self._table = b""
        self._keys: _Keys = _Keys(self._table, self._RECORD.size)
        self._added: dict[bytes, list[BlobLocation]] = {}
        self._bad: dict[tuple[str, int], str] = {}  # (pack, offset) -> why the copy is damaged
        self.missing: set[bytes] = set()  # blobs recorded as having no intact copy anywhere
        self.files: set[str] = set()  # index files this was built from, and those added since
        self.damage_files: set[str] = set()  # damage records applied
        self.damaged_files: dict[str, str] = {}  # index files that could not be read -> why

    @classmethod
    def build(cls, files: Iterable[dict[str, list[IndexEntry]]]) -> BlockIndex:
        index = cls()
        records: list[bytes] = []
        for packs in files:
            for pack, entries in packs.items():
                number = index._pack_number(pack)
                records.extend(
                    cls._RECORD.pack(e.blob_id, number, e.offset, e.length, e.raw_len, e.blob_type, e.checksum)
                    for e in entries
                )
        records.sort()
        index._table = b"".join(records)
        index._keys = _Keys(index._table, cls._RECORD.size)
        return index

    def _pack_number(self, pack: str) -> int:
        number = self._pack_numbers.get(pack)
        if number is None:
            number = self._pack_numbers[pack] = len(self._packs)
            self._packs.append(pack)
        return number

    def __len__(self) -> int:
        return len(self._keys) + sum(len(v) for v in self._added.values())

    def __contains__(self, blob_id: object) -> bool:
        """True if the blob has a copy not known to be damaged: a writer may deduplicate against it."""
        return isinstance(blob_id, bytes) and self.lookup(blob_id) is not None

    def lookup(self, blob_id: bytes) -> BlobLocation | None:
        """A copy of the blob not known to be damaged, or None."""
        for loc in self._all_copies(blob_id):
            if not self._bad or (loc.pack, loc.entry.offset) not in self._bad:
                return loc
        return None

    def copies(self, blob_id: bytes) -> list[BlobLocation]:
        """Every copy of the blob: those not known to be damaged first."""
        found = list(self._all_copies(blob_id))
        if self._bad:
            found.sort(key=self.is_bad)
        return found

    def _all_copies(self, blob_id: bytes) -> Iterator[BlobLocation]:
        i = bisect.bisect_left(self._keys, blob_id)
        while i < len(self._keys) and self._keys[i] == blob_id:
            yield self._location(i)
            i += 1
        yield from self._added.get(blob_id, ())

    def add_file(self, name: str, packs: dict[str, list[IndexEntry]]) -> None:
        """Take in an index file this process has just made durable."""
        for pack, entries in packs.items():
            for entry in entries:
                self._added.setdefault(entry.blob_id, []).append(BlobLocation(pack, entry))
        self.files.add(name)

    def mark_bad(self, pack: str, offset: int, why: str) -> None:
        """Record that the copy at ``pack``@``offset`` is damaged: it is never chosen again."""
        self._bad[(pack, offset)] = why

    def is_bad(self, location: BlobLocation) -> bool:
        return (location.pack, location.entry.offset) in self._bad

    def bad_reason(self, location: BlobLocation) -> str | None:
        return self._bad.get((location.pack, location.entry.offset))

    @property
    def has_damage(self) -> bool:
        """True if some copy or blob is known damaged or missing (backups then check what they reuse)."""
        return bool(self._bad or self.missing)

    def packs(self) -> list[str]:
        """Every pack some index entry refers to."""
        added = {loc.pack for locs in self._added.values() for loc in locs}
        return list(self._packs) + sorted(added - set(self._packs))

    def locations(self) -> Iterator[BlobLocation]:
        """Every entry, duplicates and damaged copies included (a blob may sit in more than one pack)."""
        for i in range(len(self._keys)):
            yield self._location(i)
        for locs in self._added.values():
            yield from locs

    def _location(self, i: int) -> BlobLocation:
        bid, number, off, length, raw_len, btype, csum = self._RECORD.unpack_from(self._table, i * self._RECORD.size)
        return BlobLocation(self._packs[number], IndexEntry(bid, BlobType(btype), off, length, raw_len, csum))


class _Keys(Sequence[bytes]):
    """The ids of a record table, as a sequence bisect can search without copying it."""

    def __init__(self, table: bytes, size: int) -> None:
        self._view = memoryview(table)
        self._size = size
        self._n = len(table) // size

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            raise TypeError("slicing is not supported")
        if not 0 <= i < self._n:
            raise IndexError(i)
        off = i * self._size
        return bytes(self._view[off : off + 32])
