"""Recovery points: what was backed up, when, from where, and the root of each disk's tree."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .exceptions import CorruptRepository
from .validate import hex_id, number, optional, typed, versioned

POINT_DIR = "points"
POINT_VERSION = 1


class ReadMode(StrEnum):
    """How a disk was read for a point."""

    FULL = "full"
    INCREMENTAL = "incremental"


MODE_FULL = ReadMode.FULL
MODE_INCREMENTAL = ReadMode.INCREMENTAL


@dataclass
class DiskRecord:
    """One disk of a recovery point, with the statistics of the backup that made it."""

    key: str  # the disk's key in its VM (vSphere device key, Hyper-V controller location, "disk0")
    capacity: int  # bytes
    tree: str  # hex id of the root of the block-reference tree
    label: str = ""  # for people: "Hard disk 1"; empty when the source gives none
    mode: ReadMode = MODE_FULL  # how this disk was read
    reason: str | None = None  # why a full read was done, when it was
    change_token: str | None = None  # vSphere changeId / Hyper-V RCT id at the snapshot
    identity: dict[str, Any] = field(default_factory=dict)  # uuid, path...: a change forces a full read
    read_bytes: int = 0  # bytes read from the source, the sanity-check sample included
    sanity_bytes: int = 0  # of those, bytes re-read only to check change tracking or an allocation map
    sanity_windows: int = 0  # how many windows (distinct places) those sanity bytes were read from
    new_bytes: int = 0  # raw bytes of blocks that were new to the repository
    stored_bytes: int = 0  # bytes those new blocks take on disk (compressed, with frame headers)
    zero_bytes: int = 0  # bytes read that were all zeros (not stored)
    changed_blocks: int = 0  # blocks read because they changed (or all blocks, on a full read)

    @property
    def name(self) -> str:
        """How people call the disk: its label ("Hard disk 1"), else "disk KEY"."""
        return self.label or f"disk {self.key}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> DiskRecord:
        """A disk record as stored; TypeError/KeyError/ValueError naming the field if it is not one."""
        counters = {
            name: typed(doc, name, int)
            for name in (
                "capacity",
                "read_bytes",
                "sanity_bytes",
                "sanity_windows",
                "new_bytes",
                "stored_bytes",
                "zero_bytes",
                "changed_blocks",
            )
            if name == "capacity" or name in doc
        }
        if any(v < 0 for v in counters.values()):
            raise ValueError("a size or count is negative")
        return cls(
            key=typed(doc, "key", str),
            label=optional(doc, "label", str, ""),
            tree=hex_id(doc, "tree"),
            mode=ReadMode(typed(doc, "mode", str)),
            reason=optional(doc, "reason", str, None),
            change_token=optional(doc, "change_token", str, None),
            identity=optional(doc, "identity", dict, {}),
            **counters,
        )


@dataclass(frozen=True)
class ChainKey:
    """Which VM a point belongs to: its name, the kind of source, and the source's chain id.

    ``chain`` identifies the VM beyond its name (the vSphere instance uuid, an image's path):
    two VMs called web01 on two vCenters are two chains. Backups continue a chain (the base of
    an incremental is the newest point of the same chain) and retention judges each chain on
    its own, both through this one key.
    """

    vm: str
    source_type: str
    chain: str | None

    @classmethod
    def of(cls, vm: str, source: Mapping[str, Any]) -> ChainKey:
        chain = source.get("chain")
        return cls(vm, str(source.get("type", "")), None if chain is None else str(chain))

    def continues(self, other: ChainKey) -> bool:
        """Same VM name and kind of source and, where both record one, the same chain id."""
        if (self.vm, self.source_type) != (other.vm, other.source_type):
            return False
        return self.chain is None or other.chain is None or self.chain == other.chain

    @property
    def sort_key(self) -> tuple[str, str, str]:
        return self.vm, self.source_type, self.chain or ""

    def describe(self) -> str:
        """``VM web01 (image /dev/vg0/web01)``: how the CLI names a chain."""
        source = " ".join(part for part in (self.source_type, self.chain) if part)
        return f"VM {self.vm}" + (f" ({source})" if source else "")

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "source_type": self.source_type, "chain": self.chain}


@dataclass
class RecoveryPoint:
    vm: str
    time: datetime
    disks: list[DiskRecord]
    block_size: int
    source: dict[str, Any] = field(default_factory=dict)  # {"type": "image" | "vsphere" ..., ...}
    hardware: dict[str, Any] = field(default_factory=dict)  # what restore-to-host needs
    parent: str | None = None  # point the incremental read was based on (informational only)
    hostname: str = ""
    duration: float = 0.0
    warnings: list[str] = field(default_factory=list)  # what the backup said needs knowing ("tracking was reset")
    id: str = ""  # the point file's name; not part of its content

    @property
    def kind(self) -> str:
        """``incremental`` when every disk was read incrementally, else ``full``."""
        if self.disks and all(d.mode == MODE_INCREMENTAL for d in self.disks):
            return MODE_INCREMENTAL
        return MODE_FULL

    @property
    def chain_key(self) -> ChainKey:
        return ChainKey.of(self.vm, self.source)

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def disk(self, key: str) -> DiskRecord | None:
        return next((d for d in self.disks if d.key == key), None)

    def to_payload(self) -> bytes:
        doc = {
            "version": POINT_VERSION,
            "vm": self.vm,
            "time": format_time(self.time),
            "block_size": self.block_size,
            "source": self.source,
            "hardware": self.hardware,
            "parent": self.parent,
            "hostname": self.hostname,
            "duration": round(self.duration, 3),
            "warnings": list(self.warnings),
            "disks": [d.to_json() for d in self.disks],
        }
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_payload(cls, payload: bytes, point_id: str) -> RecoveryPoint:
        """Parse and check a point file's payload; CorruptRepository naming the file if it is not one.

        Fields this version does not know are ignored (a later minor addition); a wrong type, a
        missing field or another version is damage.
        """
        try:
            doc = versioned(payload, POINT_VERSION, "point")
            block_size = typed(doc, "block_size", int)
            if block_size <= 0:
                raise ValueError("block_size is not positive")
            disks = []
            for item in typed(doc, "disks", list):
                if not isinstance(item, dict):
                    raise TypeError("a disk is not an object")
                disks.append(DiskRecord.from_json(item))
            return cls(
                id=point_id,
                vm=typed(doc, "vm", str),
                time=parse_time(typed(doc, "time", str)),
                block_size=block_size,
                source=optional(doc, "source", dict, {}),
                hardware=optional(doc, "hardware", dict, {}),
                parent=optional(doc, "parent", str, None),
                hostname=optional(doc, "hostname", str, ""),
                duration=number(doc, "duration") if "duration" in doc else 0.0,
                warnings=_strings(doc, "warnings"),
                disks=disks,
            )
        except (ValueError, KeyError, TypeError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise CorruptRepository(f"{POINT_DIR}/{point_id}: not a valid recovery point ({reason})") from None

    def summary_json(self) -> dict[str, Any]:
        """What ``vmkeep points --json`` prints for this point."""
        return {
            "id": self.id,
            "vm": self.vm,
            "time": format_time(self.time),
            "kind": self.kind,
            "parent": self.parent,
            "source": self.source,
            "duration": round(self.duration, 3),
            "warnings": list(self.warnings),
            "disks": [d.to_json() for d in self.disks],
            "hardware": self.hardware,
        }


def _strings(doc: dict[str, Any], key: str) -> list[str]:
    """An optional list of strings (absent in points written before it: empty)."""
    items = optional(doc, key, list, [])
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"{key} holds something other than strings")
    return list(items)


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
