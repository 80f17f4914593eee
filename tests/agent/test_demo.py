"""The README's main job, `vmkeep demo`, run as the README runs it (smaller)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.repos import assert_one_line_error, run_vmkeep


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
    # vcsim_binary built the simulator already: the demo must not claim it built it.
    assert steps["simulator"]["detail"].endswith("(up to date)")
    assert (tmp_path / "repo" / "config").exists()  # --dir is the user's: kept


def test_image_demo_passes(tmp_path: Path) -> None:
    result = run_vmkeep("demo", "--image", "--dir", tmp_path, "--size", "32M")
    assert result.code == 0, result.err
    assert "demo passed" in result.out
    assert result.out.count("is identical to") == 2


def test_size_in_plain_mib_and_the_temporary_directory_removed_unless_kept(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = run_vmkeep("demo", "--image", "--size", "8", env={"TMPDIR": str(scratch)})
    assert result.code == 0, result.err
    assert "8.0 MiB" in result.out
    assert "temporary files were removed" in result.out
    assert list(scratch.iterdir()) == []
    kept = run_vmkeep("demo", "--image", "--size", "8", "--keep", "--json", env={"TMPDIR": str(scratch)})
    assert kept.code == 0, kept.err
    doc = json.loads(kept.out)
    assert doc["kept"] and Path(doc["workdir"]).parent == scratch
    assert (Path(doc["workdir"]) / "repo" / "config").exists()


def test_without_the_simulators_sources_the_vsphere_demo_says_what_to_do(tmp_path: Path) -> None:
    """A pip install has no vcsim/ (as $VMKEEP_VCSIM_DIR pointing at an empty directory makes it here)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"VMKEEP_VCSIM_DIR": str(tmp_path / "no-vcsim"), "TMPDIR": str(scratch)}
    result = run_vmkeep("demo", "--size", "8", env=env)
    assert_one_line_error(result, "vcsim/", "./install.sh", "VMKEEP_VCSIM_DIR", "'vmkeep demo --image'")
    assert result.code == 2
    assert list(scratch.iterdir()) == []


def test_help_shows_percent_signs_as_they_are() -> None:
    result = run_vmkeep("demo", "--help")
    assert result.code == 0
    assert "change 1% of it" in result.out and "%%" not in result.out


def test_the_vsphere_demo_does_not_hold_whole_disks_in_memory(vcsim_binary: Path, tmp_path: Path) -> None:
    """Peak memory stays well below the whole disks held at once: restores are hashed in chunks, not read whole."""
    size_mib = 192
    code = (
        "import atexit, resource, runpy, sys; sys.argv = ['vmkeep'] + sys.argv[1:]\n"
        "peak = lambda: print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "atexit.register(peak)\n"
        "runpy.run_module('vmkeep.agent.cli', run_name='__main__')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")}
    args = ["demo", "--dir", str(tmp_path), "--size", str(size_mib), "--json"]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ok"]
    peak_kib = int(proc.stderr.rsplit("MAXRSS", 1)[1].split()[0])
    # Reading whole images held two copies of the disk plus the restored ones: 903 MiB at this size
    # on the project's VM. Hashing in chunks peaked at 175 MiB there alone, 267 MiB in one run of the
    # whole suite, and 423 to 538 MiB with five suites at once on 2 cores (not reproduced alone, even
    # with the cores busy: 165 to 175 MiB). The bound sits below whole images, at three times the
    # disk; bench/memory.py measures the real limit, a 1 TiB disk in under 300 MB.
    assert peak_kib < 3 * size_mib * 1024, f"peak {peak_kib // 1024} MiB"
