"""Disk records: the optional fields added after version 1 was first written."""

from __future__ import annotations

from vmkeep.repository.points import DiskRecord

TREE = "ab" * 32


def test_a_record_written_before_label_and_sanity_bytes_reads_with_their_defaults() -> None:
    old = {"key": "2000", "capacity": 4096, "tree": TREE, "mode": "full", "read_bytes": 4096}
    record = DiskRecord.from_json(old)
    assert (record.label, record.sanity_bytes, record.read_bytes) == ("", 0, 4096)
    assert record.name == "disk 2000"


def test_label_and_sanity_bytes_survive_a_round_trip() -> None:
    record = DiskRecord(key="2000", capacity=4096, tree=TREE, label="Hard disk 1", read_bytes=12, sanity_bytes=8)
    again = DiskRecord.from_json(record.to_json())
    assert again == record
    assert again.name == "Hard disk 1"


def test_a_negative_sanity_count_is_refused() -> None:
    doc = {"key": "2000", "capacity": 4096, "tree": TREE, "mode": "full", "sanity_bytes": -1}
    try:
        DiskRecord.from_json(doc)
    except ValueError as exc:
        assert "negative" in str(exc)
    else:
        raise AssertionError("a negative sanity_bytes was accepted")
