"""forget: chosen points by id, prefix or latest:VM, policies judged per chain, damaged point files."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.images import make_image, mutate
from tests.fixtures.repos import assert_one_line_error, backed_up, run_vmkeep


def _backup(repo: Path, image: Path, name: str) -> str:
    result = run_vmkeep("backup-image", image, "--repo", repo, "--name", name, "--json")
    assert result.code == 0, result.err
    point_id: str = backed_up(result)["id"]
    return point_id


def _point_ids(repo: Path) -> set[str]:
    return {p.name for p in (repo / "points").iterdir()}


def _restore(repo: Path, point_id: str, out: Path) -> bytes:
    result = run_vmkeep("restore", point_id, "--repo", repo, "--to-dir", out, "--json")
    assert result.code == 0, result.err
    return Path(json.loads(result.out)["disks"][0]["path"]).read_bytes()


def test_forget_chosen_points_by_prefix_and_latest(repo_path: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "web01.img", 800_000, seed=3)
    ids, contents = [], []
    for n in range(3):
        if n:
            mutate(image, 3, seed=n)
        ids.append(_backup(repo_path, image, "web01"))
        contents.append(image.read_bytes())

    dry = run_vmkeep("forget", ids[0][:8], "--repo", repo_path, "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert [p["id"] for p in json.loads(dry.out)["remove"]] == [ids[0]]
    assert _point_ids(repo_path) == set(ids)  # a dry run deletes nothing

    result = run_vmkeep("forget", ids[0][:8], "latest:web01", "--repo", repo_path)
    assert result.code == 0, result.err
    assert "removed 2 of 3 recovery point(s)" in result.out
    assert ids[0][:12] in result.out and ids[2][:12] in result.out and ids[1][:12] not in result.out
    assert _point_ids(repo_path) == {ids[1]}
    assert run_vmkeep("gc", "--repo", repo_path).code == 0
    assert _restore(repo_path, ids[1], tmp_path / "out") == contents[1]
    assert run_vmkeep("verify", "--repo", repo_path, "--read-data").code == 0


def test_bad_point_arguments(repo_path: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.img", 300_000)
    point = _backup(repo_path, image, "a")
    mixed = run_vmkeep("forget", point, "--keep-last", "1", "--repo", repo_path)
    assert_one_line_error(mixed, "not both")
    assert mixed.code == 2
    assert run_vmkeep("forget", point, "--vm", "a", "--repo", repo_path).code == 2
    unknown = run_vmkeep("forget", "ffffffffffff0000", "--repo", repo_path)
    assert_one_line_error(unknown, "no recovery point 'ffffffffffff0000'")
    assert unknown.code == 1
    missing_vm = run_vmkeep("forget", "latest:nosuchvm", "--repo", repo_path)
    assert_one_line_error(missing_vm, "no recovery point of VM 'nosuchvm'")
    assert _point_ids(repo_path) == {point}


def test_a_damaged_point_file_can_be_forgotten_by_id(repo_path: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.img", 300_000)
    good = _backup(repo_path, image, "a")
    mutate(image, 2, seed=9)
    bad = _backup(repo_path, image, "a")
    path = repo_path / "points" / bad
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # no longer parses, nor matches its name
    path.write_bytes(bytes(data))

    policy = run_vmkeep("forget", "--keep-last", "1", "--repo", repo_path)
    assert policy.code == 0, policy.err
    assert f"warning: point {bad[:12]} is damaged" in policy.out
    assert _point_ids(repo_path) == {good, bad}  # a policy cannot judge what it cannot read

    chosen = run_vmkeep("forget", bad[:10], "--repo", repo_path, "--json")
    assert chosen.code == 0, chosen.err
    doc = json.loads(chosen.out)
    assert [d["id"] for d in doc["remove_damaged"]] == [bad] and doc["remove"] == []
    assert _point_ids(repo_path) == {good}
    assert run_vmkeep("verify", "--repo", repo_path).code == 0


def test_ambiguous_prefix_is_refused(repo_path: Path) -> None:
    """Point files are found by name; two files sharing a prefix (junk here) make it ambiguous."""
    for suffix in ("0", "1"):
        (repo_path / "points" / ("ab" * 31 + "c" + suffix)).write_bytes(b"junk")
    result = run_vmkeep("forget", "abab", "--repo", repo_path)
    assert_one_line_error(result, "matches 2 recovery points")
    assert result.code == 2
    damaged = run_vmkeep("forget", "ab" * 31 + "c0", "--repo", repo_path)
    assert damaged.code == 0, damaged.err
    assert "damaged" in damaged.out
    assert len(_point_ids(repo_path)) == 1


def test_a_policy_judges_each_chain_and_emptying_a_chain_is_warned(repo_path: Path, tmp_path: Path) -> None:
    """Two images recorded under one VM name are two chains: --keep-last 1 keeps one of each."""
    first = make_image(tmp_path / "a.img", 300_000, seed=1)
    second = make_image(tmp_path / "b.img", 300_000, seed=2)
    a = [_backup(repo_path, first, "web01") for _ in range(2)]
    b = [_backup(repo_path, second, "web01") for _ in range(2)]
    result = run_vmkeep("forget", "--keep-last", "1", "--repo", repo_path, "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert {p["id"] for p in doc["keep"]} == {a[1], b[1]}
    assert [c["chain"] for c in doc["chains"]] == [str(first), str(second)]
    assert doc["warnings"] == []

    emptied = run_vmkeep("forget", b[1], "--repo", repo_path, "--dry-run")
    assert emptied.code == 0, emptied.err
    assert f"warning: VM web01 (image {second}): every one of its 1 point(s) would be forgotten" in emptied.out
    assert _point_ids(repo_path) == {a[1], b[1]}
