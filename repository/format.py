"""The on-disk format, in one place. docs/FORMAT.md describes the same bytes in prose.

Everything that fixes a byte on disk is here: magics, struct layouts, type codes and
flags. Encoding and decoding of the small fixed headers lives beside the layout so the
two cannot drift apart. Multi-byte integers are little-endian throughout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag, StrEnum

from .exceptions import CorruptRepository


class BlobType(IntEnum):
    """What a frame in a pack holds."""

    DATA = 0  # a disk block (raw length <= block size)
    TREE = 1  # a tree node of a recovery point's block-reference list


class FrameFlags(IntFlag):
    """How a frame's payload was transformed, in the order applied when writing."""

    NONE = 0
    ZSTD = 1  # payload (before encryption) is a zstd frame
    AES_GCM = 2  # payload is nonce(12) || AES-256-GCM ciphertext || tag(16)


class Encryption(StrEnum):
    """How a repository's frames and sealed files are protected (``encryption`` of config and keys)."""

    NONE = "none"
    AES_256_GCM = "aes-256-gcm"


class SealedKind(IntEnum):
    """What a sealed file (index, recovery point) holds."""

    INDEX = 1
    POINT = 2
    DAMAGE = 3  # a damage record (repository/damage.py)


@dataclass(frozen=True)
class Format:
    """Constants of repository format version 1."""

    VERSION: int = 1
    ID_SIZE: int = 32  # keyed BLAKE3-256
    ZERO_ID: bytes = bytes(32)  # reference to an all-zero block or subtree; never stored
    NONCE_SIZE: int = 12
    TAG_SIZE: int = 16
    KEY_SIZE: int = 32

    # Pack file: header, then frames back to back. Nothing after the last frame.
    PACK_MAGIC: bytes = b"VMKPACK\x01"

    # Frame: header then payload.
    #   magic "VMKB", type u8, flags u8, reserved u16, stored_len u32, raw_len u32,
    #   id 32 bytes, checksum u64 = xxh3_64(header[0:48] || payload)
    FRAME_MAGIC: bytes = b"VMKB"
    FRAME_HEADER: struct.Struct = struct.Struct("<4sBBHII32sQ")

    # Sealed file (index, recovery point): header then payload.
    #   magic "VMKF", version u8, kind u8, flags u8, reserved u8,
    #   checksum u64 = xxh3_64(header[0:8] || payload)
    SEALED_MAGIC: bytes = b"VMKF"
    SEALED_HEADER: struct.Struct = struct.Struct("<4sBBBBQ")

    # Tree node (the raw content of a TREE blob):
    #   magic "VMKT", level u8, reserved 3 bytes, count u32, then count ids of 32 bytes.
    TREE_MAGIC: bytes = b"VMKT"
    TREE_HEADER: struct.Struct = struct.Struct("<4sB3xI")

    # Index payload: u32 pack count; per pack: name (32 bytes), u32 entry count,
    # then entries: id 32, type u8, offset u32, length u32 (header + payload),
    # raw_len u32, checksum u64.
    INDEX_COUNT: struct.Struct = struct.Struct("<I")
    INDEX_PACK: struct.Struct = struct.Struct("<32sI")
    INDEX_ENTRY: struct.Struct = struct.Struct("<32sBIIIQ")

    MAX_PACK_SIZE: int = (1 << 32) - 1  # offsets and lengths are u32


FORMAT = Format()


@dataclass(frozen=True, slots=True)
class FrameHeader:
    blob_type: BlobType
    flags: FrameFlags
    stored_len: int
    raw_len: int
    blob_id: bytes
    checksum: int

    SIZE = FORMAT.FRAME_HEADER.size

    def pack(self) -> bytes:
        return FORMAT.FRAME_HEADER.pack(
            FORMAT.FRAME_MAGIC,
            self.blob_type,
            self.flags,
            0,
            self.stored_len,
            self.raw_len,
            self.blob_id,
            self.checksum,
        )

    @classmethod
    def unpack(cls, data: bytes, where: str) -> FrameHeader:
        if len(data) < cls.SIZE:
            raise CorruptRepository(f"{where}: truncated frame header")
        magic, btype, flags, _res, stored_len, raw_len, blob_id, checksum = FORMAT.FRAME_HEADER.unpack_from(data)
        if magic != FORMAT.FRAME_MAGIC:
            raise CorruptRepository(f"{where}: bad frame magic")
        try:
            return cls(BlobType(btype), FrameFlags(flags), stored_len, raw_len, blob_id, checksum)
        except ValueError as exc:
            raise CorruptRepository(f"{where}: bad frame type or flags") from exc


FRAME_HEADER_SIZE = FrameHeader.SIZE
# The part of the frame header the checksum covers (everything before the checksum).
FRAME_CHECKED_PREFIX = FRAME_HEADER_SIZE - 8
SEALED_HEADER_SIZE = FORMAT.SEALED_HEADER.size
SEALED_CHECKED_PREFIX = SEALED_HEADER_SIZE - 8
TREE_HEADER_SIZE = FORMAT.TREE_HEADER.size
INDEX_ENTRY_SIZE = FORMAT.INDEX_ENTRY.size
