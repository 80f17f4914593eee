"""The README's main job, `vmkeep demo`, run as the README runs it (smaller)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.repos import run_vmkeep


def test_vsphere_demo_passes(vcsim_binary: Path, tmp_path: Path) -> None:
    result = run_vmkeep("demo", "--dir", tmp_path, "--size", "24M", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["ok"]
    steps = {s["what"]: s for s in doc["steps"]}
    assert "restore to host" in steps and "identical to" in steps["restore to host"]["detail"]
    assert "incremental backup" in steps and "full backup" in steps
    assert steps["snapshots"]["ok"]
    scheduled = steps["scheduled run"]
    assert scheduled["ok"] and "job web ran at" in scheduled["detail"] and "job db ran at" in scheduled["detail"]
    assert "(incremental)" in scheduled["detail"] and "(full)" in scheduled["detail"]  # web had points already


def test_image_demo_passes(tmp_path: Path) -> None:
    result = run_vmkeep("demo", "--image", "--dir", tmp_path, "--size", "32M")
    assert result.code == 0, result.err
    assert "demo passed" in result.out
    assert result.out.count("is identical to") == 2
