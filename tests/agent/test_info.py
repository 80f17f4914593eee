"""vmkeep info: size on disk, deduplication and compression, points per VM (real processes)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tests.fixtures.repos import run_vmkeep

BLOCK = 64 * 1024


def _image(path: Path) -> Path:
    """Compressible text, a zero hole, random data, and a short last block."""
    text = b"".join(b"line %06d of a log file that compresses well\n" % i for i in range(6000))
    hole = bytes(3 * BLOCK)
    noise = os.urandom(2 * BLOCK)
    path.write_bytes(text + hole + noise + b"tail" * 100)
    return path


def _non_zero_block_bytes(data: bytes) -> int:
    blocks = (data[i : i + BLOCK] for i in range(0, len(data), BLOCK))
    return sum(len(b) for b in blocks if b.count(0) != len(b))


def test_info_reports_sizes_ratios_and_points_per_vm(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    web = _image(tmp_path / "web01.img")
    db = shutil.copyfile(web, tmp_path / "db01.img")  # the same content: stored once
    for image, name in ((web, "web01"), (web, "web01"), (db, "db01")):
        result = run_vmkeep("backup-image", image, "--name", name, "--repo", repo)
        assert result.code == 0, result.err

    result = run_vmkeep("info", "--repo", repo, "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    data = web.read_bytes()
    distinct = _non_zero_block_bytes(data)
    assert doc["data_raw_bytes"] == distinct
    assert doc["referenced_bytes"] == 3 * distinct
    assert doc["dedup_ratio"] == 3.0
    assert doc["restore_bytes"] == 3 * len(data)
    assert doc["compression_ratio"] > 1.5  # the text compresses, the noise does not
    assert doc["data_stored_bytes"] < doc["data_raw_bytes"]
    on_disk = sum(
        f.stat().st_size for d in ("data", "index", "points", "damage") for f in (repo / d).rglob("*") if f.is_file()
    )
    assert doc["total_bytes"] == on_disk
    assert doc["files"]["points"]["files"] == 3
    vms = {v["vm"]: v for v in doc["vms"]}
    assert sorted(vms) == ["db01", "web01"]
    assert (vms["web01"]["points"], vms["db01"]["points"]) == (2, 1)
    assert vms["web01"]["oldest"] <= vms["web01"]["newest"]
    points = json.loads(run_vmkeep("points", "--repo", repo, "--vm", "web01", "--json").out)
    assert vms["web01"]["newest_id"] == points[-1]["id"]

    text = run_vmkeep("info", "--repo", repo)
    assert text.code == 0, text.err
    assert "deduplication 3.00x" in text.out
    assert "3 points" in text.out
    assert any(line.split()[:3] == ["web01", "image", "2"] for line in text.out.splitlines())


def test_info_on_an_empty_repository(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    doc = json.loads(run_vmkeep("info", "--repo", repo, "--json", "--no-lock").out)
    assert (doc["dedup_ratio"], doc["compression_ratio"], doc["vms"]) == (None, None, [])
    assert "deduplication -" in run_vmkeep("info", "--repo", repo).out
