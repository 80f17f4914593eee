"""The CLI contract other tools rely on, and one-line errors for bad input (real processes)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from tests.fixtures.images import Change, make_image, mutate, write_hints
from tests.fixtures.repos import assert_one_line_error, backed_up, run_vmkeep


@pytest.fixture
def cli_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    result = run_vmkeep("init", repo, "--block-size", "64K", "--pack-size", "1M")
    assert result.code == 0, result.err
    return repo


def test_points_and_restore_json_contract(cli_repo: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "web01.img", 1_000_000, seed=1)
    original = image.read_bytes()
    first = run_vmkeep("backup-image", image, "--repo", cli_repo, "--json")
    assert first.code == 0, first.err
    changes = mutate(image, 3, seed=2)
    hints = write_hints(tmp_path / "hints.json", changes)
    second = run_vmkeep("backup-image", image, "--repo", cli_repo, "--name", "web01", "--hints", hints, "--json")
    assert second.code == 0, second.err

    listed = run_vmkeep("points", "--repo", cli_repo, "--json")
    assert listed.code == 0
    points = json.loads(listed.out)
    assert [p["kind"] for p in points] == ["full", "incremental"]
    for p in points:
        assert p["vm"] == "web01"
        assert p["time"].endswith("Z") and datetime.fromisoformat(p["time"].replace("Z", "+00:00"))
        [disk] = p["disks"]
        assert disk["key"] == "disk0" and disk["capacity"] == 1_000_000
        assert {"read_bytes", "new_bytes"} <= disk.keys()
    assert points[0]["id"] == backed_up(first)["id"]
    # One --json shape for every backup command: backup (vSphere) prints the same three keys.
    doc = json.loads(first.out)
    assert set(doc) == {"points", "failures", "results"} and doc["results"][0]["status"] == "succeeded"
    incremental = points[1]["disks"][0]
    assert incremental["read_bytes"] - incremental["sanity_bytes"] < points[0]["disks"][0]["read_bytes"]

    out = tmp_path / "out"
    restored = run_vmkeep("restore", points[0]["id"][:10], "--repo", cli_repo, "--to-dir", out, "--json")
    assert restored.code == 0, restored.err
    doc = json.loads(restored.out)
    assert doc["point"] == points[0]["id"]
    [disk] = doc["disks"]
    assert disk["key"] == "disk0" and disk["size"] == 1_000_000
    assert Path(disk["path"]).read_bytes() == original


def test_repo_from_environment(cli_repo: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.img", 200_000)
    env = {"VMKEEP_REPO": str(cli_repo)}
    assert run_vmkeep("backup-image", image, env=env).code == 0
    result = run_vmkeep("points", "--json", env=env)
    assert result.code == 0 and len(json.loads(result.out)) == 1


def test_restore_never_overwrites(cli_repo: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.img", 200_000)
    assert run_vmkeep("backup-image", image, "--repo", cli_repo).code == 0
    out = tmp_path / "out"
    assert run_vmkeep("restore", "latest", "--repo", cli_repo, "--to-dir", out).code == 0
    target = out / "a-disk0.img"
    target.write_bytes(b"precious")
    result = run_vmkeep("restore", "latest", "--repo", cli_repo, "--to-dir", out)
    assert_one_line_error(result, "exists already")
    assert target.read_bytes() == b"precious"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("this is not json", "is not JSON"),
        ('{"offset": 0}', "expected a JSON array"),
        ('[{"offset": 0, "length": "ten"}]', "integer 'offset' and 'length'"),
        ('[{"offset": 999990, "length": 100}]', "extends past the end of the image (1000000 bytes)"),
        ('[{"offset": -1, "length": 1}]', "negative"),
    ],
)
def test_bad_hints_are_refused_before_anything_is_written(
    cli_repo: Path, tmp_path: Path, content: str, fragment: str
) -> None:
    image = make_image(tmp_path / "a.img", 1_000_000)
    assert run_vmkeep("backup-image", image, "--repo", cli_repo).code == 0
    before = sorted(p.name for p in cli_repo.rglob("*"))
    hints = tmp_path / "hints.json"
    hints.write_text(content)
    assert_one_line_error(run_vmkeep("backup-image", image, "--repo", cli_repo, "--hints", hints), fragment)
    assert sorted(p.name for p in cli_repo.rglob("*")) == before
    assert run_vmkeep("verify", "--repo", cli_repo, "--read-data").code == 0


def test_missing_and_non_repositories(tmp_path: Path) -> None:
    assert_one_line_error(run_vmkeep("points", "--repo", tmp_path / "nope"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_vmkeep("points", "--repo", tmp_path / "empty"), "not a vmkeep repository")
    assert_one_line_error(run_vmkeep("points"), "no repository given")


def test_corrupt_config_is_a_clear_error(cli_repo: Path) -> None:
    (cli_repo / "config").write_text("{ garbage")
    result = run_vmkeep("points", "--repo", cli_repo)
    assert_one_line_error(result, "corrupt repository: config: not JSON")
    assert result.code == 3


def test_wrong_and_missing_passphrase(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--encrypt", env={"VMKEEP_PASSPHRASE": "right"}).code == 0
    assert_one_line_error(run_vmkeep("points", "--repo", repo, env={"VMKEEP_PASSPHRASE": "wrong"}), "wrong passphrase")
    assert_one_line_error(run_vmkeep("points", "--repo", repo), "VMKEEP_PASSPHRASE")
    secret = tmp_path / "pass"
    secret.write_text("right\n")
    assert run_vmkeep("points", "--repo", repo, "--passphrase-file", secret).code == 0


def test_init_refuses_an_existing_repository(cli_repo: Path) -> None:
    assert_one_line_error(run_vmkeep("init", cli_repo), "already holds a repository")


def test_unknown_point_and_image(cli_repo: Path, tmp_path: Path) -> None:
    assert_one_line_error(
        run_vmkeep("restore", "deadbeef", "--repo", cli_repo, "--to-dir", tmp_path), "no recovery point"
    )
    assert_one_line_error(run_vmkeep("backup-image", tmp_path / "missing.img", "--repo", cli_repo), "cannot open image")


def test_bad_option_values(tmp_path: Path) -> None:
    assert_one_line_error(run_vmkeep("init", tmp_path / "r", "--block-size", "3000"), "power of two")
    assert_one_line_error(run_vmkeep("init", tmp_path / "r", "--block-size", "lots"), "not a size")


def test_forget_needs_a_policy(cli_repo: Path) -> None:
    assert_one_line_error(run_vmkeep("forget", "--repo", cli_repo), "refusing to forget every recovery point")


def test_help_lists_every_command() -> None:
    result = run_vmkeep("--help")
    assert result.code == 0
    for command in ("init", "backup-image", "points", "restore", "forget", "gc", "verify"):
        assert command in result.out


def test_hints_with_discarded_extents_read_as_changed(cli_repo: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "a.img", 600_000, seed=4)
    assert run_vmkeep("backup-image", image, "--repo", cli_repo).code == 0
    with image.open("r+b") as f:  # a trim: the range now reads as zeros
        f.seek(70_000)
        f.write(bytes(140_000))
    hints = tmp_path / "h.json"
    hints.write_text(json.dumps([Change(70_000, 140_000).hint() | {"exists": "false"}]))
    assert run_vmkeep("backup-image", image, "--repo", cli_repo, "--hints", hints, "--sanity-sample", "0").code == 0
    out = tmp_path / "out"
    assert run_vmkeep("restore", "latest", "--repo", cli_repo, "--to-dir", out).code == 0
    assert (out / "a-disk0.img").read_bytes() == image.read_bytes()


def test_init_takes_over_what_an_interrupted_init_left_and_nothing_else(tmp_path: Path) -> None:
    """Found by the step-by-step kill test: init killed before writing config left a directory
    that was neither a repository nor empty, which init then refused."""
    path = tmp_path / "repo"
    for sub in ("data", "index", "points", "locks", "damage", "tmp"):
        (path / sub).mkdir(parents=True)
    (path / "tmp" / "0123456789abcdef.tmp").write_bytes(b"half a keys file")
    (path / "keys").write_bytes(b"{}")
    result = run_vmkeep("init", path)
    assert result.code == 0, result.err
    assert "interrupted 'vmkeep init'" in result.err
    assert run_vmkeep("verify", "--repo", path).code == 0

    other = tmp_path / "other"
    (other / "data").mkdir(parents=True)
    (other / "notes.txt").write_text("someone's data")
    assert_one_line_error(run_vmkeep("init", other), "exists and is not an empty directory")
    assert (other / "notes.txt").read_text() == "someone's data"
