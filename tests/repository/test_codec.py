"""Frames and sealed files: round trips, and every kind of damage detected."""

from __future__ import annotations

import os

import pytest

from vmkeep.repository.codec import Codec
from vmkeep.repository.exceptions import CorruptRepository
from vmkeep.repository.format import FRAME_HEADER_SIZE, BlobType, FrameFlags, FrameHeader, SealedKind
from vmkeep.repository.keys import Keys

RANDOM = os.urandom(100_000)
TEXT = b"compressible text " * 5000


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def codec(request: pytest.FixtureRequest) -> Codec:
    return Codec(Keys.generate(encrypted=request.param), compression_level=3)


@pytest.mark.parametrize("raw", [RANDOM, TEXT, b"x"], ids=["random", "text", "tiny"])
def test_frame_round_trip(codec: Codec, raw: bytes) -> None:
    blob_id = codec.blob_id(raw)
    frame = codec.encode_frame(BlobType.DATA, blob_id, raw)
    header = FrameHeader.unpack(frame[:FRAME_HEADER_SIZE], "t")
    assert header.blob_id == blob_id and header.raw_len == len(raw)
    assert bool(header.flags & FrameFlags.AES_GCM) == codec.encrypted
    assert codec.decode_frame(frame, "t", expected_id=blob_id) == raw


def test_compression_is_kept_only_when_it_pays(codec: Codec) -> None:
    text = codec.encode_frame(BlobType.DATA, codec.blob_id(TEXT), TEXT)
    rand = codec.encode_frame(BlobType.DATA, codec.blob_id(RANDOM), RANDOM)
    assert FrameHeader.unpack(text[:FRAME_HEADER_SIZE], "t").flags & FrameFlags.ZSTD
    assert len(text) < len(TEXT) // 10
    assert not FrameHeader.unpack(rand[:FRAME_HEADER_SIZE], "t").flags & FrameFlags.ZSTD


def test_ids_are_keyed(codec: Codec) -> None:
    other = Codec(Keys.generate(encrypted=False))
    assert codec.blob_id(TEXT) != other.blob_id(TEXT)
    assert codec.blob_id(TEXT) == codec.blob_id(bytes(TEXT))


@pytest.mark.parametrize("position", [0, 5, 20, 50, FRAME_HEADER_SIZE, FRAME_HEADER_SIZE + 30, -1])
def test_any_flipped_bit_is_detected(codec: Codec, position: int) -> None:
    frame = bytearray(codec.encode_frame(BlobType.DATA, codec.blob_id(TEXT), TEXT))
    frame[position] ^= 0x01
    with pytest.raises(CorruptRepository):
        codec.decode_frame(bytes(frame), "t")


def test_a_frame_cannot_be_passed_off_as_another_block(codec: Codec) -> None:
    frame = codec.encode_frame(BlobType.DATA, codec.blob_id(TEXT), TEXT)
    with pytest.raises(CorruptRepository, match="not the one indexed"):
        codec.decode_frame(frame, "t", expected_id=codec.blob_id(RANDOM))


def test_encrypted_frame_rebadged_with_a_valid_checksum_fails_authentication() -> None:
    """An attacker who recomputes the xxh3 checksum still cannot move a frame to another id."""
    import xxhash

    codec = Codec(Keys.generate(encrypted=True))
    frame = bytearray(codec.encode_frame(BlobType.DATA, codec.blob_id(TEXT), TEXT))
    frame[16:48] = codec.blob_id(RANDOM)
    hasher = xxhash.xxh3_64(bytes(frame[:48]))
    hasher.update(bytes(frame[FRAME_HEADER_SIZE:]))
    frame[48:56] = hasher.intdigest().to_bytes(8, "little")
    with pytest.raises(CorruptRepository, match="authentication failed"):
        codec.decode_frame(bytes(frame), "t")


def test_sealed_files(codec: Codec) -> None:
    payload = b'{"hello": "world"}' * 100
    sealed = codec.seal(SealedKind.POINT, payload)
    assert codec.unseal(SealedKind.POINT, sealed, "t") == payload
    with pytest.raises(CorruptRepository, match="not a vmkeep index"):
        codec.unseal(SealedKind.INDEX, sealed, "t")
    damaged = bytearray(sealed)
    damaged[-3] ^= 0x80
    with pytest.raises(CorruptRepository):
        codec.unseal(SealedKind.POINT, bytes(damaged), "t")
    if codec.encrypted:
        assert b"hello" not in sealed
