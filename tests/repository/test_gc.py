"""forget and gc: space comes back, and no block a remaining point uses is ever lost."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterable
from pathlib import Path

import pytest

import vmkeep.repository.gc as gc_module
from tests.fixtures.images import make_image, mutate, write_hints
from tests.fixtures.repos import assert_one_line_error, backed_up, run_vmkeep
from vmkeep.repository.backend import LocalBackend
from vmkeep.repository.exceptions import RepositoryFull, RepositoryLocked
from vmkeep.repository.gc import collect_garbage
from vmkeep.repository.repo import Repository
from vmkeep.repository.verify import verify


def _backups(repo_path: Path, tmp_path: Path, rounds: int) -> list[tuple[str, bytes]]:
    """A full and ``rounds`` incrementals; (point id, image content) of each."""
    image = make_image(tmp_path / "vm.img", 3_000_000, seed=31)
    out = []
    for n in range(rounds + 1):
        args: list[str | Path] = ["backup-image", image, "--repo", repo_path, "--json"]
        if n:
            args += ["--hints", write_hints(tmp_path / f"h{n}.json", mutate(image, 4, seed=40 + n, max_len=300_000))]
        result = run_vmkeep(*args)
        assert result.code == 0, result.err
        out.append((backed_up(result)["id"], image.read_bytes()))
    return out


def _restores(repo_path: Path, tmp_path: Path, point_id: str) -> bytes:
    out = tmp_path / f"r-{point_id[:8]}"
    result = run_vmkeep("restore", point_id, "--repo", repo_path, "--to-dir", out, "--json")
    assert result.code == 0, result.err
    return Path(json.loads(result.out)["disks"][0]["path"]).read_bytes()


def test_forget_then_gc_frees_space_and_keeps_every_remaining_point(repo_path: Path, tmp_path: Path) -> None:
    points = _backups(repo_path, tmp_path, rounds=5)
    dry = run_vmkeep("forget", "--repo", repo_path, "--keep-last", "2", "--dry-run", "--json")
    assert dry.code == 0
    assert len(json.loads(dry.out)["remove"]) == 4
    assert len(list((repo_path / "points").iterdir())) == 6  # dry run deleted nothing

    result = run_vmkeep("forget", "--repo", repo_path, "--keep-last", "2", "--json")
    assert result.code == 0
    kept = {p["id"] for p in json.loads(result.out)["keep"]}
    assert kept == {points[-1][0], points[-2][0]}

    size_before = sum(f.stat().st_size for f in (repo_path / "data").rglob("*") if f.is_file())
    gc = run_vmkeep("gc", "--repo", repo_path, "--json")
    assert gc.code == 0, gc.err
    report = json.loads(gc.out)
    size_after = sum(f.stat().st_size for f in (repo_path / "data").rglob("*") if f.is_file())
    assert report["bytes_freed"] == size_before - size_after > 0
    assert report["packs_deleted"] + report["packs_repacked"] > 0

    for point_id, content in points[-2:]:
        assert _restores(repo_path, tmp_path, point_id) == content
    assert run_vmkeep("verify", "--repo", repo_path, "--read-data").code == 0


def test_gc_twice_changes_nothing_the_second_time(repo_path: Path, tmp_path: Path) -> None:
    points = _backups(repo_path, tmp_path, rounds=2)
    assert run_vmkeep("forget", "--repo", repo_path, "--keep-last", "1").code == 0
    assert run_vmkeep("gc", "--repo", repo_path).code == 0
    files = sorted(str(p.relative_to(repo_path)) for p in repo_path.rglob("*") if p.is_file())
    again = json.loads(run_vmkeep("gc", "--repo", repo_path, "--json").out)
    assert again["bytes_freed"] == 0 and again["packs_written"] == 0
    assert sorted(str(p.relative_to(repo_path)) for p in repo_path.rglob("*") if p.is_file()) == files
    assert _restores(repo_path, tmp_path, points[-1][0]) == points[-1][1]


def test_gc_with_no_points_left_empties_the_repository(repo_path: Path, tmp_path: Path) -> None:
    _backups(repo_path, tmp_path, rounds=1)
    with Repository.open(repo_path, None) as repo:
        for pid in repo.point_ids():
            repo.delete_point(pid)
        report = collect_garbage(repo)
        assert report.bytes_after == 0 and report.packs_after == 0
        assert repo.index_files() == []
        assert verify(repo, read_data=True).ok


def test_gc_refuses_while_a_backup_holds_the_repository(repo_path: Path, tmp_path: Path) -> None:
    _backups(repo_path, tmp_path, rounds=0)
    with Repository.open(repo_path, None) as repo, repo.lock("backup"):
        result = run_vmkeep("gc", "--repo", repo_path)
        assert_one_line_error(result, "in use by backup")
        with pytest.raises(RepositoryLocked):
            collect_garbage(repo)


def test_a_backup_refuses_while_gc_holds_the_repository(repo_path: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "vm.img", 100_000)
    with Repository.open(repo_path, None) as repo, repo.lock("gc", exclusive=True):
        assert_one_line_error(run_vmkeep("backup-image", image, "--repo", repo_path), "in use by gc")


def test_unique_sizes_match_what_deleting_a_point_frees(repo_path: Path, tmp_path: Path) -> None:
    points = _backups(repo_path, tmp_path, rounds=3)
    listed = json.loads(run_vmkeep("points", "--repo", repo_path, "--sizes", "--json").out)
    unique = {p["id"]: p["unique_bytes"] for p in listed}
    victim = points[2][0]
    assert unique[victim] > 0
    with Repository.open(repo_path, None) as repo:
        before = repo.reload_index()
        stored_before = sum(loc.entry.length for loc in before.locations())
        repo.delete_point(victim)
        collect_garbage(repo)
        stored_after = sum(loc.entry.length for loc in repo.reload_index().locations())
    assert stored_before - stored_after == unique[victim]


def test_repack_that_reproduces_a_pack_never_deletes_it(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs are named by content: repacking a pack with no garbage writes it under its own name.

    gc's own selection avoids such pointless repacks, so the test forces one (patching the
    selection is the only way to provoke it) and checks the pack survives.
    """
    points = _backups(repo_path, tmp_path, rounds=0)

    monkeypatch.setattr(
        gc_module,
        "_packs_to_repack",
        lambda live, on_disk, target, max_unused, live_bytes: tuple(
            gc_module.Repack(p, live[p], small=False) for p in sorted(live)
        ),
    )
    with Repository.open(repo_path, None) as repo:
        report = collect_garbage(repo)
        assert len(report.done.repack) > 0 and report.packs_after == report.plan.packs_after
        assert verify(repo, read_data=True).ok
    assert _restores(repo_path, tmp_path, points[0][0]) == points[0][1]


def _pack_files(repo_path: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in (repo_path / "data").rglob("*") if f.is_file()}


def _gc_json(repo_path: Path, *options: str) -> dict:  # type: ignore[type-arg]
    result = run_vmkeep("gc", "--repo", repo_path, "--json", *options)
    assert result.code == 0, result.err
    doc: dict = json.loads(result.out)  # type: ignore[type-arg]
    return doc


@pytest.mark.parametrize("max_unused", [None, "0"])
def test_dry_run_announces_exactly_what_the_run_does(repo_path: Path, tmp_path: Path, max_unused: str | None) -> None:
    """The numbers once differed ("5 repacked into 0, 2 after" against "into 2, 4 after"): the
    dry run did not count the new packs a repack writes. Plan and run are now one computation."""
    points = _backups(repo_path, tmp_path, rounds=5)
    assert run_vmkeep("forget", "--repo", repo_path, "--keep-last", "1").code == 0
    options = ["--max-unused", max_unused] if max_unused else []
    files_before = _pack_files(repo_path)
    dry = _gc_json(repo_path, "--dry-run", *options)
    assert _pack_files(repo_path) == files_before  # the dry run changed nothing
    assert dry["packs_repacked"] > 0 and dry["packs_written"] > 0  # the case that was wrong
    run = _gc_json(repo_path, *options)
    for key in ("packs_deleted", "packs_repacked", "packs_written", "packs_after", "bytes_after", "bytes_freed"):
        assert dry[key] == run[key] == run["planned"].get(key, run[key]), key
    assert dry["unreclaimed"] == run["unreclaimed"]
    after = _pack_files(repo_path)
    assert len(after) == run["packs_after"] and sum(after.values()) == run["bytes_after"]
    assert _restores(repo_path, tmp_path, points[-1][0]) == points[-1][1]
    assert run_vmkeep("verify", "--repo", repo_path, "--read-data").code == 0


def test_max_unused_chooses_what_garbage_may_stay_and_the_report_says_why(repo_path: Path, tmp_path: Path) -> None:
    points = _backups(repo_path, tmp_path, rounds=5)
    assert run_vmkeep("forget", "--repo", repo_path, "--keep-last", "1").code == 0

    kept = _gc_json(repo_path, "--max-unused", "unlimited")  # no repack for garbage; small packs still merge
    assert kept["packs_repacked"] == kept["packs_repacked_small"] and kept["packs_deleted"] > 0
    assert kept["unreclaimed"]["bytes"] > 0 and kept["unreclaimed"]["reason"] == "within-max-unused"
    files = _pack_files(repo_path)
    live = kept["live_bytes"] + 8 * len(files)  # each pack starts with an 8-byte magic
    assert sum(files.values()) == live + kept["unreclaimed"]["bytes"]  # the report accounts for every byte

    text = run_vmkeep("gc", "--repo", repo_path, "--dry-run", "--max-unused", "100%")
    assert text.code == 0
    assert f"in {kept['unreclaimed']['packs']} pack(s), within --max-unused 100%" in text.out
    assert "of unused data would stay" in text.out

    everything = _gc_json(repo_path, "--max-unused", "0")
    assert everything["packs_repacked"] > 0
    assert everything["unreclaimed"] == {"bytes": 0, "packs": 0, "reason": "none"}
    files = _pack_files(repo_path)
    assert sum(files.values()) == everything["live_bytes"] + 8 * len(files)  # not one unused byte left
    assert _restores(repo_path, tmp_path, points[-1][0]) == points[-1][1]
    assert run_vmkeep("verify", "--repo", repo_path, "--read-data").code == 0


def test_a_percentage_bounds_the_unused_share_of_the_repository(repo_path: Path, tmp_path: Path) -> None:
    _backups(repo_path, tmp_path, rounds=5)
    assert run_vmkeep("forget", "--repo", repo_path, "--keep-last", "2").code == 0
    report = _gc_json(repo_path, "--max-unused", "10%")
    total = sum(_pack_files(repo_path).values())
    assert report["unreclaimed"]["bytes"] <= 0.10 * total
    assert report["unreclaimed"]["reason"] in ("none", "within-max-unused")


def test_default_threshold_leaves_small_garbage_and_says_so(repo: Repository, tmp_path: Path) -> None:
    """A pack with a little garbage (under 20%) stays as it is, and the report names the bytes."""
    _backups(Path(repo.location), tmp_path, rounds=3)
    victim = repo.points()[1]
    repo.delete_point(victim.id)
    plan = gc_module.plan_gc(repo, gc_module.MaxUnused())
    assert plan.unreclaimed_reason in (gc_module.Unreclaimed.UNDER_THRESHOLD, gc_module.Unreclaimed.NONE)
    for pack, entries in plan.keep.items():
        garbage = plan.sizes[pack] - 8 - sum(e.length for e in entries)
        assert garbage <= gc_module.REPACK_GARBAGE_FRACTION * plan.sizes[pack]
    assert plan.unreclaimed_bytes == sum(plan.sizes[p] - 8 - sum(e.length for e in v) for p, v in plan.keep.items())
    report = collect_garbage(repo)
    assert report.done == report.plan and report.packs_after == plan.packs_after
    assert report.bytes_after == plan.bytes_after and report.done.unreclaimed_bytes == plan.unreclaimed_bytes


@pytest.mark.parametrize("value", ["ten%", "101%", "-5%", "lots"])
def test_bad_max_unused_is_a_usage_error(repo_path: Path, value: str) -> None:
    result = run_vmkeep("gc", "--repo", repo_path, f"--max-unused={value}")
    assert_one_line_error(result)
    assert result.code == 2


class _IndexWritesFail(LocalBackend):
    """ENOSPC on index files only. A real full file system cannot be made to accept gc's new
    packs and then refuse its index (both are written within milliseconds), so this fault is
    injected; the tmpfs tests in tests/agent/test_full_disk.py cover the rest for real."""

    def _write(self, name: str, chunks: Iterable[bytes | memoryview], defer_sync: bool) -> None:
        if name.startswith("index/"):
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write(name, chunks, defer_sync)


def test_gc_that_cannot_write_its_index_leaves_the_repository_as_it_was(repo_path: Path, tmp_path: Path) -> None:
    points = _backups(repo_path, tmp_path, rounds=3)
    assert run_vmkeep("forget", "--repo", repo_path, "--keep-last", "1").code == 0
    files = sorted(str(p.relative_to(repo_path)) for p in repo_path.rglob("*") if p.is_file())
    with Repository.open(repo_path, None) as repo:
        assert gc_module.plan_gc(repo, gc_module.MaxUnused("0", limit_bytes=0)).new_packs  # it will repack
        repo.backend = _IndexWritesFail(repo_path)
        with pytest.raises(RepositoryFull, match="could not write its new index"):
            collect_garbage(repo, max_unused=gc_module.MaxUnused("0", limit_bytes=0))
    assert sorted(str(p.relative_to(repo_path)) for p in repo_path.rglob("*") if p.is_file()) == files
    assert run_vmkeep("verify", "--repo", repo_path, "--read-data").code == 0
    assert _restores(repo_path, tmp_path, points[-1][0]) == points[-1][1]
