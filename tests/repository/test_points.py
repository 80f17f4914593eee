"""Recovery point files are parsed into checked records: damage is named, never a TypeError."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import make_image
from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from vmkeep.repository.exceptions import CorruptRepository
from vmkeep.repository.format import SealedKind
from vmkeep.repository.points import ReadMode, RecoveryPoint
from vmkeep.repository.repo import Repository
from vmkeep.repository.writer import content_name


def _valid_doc(repo_path: Path, tmp_path: Path) -> dict[str, Any]:
    assert run_vmkeep("backup-image", make_image(tmp_path / "vm.img", 300_000), "--repo", repo_path).code == 0
    with Repository.open(repo_path, None) as repo:
        [point] = repo.points()
        doc: dict[str, Any] = json.loads(point.to_payload())
    return doc


def _plant(repo_path: Path, doc: dict[str, Any]) -> str:
    """Write a sealed, correctly named point file with this content (as a buggy writer would)."""
    with Repository.open(repo_path, None) as repo:
        sealed = repo.codec.seal(SealedKind.POINT, json.dumps(doc).encode())
    name = content_name(sealed)
    (repo_path / "points" / name).write_bytes(sealed)
    return name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["disks"][0].update(capacity="300000"), "capacity is str, not int"),
        (lambda d: d["disks"][0].update(mode="sideways"), "'sideways' is not a valid ReadMode"),
        (lambda d: d["disks"][0].update(tree="zz"), "tree is not 32 bytes"),
        (lambda d: d.update(version=2), "unknown point version 2"),
        (lambda d: d.pop("vm"), "vm is missing"),
        (lambda d: d.update(disks={"a": 1}), "disks is dict, not list"),
        (lambda d: d["disks"][0].update(read_bytes=-1), "negative"),
    ],
)
def test_a_malformed_point_is_named_and_costs_only_itself(
    repo_path: Path, tmp_path: Path, change: Any, message: str
) -> None:
    doc = _valid_doc(repo_path, tmp_path)
    change(doc)
    name = _plant(repo_path, doc)
    result = run_vmkeep("restore", name, "--repo", repo_path, "--to-dir", tmp_path / "out")
    assert_one_line_error(result, f"corrupt repository: points/{name}: not a valid recovery point", message)
    assert result.code == 3
    listed = run_vmkeep("points", "--repo", repo_path, "--json")
    assert listed.code == 0 and len(json.loads(listed.out)) == 1  # the good point still lists
    assert "skipping a damaged recovery point" in listed.err


def test_unknown_fields_are_ignored_and_modes_are_enums(repo_path: Path, tmp_path: Path) -> None:
    doc = _valid_doc(repo_path, tmp_path)
    doc["added_later"] = {"x": 1}
    doc["disks"][0]["also_later"] = 5
    point = RecoveryPoint.from_payload(json.dumps(doc).encode(), "ab" * 32)
    assert point.disks[0].mode is ReadMode.FULL
    assert json.loads(point.to_payload())["disks"][0]["mode"] == "full"
    with pytest.raises(CorruptRepository, match="not a valid recovery point"):
        RecoveryPoint.from_payload(b"[1, 2]", "ab" * 32)


def test_a_point_forgotten_while_the_list_is_read_is_not_damage(repo_path: Path, tmp_path: Path) -> None:
    """A forget between listing points/ and reading a file cannot be timed between two real
    processes; the listing is given one name whose file is gone instead (the race's outcome)."""
    _valid_doc(repo_path, tmp_path)
    with Repository.open(repo_path, None) as repo:
        listed = repo.point_ids()
        original = repo.point_ids
        repo.point_ids = lambda: [*listed, "ab" * 32]  # type: ignore[method-assign]  # listed, then gone
        scan = repo.scan_points()
        repo.point_ids = original  # type: ignore[method-assign]
    assert len(scan.points) == 1 and scan.damaged == {}
