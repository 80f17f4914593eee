"""A point's ``warnings``: optional (points written before it parse unchanged), checked, kept as written."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from vmkeep.repository.exceptions import CorruptRepository
from vmkeep.repository.points import RecoveryPoint

OLD_POINT = {  # a point as written before warnings existed
    "version": 1,
    "vm": "web01",
    "time": "2026-01-02T03:04:05.000006Z",
    "block_size": 65536,
    "source": {"type": "image", "path": "/dev/vg0/web01", "chain": "/dev/vg0/web01"},
    "hardware": {},
    "parent": None,
    "hostname": "backup1",
    "duration": 1.5,
    "disks": [{"key": "disk0", "capacity": 65536, "tree": "00" * 32, "mode": "full"}],
}


def test_a_point_written_before_warnings_parses_with_none() -> None:
    point = RecoveryPoint.from_payload(json.dumps(OLD_POINT).encode(), "ab" * 32)
    assert point.warnings == []
    assert point.summary_json()["warnings"] == []


def test_warnings_round_trip() -> None:
    point = RecoveryPoint(
        vm="web01",
        time=datetime(2026, 1, 2, tzinfo=UTC),
        disks=[],
        block_size=65536,
        warnings=["a quiesced snapshot failed; took a crash-consistent one"],
    )
    again = RecoveryPoint.from_payload(point.to_payload(), "ab" * 32)
    assert again.warnings == ["a quiesced snapshot failed; took a crash-consistent one"]


@pytest.mark.parametrize("bad", ["one string", [1, 2], {"a": "b"}])
def test_malformed_warnings_are_damage(bad: object) -> None:
    doc = dict(OLD_POINT, warnings=bad)
    with pytest.raises(CorruptRepository, match=r"not a valid recovery point.*warnings"):
        RecoveryPoint.from_payload(json.dumps(doc).encode(), "ab" * 32)
