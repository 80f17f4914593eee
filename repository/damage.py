"""Damage records: which stored copies are known bad, and which referenced blobs have none left.

``verify`` and ``repair`` write them; every index load applies them. A damaged copy is then
never chosen to read, to keep in gc, or to deduplicate against: the next backup that meets
the same content stores it afresh, which also heals every older point that references it
(PBS marks such chunks ``.bad``; NAKIVO calls it self-healing). A blob listed as *missing*
has no intact copy at all: backups then check what they would reuse from the previous point.

Records are sealed files in ``damage/``, named by their content like every other file.
gc and repair, which rewrite the index without the damaged copies, replace them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .exceptions import CorruptRepository
from .points import format_time, parse_time
from .validate import hex_id, typed, versioned

DAMAGE_DIR = "damage"
DAMAGE_VERSION = 1


@dataclass(frozen=True, order=True)
class DamagedCopy:
    """One stored copy of a blob that failed its checks (or whose pack is gone)."""

    blob_id: bytes
    pack: str
    offset: int
    why: str = field(compare=False)


@dataclass(frozen=True)
class DamageRecord:
    copies: tuple[DamagedCopy, ...] = ()
    missing: tuple[bytes, ...] = ()  # blobs points use that have no intact copy anywhere
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __bool__(self) -> bool:
        return bool(self.copies or self.missing)

    def to_payload(self) -> bytes:
        doc = {
            "version": DAMAGE_VERSION,
            "time": format_time(self.time),
            "copies": [
                {"id": c.blob_id.hex(), "pack": c.pack, "offset": c.offset, "why": c.why} for c in sorted(self.copies)
            ],
            "missing": sorted(m.hex() for m in self.missing),
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_payload(cls, payload: bytes, name: str) -> DamageRecord:
        try:
            doc = versioned(payload, DAMAGE_VERSION, "damage record")
            copies = []
            for item in typed(doc, "copies", list):
                if not isinstance(item, dict):
                    raise TypeError("a copy is not an object")
                offset = typed(item, "offset", int)
                if offset < 0:
                    raise ValueError("negative offset")
                copies.append(
                    DamagedCopy(
                        bytes.fromhex(hex_id(item, "id")), hex_id(item, "pack"), offset, typed(item, "why", str)
                    )
                )
            missing = []
            for text in typed(doc, "missing", list):
                if not isinstance(text, str):
                    raise TypeError("a missing id is not a string")
                missing.append(bytes.fromhex(hex_id({"id": text}, "id")))
            return cls(tuple(copies), tuple(missing), parse_time(typed(doc, "time", str)))
        except (ValueError, TypeError, KeyError) as exc:
            raise CorruptRepository(f"{name}: malformed damage record ({exc})") from None
