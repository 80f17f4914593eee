"""Formatting for people (sizes, durations, tables) and for scripts (JSON on stdout)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Any

from .exceptions import ConfigError

_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)


def human_size(n: float) -> str:
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> int:
    """``1048576``, ``1M``, ``1MiB``, ``64k``: binary multiples."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"not a size: {text!r} (use e.g. 1M, 512K, 4194304)")
    number, prefix = float(match.group(1)), match.group(2).lower()
    value = number * 1024 ** ("_kmgtp".index(prefix) if prefix else 0)
    if value != int(value):
        raise ConfigError(f"not a whole number of bytes: {text!r}")
    return int(value)


def human_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate(nbytes: float, seconds: float) -> str:
    return f"{nbytes / seconds / 1e6:.0f} MB/s" if seconds > 0 else "-"


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None) -> None:
    right = right or set()
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    print(line(headers))
    for row in rows:
        print(line(row))
