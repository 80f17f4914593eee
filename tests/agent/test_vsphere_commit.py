"""vSphere under the platform contract: its warnings go into the point, and a snapshot it could not
remove makes a WARNING result (the point stands; the next backup removes the snapshot)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import VM, cli_connection, run_cli

ENABLED = "change tracking was off; vmkeep enabled it, and it takes effect with this backup's snapshot"


def _backup(vcsim: Vcsim, repo: Path) -> dict[str, object]:
    result = run_cli(
        vcsim, "backup", *cli_connection(vcsim), "--vm", VM, "--vm", "DC0_H0_VM1", "--repo", repo, "--json"
    )
    doc: dict[str, object] = json.loads(result.out)
    return doc


def test_session_warnings_are_kept_in_the_point(vcsim: Vcsim, repo_path: Path) -> None:
    result = run_cli(vcsim, "backup", *cli_connection(vcsim), "--vm", VM, "--repo", repo_path, "--json", "-q")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    [point] = doc["points"]
    assert point["warnings"] == [ENABLED]
    [vm_result] = doc["results"]
    assert vm_result["status"] == "succeeded" and vm_result["warnings"] == [ENABLED]
    listed = run_cli(vcsim, "points", "--repo", repo_path)
    assert f"{point['id'][:12]} {VM}: warning: {ENABLED}" in listed.out.splitlines()


def test_a_snapshot_left_behind_is_a_warning_and_the_next_backup_removes_it(vcsim: Vcsim, repo_path: Path) -> None:
    vcsim.api.fail_task("RemoveSnapshot_Task", fault="FileLocked", count=1)
    doc = _backup(vcsim, repo_path)  # the two VMs run at once: either may meet the failed removal
    by_status = {r["status"]: r for r in doc["results"]}  # type: ignore[attr-defined]
    assert sorted(by_status) == ["succeeded", "warning"], doc["results"]
    first = by_status["warning"]
    vm = first["vm"]
    assert first["point_id"] is not None
    assert first["error"].startswith("could not remove snapshot vmkeep-backup-")
    assert first["warnings"][-1] == first["error"]
    counts = {s.name: len(s.snapshots) for s in vcsim.api.states()}
    assert counts[vm] == 1 and sum(counts.values()) == 1  # only the failed removal's snapshot is left
    again = run_cli(vcsim, "backup", *cli_connection(vcsim), "--vm", vm, "--repo", repo_path, "--json", "-q")
    assert again.code == 0, again.err
    [point] = json.loads(again.out)["points"]
    assert any("left by an interrupted backup" in w for w in point["warnings"])
    assert {len(s.snapshots) for s in vcsim.api.states()} == {0}
