"""Ids, compression, encryption and checksums: done once here, for every backend.

A backend only stores named files (see backend.py). Everything that turns a block into
bytes on disk and back, and every integrity check on those bytes, is in this module.
"""

from __future__ import annotations

import os
import struct
import threading

import blake3
import xxhash
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .exceptions import CorruptRepository
from .format import (
    FORMAT,
    FRAME_CHECKED_PREFIX,
    FRAME_HEADER_SIZE,
    SEALED_CHECKED_PREFIX,
    SEALED_HEADER_SIZE,
    BlobType,
    FrameFlags,
    FrameHeader,
    SealedKind,
)
from .keys import Keys

# Keep a compressed payload only if it saves at least 1/32 of the block: below that,
# the CPU spent decompressing on restore buys too little.
_MIN_SAVING_SHIFT = 5
_U64 = struct.Struct("<Q")


class Codec:
    """Turns raw blobs into frames and sealed files, and back. Thread-safe."""

    def __init__(self, keys: Keys, compression_level: int = 3) -> None:
        self._id_key = keys.id_key
        self._aead = AESGCM(keys.data_key) if keys.data_key is not None else None
        self.compression_level = compression_level
        self._local = threading.local()

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    # -- ids ------------------------------------------------------------------------------

    def blob_id(self, raw: bytes | memoryview) -> bytes:
        """Keyed BLAKE3-256 of the raw content."""
        return blake3.blake3(raw, key=self._id_key).digest()

    # -- frames ---------------------------------------------------------------------------

    def encode_frame(self, blob_type: BlobType, blob_id: bytes, raw: bytes | memoryview) -> bytes:
        """Header and payload of one frame, ready to append to a pack."""
        flags = FrameFlags.NONE
        payload: bytes | memoryview = raw
        if self.compression_level > 0:
            compressed = self._compressor().compress(raw)
            if len(compressed) <= len(raw) - (len(raw) >> _MIN_SAVING_SHIFT):
                payload = compressed
                flags |= FrameFlags.ZSTD
        if self._aead is not None:
            flags |= FrameFlags.AES_GCM
            nonce = os.urandom(FORMAT.NONCE_SIZE)
            payload = nonce + self._aead.encrypt(nonce, bytes(payload), _frame_aad(blob_type, blob_id))
        prefix = FrameHeader(blob_type, flags, len(payload), len(raw), blob_id, 0).pack()[:FRAME_CHECKED_PREFIX]
        hasher = xxhash.xxh3_64(prefix)
        hasher.update(payload)
        return prefix + _U64.pack(hasher.intdigest()) + bytes(payload)

    def check_frame(self, frame: bytes | memoryview, where: str) -> FrameHeader:
        """Parse a frame's header and check its checksum, without decrypting or decompressing."""
        header = FrameHeader.unpack(bytes(frame[:FRAME_HEADER_SIZE]), where)
        if len(frame) != FRAME_HEADER_SIZE + header.stored_len:
            raise CorruptRepository(f"{where}: frame length {len(frame)} does not match its header")
        view = memoryview(frame)  # no copy of the payload for the checksum
        hasher = xxhash.xxh3_64(view[:FRAME_CHECKED_PREFIX])
        hasher.update(view[FRAME_HEADER_SIZE:])
        if hasher.intdigest() != header.checksum:
            raise CorruptRepository(f"{where}: checksum mismatch (bit rot or a torn write)")
        return header

    def decode_frame(self, frame: bytes | memoryview, where: str, expected_id: bytes | None = None) -> bytes:
        """Check, decrypt and decompress a frame; verify the content against its id."""
        header = self.check_frame(frame, where)
        if expected_id is not None and header.blob_id != expected_id:
            raise CorruptRepository(f"{where}: frame holds block {header.blob_id.hex()[:16]}, not the one indexed")
        # A view, not a slice: slicing bytes copies the payload (twice, with the nonce split off).
        payload: bytes | memoryview = memoryview(frame)[FRAME_HEADER_SIZE:]
        if header.flags & FrameFlags.AES_GCM:
            if self._aead is None:
                raise CorruptRepository(f"{where}: encrypted frame in an unencrypted repository")
            try:
                payload = self._aead.decrypt(
                    payload[: FORMAT.NONCE_SIZE],
                    payload[FORMAT.NONCE_SIZE :],
                    _frame_aad(header.blob_type, header.blob_id),
                )
            except InvalidTag:
                raise CorruptRepository(f"{where}: authentication failed") from None
        if header.flags & FrameFlags.ZSTD:
            try:
                raw = self._decompressor().decompress(payload, max_output_size=header.raw_len)
            except zstandard.ZstdError as exc:
                raise CorruptRepository(f"{where}: cannot decompress: {exc}") from None
        else:
            raw = bytes(payload)
        if len(raw) != header.raw_len:
            raise CorruptRepository(f"{where}: content length {len(raw)} != {header.raw_len}")
        if self.blob_id(raw) != header.blob_id:
            raise CorruptRepository(f"{where}: content does not match its id")
        return raw

    # -- sealed files (index, recovery point) ---------------------------------------------

    def seal(self, kind: SealedKind, payload: bytes) -> bytes:
        flags = FrameFlags.NONE
        body: bytes = payload
        compressed = self._compressor().compress(payload)
        if len(compressed) < len(payload):
            body, flags = compressed, flags | FrameFlags.ZSTD
        if self._aead is not None:
            flags |= FrameFlags.AES_GCM
        prefix = FORMAT.SEALED_HEADER.pack(FORMAT.SEALED_MAGIC, FORMAT.VERSION, kind, flags, 0, 0)
        prefix = prefix[:SEALED_CHECKED_PREFIX]
        if self._aead is not None:
            nonce = os.urandom(FORMAT.NONCE_SIZE)
            body = nonce + self._aead.encrypt(nonce, body, prefix)
        checksum = xxhash.xxh3_64(prefix)
        checksum.update(body)
        return prefix + _U64.pack(checksum.intdigest()) + body

    def unseal(self, kind: SealedKind, data: bytes, where: str) -> bytes:
        if len(data) < SEALED_HEADER_SIZE:
            raise CorruptRepository(f"{where}: truncated")
        magic, version, file_kind, flags, _res, checksum = FORMAT.SEALED_HEADER.unpack_from(data)
        if magic != FORMAT.SEALED_MAGIC or version != FORMAT.VERSION or file_kind != kind:
            raise CorruptRepository(f"{where}: not a vmkeep {kind.name.lower()} file")
        hasher = xxhash.xxh3_64(data[:SEALED_CHECKED_PREFIX])
        hasher.update(memoryview(data)[SEALED_HEADER_SIZE:])
        if hasher.intdigest() != checksum:
            raise CorruptRepository(f"{where}: checksum mismatch")
        body = data[SEALED_HEADER_SIZE:]
        if flags & FrameFlags.AES_GCM:
            if self._aead is None:
                raise CorruptRepository(f"{where}: encrypted file in an unencrypted repository")
            try:
                body = self._aead.decrypt(
                    body[: FORMAT.NONCE_SIZE], body[FORMAT.NONCE_SIZE :], data[:SEALED_CHECKED_PREFIX]
                )
            except InvalidTag:
                raise CorruptRepository(f"{where}: authentication failed") from None
        elif self._aead is not None:
            raise CorruptRepository(f"{where}: unencrypted file in an encrypted repository")
        if flags & FrameFlags.ZSTD:
            try:
                body = self._decompressor().decompress(body)
            except zstandard.ZstdError as exc:
                raise CorruptRepository(f"{where}: cannot decompress: {exc}") from None
        return body

    # -- per-thread zstd contexts (they are not thread-safe) ------------------------------

    def _compressor(self) -> zstandard.ZstdCompressor:
        comp: zstandard.ZstdCompressor | None = getattr(self._local, "comp", None)
        if comp is None:
            comp = zstandard.ZstdCompressor(level=max(self.compression_level, 1), write_content_size=True)
            self._local.comp = comp
        return comp

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        dec: zstandard.ZstdDecompressor | None = getattr(self._local, "dec", None)
        if dec is None:
            dec = zstandard.ZstdDecompressor()
            self._local.dec = dec
        return dec


def _frame_aad(blob_type: BlobType, blob_id: bytes) -> bytes:
    """Authenticated data of a frame: an encrypted frame cannot be moved to another id."""
    return bytes([blob_type]) + blob_id
