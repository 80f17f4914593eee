"""Detecting all-zero blocks, which are never stored."""

from __future__ import annotations

_ZEROS = bytes(1 << 20)


def is_zero(data: bytes | memoryview) -> bool:
    """True if every byte is zero (a memcmp against a zero buffer, several GB/s)."""
    n = len(data)
    if n <= len(_ZEROS):
        return data == _ZEROS[:n] if n != len(_ZEROS) else data == _ZEROS
    view = memoryview(data)
    return all(view[o : o + len(_ZEROS)] == _ZEROS[: min(len(_ZEROS), n - o)] for o in range(0, n, len(_ZEROS)))
