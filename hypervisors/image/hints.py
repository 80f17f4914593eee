"""Changed-extent hints in the JSON that ``rbd diff --format=json`` prints (Benji reads them too).

    [{"offset": 0, "length": 4194304, "exists": "true"}, ...]

``exists`` is "true" for written extents and "false" for discarded ones; both changed, so both
are read (a discarded extent reads back as zeros and costs nothing to store).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..base import Extent, merge_extents
from .exceptions import HintsError


def load_hints(path: Path, capacity: int) -> list[Extent]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HintsError(f"cannot read hints file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise HintsError(f"hints file {path} is not JSON (not UTF-8 text)") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HintsError(f"hints file {path} is not JSON: {exc.msg} at line {exc.lineno}") from None
    return parse_hints(doc, capacity, str(path))


def parse_hints(doc: object, capacity: int, where: str) -> list[Extent]:
    if not isinstance(doc, list):
        raise HintsError(f"hints file {where}: expected a JSON array of extents")
    extents = []
    for n, item in enumerate(doc):
        if not isinstance(item, dict):
            raise HintsError(f"hints file {where}: entry {n} is not an object")
        offset, length = item.get("offset"), item.get("length")
        if not _is_int(offset) or not _is_int(length):
            raise HintsError(f"hints file {where}: entry {n} needs integer 'offset' and 'length'")
        assert isinstance(offset, int) and isinstance(length, int)
        if offset < 0 or length < 0:
            raise HintsError(f"hints file {where}: entry {n} has a negative offset or length")
        if offset + length > capacity:
            raise HintsError(
                f"hints file {where}: entry {n} (offset {offset}, length {length}) extends past "
                f"the end of the image ({capacity} bytes)"
            )
        exists = item.get("exists", "true")
        if exists not in ("true", "false", True, False):
            raise HintsError(f"hints file {where}: entry {n} has 'exists' {exists!r}, not true or false")
        extents.append(Extent(offset, length))
    return merge_extents(extents)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
