"""Which blocks of a VHDX hold data: its block allocation table (BAT), read in one request.

A full read skips the rest, as vSphere's ``changeId="*"`` lets it (the engine checks a sample
of the skipped blocks are zeros). The BAT is read whole rather than entry by entry, since each
entry would be a round trip over SMB. Payload entries interleave with one sector-bitmap entry
per chunk (VHDX specification 2.5: ``chunk_ratio`` payload blocks, then a bitmap entry).
"""

from __future__ import annotations

import struct
from typing import Any

from ..base import Extent, merge_extents

STATE_MASK = 0b111
FULLY_PRESENT = 6
PARTIALLY_PRESENT = 7


def allocated_extents(vhdx: Any) -> list[Extent]:
    """Extents of the virtual disk whose blocks are present in the file (dissect's ``VHDX``)."""
    bat = vhdx.bat
    size, block_size, ratio = int(vhdx.size), int(vhdx.block_size), int(bat.chunk_ratio)
    blocks = -(-size // block_size)
    vhdx.fh.seek(bat.offset)
    table = vhdx.fh.read(int(bat.entry_count) * 8)
    extents = []
    for block in range(blocks):
        index = block + block // ratio
        if (index + 1) * 8 > len(table):
            raise ValueError(f"the BAT ends before block {block}")
        (entry,) = struct.unpack_from("<Q", table, index * 8)
        if entry & STATE_MASK in (FULLY_PRESENT, PARTIALLY_PRESENT):
            offset = block * block_size
            extents.append(Extent(offset, min(block_size, size - offset)))
    return merge_extents(extents)
