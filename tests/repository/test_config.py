"""The config file: a typed, versioned record; anything else is a corrupt repository naming config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.repos import small_config
from vmkeep.repository.config import RepoConfig
from vmkeep.repository.exceptions import CorruptRepository, NotARepository
from vmkeep.repository.keys import Encryption
from vmkeep.repository.repo import Repository


def test_round_trip_and_unknown_fields_ignored() -> None:
    config = small_config(encrypted=True)
    loaded = RepoConfig.load(config.dump())
    assert loaded == config and loaded.encryption is Encryption.AES_256_GCM
    # As for every versioned record, a field this version does not know is a later minor addition.
    doc = json.loads(config.dump()) | {"colour": "blue"}
    assert RepoConfig.load(json.dumps(doc).encode()) == config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"vmkeep_repository": 2}, "unknown format version 2 (this vmkeep reads version 1)"),
        ({"vmkeep_repository": "1"}, "vmkeep_repository is str, not int"),
        ({"vmkeep_repository": None}, "vmkeep_repository is missing"),
        ({"block_size": "65536"}, "block_size is str, not int"),
        ({"block_size": True}, "block_size is bool, not int"),
        ({"block_size": 65537}, "block size must be a power of two"),
        ({"tree_fanout": 1.5}, "tree_fanout is float, not int"),
        ({"encryption": "rot13"}, "unknown encryption 'rot13'"),
        ({"encryption": None}, "encryption is missing"),
        ({"repo_id": "xyz"}, "repo_id is not 16 bytes of lower-case hex"),
        ({"created": "yesterday"}, "created is not an ISO 8601 time"),
    ],
)
def test_wrong_types_versions_and_fields_are_corruption(changes: dict[str, Any], message: str) -> None:
    doc = json.loads(small_config().dump())
    doc.update(changes)
    doc = {k: v for k, v in doc.items() if v is not None}
    with pytest.raises(CorruptRepository, match=f"^config: {re.escape(message)}"):
        RepoConfig.load(json.dumps(doc).encode())


@pytest.mark.parametrize("content", [b"{ garbage", b"\xff", b"[]", b"7"])
def test_garbage_is_corruption(content: bytes) -> None:
    with pytest.raises(CorruptRepository, match=r"^config: not"):
        RepoConfig.load(content)


def test_open_tells_a_damaged_config_from_no_repository(repo_path: Path, tmp_path: Path) -> None:
    (repo_path / "config").write_text('{"vmkeep_repository": 1, "block_size": "big"}')
    with pytest.raises(CorruptRepository, match=r"^config: encryption is missing"):
        Repository.open(repo_path, None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotARepository, match="no config file"):
        Repository.open(tmp_path / "empty", None)


def test_a_flipped_bit_in_config_is_never_an_unexpected_error(repo_path: Path) -> None:
    """config has no checksum: a flip may leave a valid config (a digit of `created`), but never a TypeError."""
    original = (repo_path / "config").read_bytes()
    outcomes = {"opened": 0, "corrupt": 0}
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= 0x01
        (repo_path / "config").write_bytes(damaged)
        try:
            Repository.open(repo_path, None).close()
            outcomes["opened"] += 1
        except CorruptRepository as exc:
            assert str(exc).startswith(("config: ", "keys: ")), exc
            outcomes["corrupt"] += 1
    assert outcomes["corrupt"] > outcomes["opened"] > 0
