"""vSphere faults: a clear one-line error, no snapshot left behind, nothing earlier damaged, no half point."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim, find_vm, wait_task
from tests.fixtures.vsphere import VM, back_up, cli_connection, connect, disk_bytes, restored_disks, run_cli, scribble
from vmkeep.agent.engine.progress import Progress
from vmkeep.hypervisors.vsphere.exceptions import TransportError
from vmkeep.repository.repo import Repository

MiB = 1 << 20


@pytest.fixture
def cli_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    return repo


def _points(repo: Path) -> list[dict]:  # type: ignore[type-arg]
    result = run_vmkeep("points", "--repo", repo, "--json")
    assert result.code == 0, result.err
    return json.loads(result.out)  # type: ignore[no-any-return]


def _no_snapshots(vc: Vcsim) -> None:
    for state in vc.api.states():
        assert state.snapshots == (), f"{state.name} kept snapshots {state.snapshots}"


def _backup(vc: Vcsim, repo: Path, *extra: str, vm: str = VM, password: str | None = None):  # type: ignore[no-untyped-def]
    return run_cli(vc, "backup", *cli_connection(vc), "--vm", vm, "--repo", repo, *extra, password=password)


def test_dropped_connections_are_retried_and_the_point_is_right(vcsim: Vcsim, repo: Repository, tmp_path: Path) -> None:
    capacity = vcsim.api.state(VM).disks[0].capacity
    scribble(vcsim, VM, capacity, random.Random(1), 40)
    image = disk_bytes(vcsim, VM, capacity)
    vcsim.api.drop_connection("-flat.vmdk", after_bytes=10_000, count=3)
    vcsim.api.http_status(503, path_contains="-flat.vmdk", count=1)
    with connect(vcsim) as conn:
        point = back_up(conn, repo)
    assert all(f.remaining == 0 for f in vcsim.api.faults())  # every fault was met, and survived
    assert list(restored_disks(repo, point, tmp_path).values()) == [image]


def test_a_read_that_keeps_failing_fails_the_job_and_removes_the_snapshot(vcsim: Vcsim, repo: Repository) -> None:
    with connect(vcsim) as conn:
        back_up(conn, repo)
        vcsim.api.drop_connection("-flat.vmdk", after_bytes=0, count=1000)
        with pytest.raises(TransportError, match="gave up after 5 attempts"):
            back_up(conn, repo, full_reason="test")
    assert len(repo.points()) == 1
    _no_snapshots(vcsim)


def test_snapshot_failure_is_a_clear_error_and_a_quiesce_failure_falls_back(vcsim: Vcsim, cli_repo: Path) -> None:
    vcsim.api.fail_task("CreateSnapshot_Task", fault="ApplicationQuiesceFault", message="tools not running")
    ok = _backup(vcsim, cli_repo)
    assert ok.code == 0, ok.err
    assert "quiesced snapshot failed" in ok.err and "crash-consistent" in ok.err

    vcsim.api.fail_task("CreateSnapshot_Task", fault="SnapshotFault", message="disk full", count=2)
    result = _backup(vcsim, cli_repo)
    assert_one_line_error(result, "snapshot of DC0_H0_VM0 failed", "disk full")
    assert len(_points(cli_repo)) == 1
    _no_snapshots(vcsim)


class _DeleteVm(Progress):
    def __init__(self, vc: Vcsim) -> None:
        self.vc = vc

    def disk_started(self, vm: str, key: str, total_bytes: int, mode: str, reason: str | None) -> None:
        target = find_vm(self.vc.connect(), VM)
        wait_task(target.PowerOffVM_Task())
        wait_task(target.Destroy_Task())


def test_vm_deleted_mid_job_fails_cleanly(vcsim: Vcsim, repo: Repository, tmp_path: Path) -> None:
    capacity = vcsim.api.state(VM).disks[0].capacity
    scribble(vcsim, VM, capacity, random.Random(2), 10)
    image = disk_bytes(vcsim, VM, capacity)
    with connect(vcsim) as conn:
        first = back_up(conn, repo)
        with pytest.raises(TransportError, match="does not exist"):
            back_up(conn, repo, progress=_DeleteVm(vcsim), full_reason="test")
    assert [p.id for p in repo.points()] == [first.id]
    assert list(restored_disks(repo, first, tmp_path).values()) == [image]


def test_wrong_password_unknown_vm_unreachable_and_wrong_thumbprint(vcsim: Vcsim, cli_repo: Path) -> None:
    assert_one_line_error(_backup(vcsim, cli_repo, password="wrong"), "wrong user name or password")
    assert_one_line_error(_backup(vcsim, cli_repo, vm="no-such-vm"), "no VM named 'no-such-vm'")
    unreachable = run_cli(vcsim, "backup", "--vcenter", "127.0.0.1:1", "--user", "u", "--vm", VM, "--repo", cli_repo)
    assert_one_line_error(unreachable, "cannot reach 127.0.0.1:1")
    base = ["--vcenter", f"{vcsim.host}:{vcsim.port}", "--user", vcsim.user, "--vm", VM, "--repo", str(cli_repo)]
    wrong = "00" * 32
    assert_one_line_error(run_cli(vcsim, "backup", *base, "--thumbprint", wrong), "not the pinned")
    assert_one_line_error(run_cli(vcsim, "backup", *base), "not trusted", str(vcsim.thumbprint_sha256))
    assert run_cli(vcsim, "backup", *base, "--thumbprint", str(vcsim.thumbprint_sha256)).code == 0
    assert run_cli(vcsim, "backup", *base, "--thumbprint", str(vcsim.thumbprint_sha1)).code == 0
    assert len(_points(cli_repo)) == 2
    _no_snapshots(vcsim)


def test_password_never_on_the_command_line(vcsim: Vcsim, cli_repo: Path, tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(vcsim.password + "\n")
    result = run_vmkeep("backup", *cli_connection(vcsim), "--password-file", secret, "--vm", VM, "--repo", cli_repo)
    assert result.code == 0, result.err
    assert vcsim.password not in result.out + result.err
    for f in cli_repo.rglob("*"):
        if f.is_file():
            assert vcsim.password.encode() not in f.read_bytes()
    assert_one_line_error(
        run_vmkeep("backup", *cli_connection(vcsim), "--vm", VM, "--repo", cli_repo), "VMKEEP_PASSWORD"
    )


def test_leftover_snapshot_of_a_crashed_run_is_removed(vcsim: Vcsim, cli_repo: Path) -> None:
    vm = find_vm(vcsim.connect(), VM)
    wait_task(vm.CreateSnapshot_Task(name="vmkeep-backup-20260101T000000Z", memory=False, quiesce=False))
    result = _backup(vcsim, cli_repo)
    assert result.code == 0, result.err
    assert "left by an interrupted backup" in result.err
    _no_snapshots(vcsim)


def test_a_vm_with_its_own_snapshots_is_refused_clearly(vcsim: Vcsim, cli_repo: Path) -> None:
    vm = find_vm(vcsim.connect(), VM)
    wait_task(vm.CreateSnapshot_Task(name="before-upgrade", memory=False, quiesce=False))
    assert_one_line_error(_backup(vcsim, cli_repo), "1 snapshot(s) (before-upgrade)", "delta files")
    assert len(vcsim.api.state(VM).snapshots) == 1  # the user's snapshot is never touched
    assert _points(cli_repo) == []


def test_one_vm_failing_does_not_stop_the_others(vcsim: Vcsim, cli_repo: Path) -> None:
    result = run_cli(vcsim, "backup", *cli_connection(vcsim), "--vm", "ghost", "--vm", VM, "--repo", cli_repo, "--json")
    assert result.code == 1
    doc = json.loads(result.out)
    assert set(doc) == {"points", "failures", "results"}  # the shape backup-image prints too
    assert [p["vm"] for p in doc["points"]] == [VM]
    assert doc["failures"] == [{"vm": "ghost", "error": f"no VM named 'ghost' on {vcsim.host}"}]


def test_sigterm_removes_the_snapshot_and_commits_nothing(vcsim: Vcsim, cli_repo: Path) -> None:
    vcsim.api.delay(0.3, path_contains="-flat.vmdk", count=10_000)  # a slow datastore: the job takes a while
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")} | {"VMKEEP_PASSWORD": vcsim.password}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmkeep.agent.cli",
            "backup",
            *cli_connection(vcsim),
            "--vm",
            VM,
            "--repo",
            str(cli_repo),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while "full read" not in proc.stderr.readline().decode():  # the snapshot exists, reads are under way
        assert time.monotonic() < deadline and proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert _points(cli_repo) == []
    _no_snapshots(vcsim)
    vcsim.api.clear_faults()
    assert _backup(vcsim, cli_repo).code == 0


def test_an_expired_session_is_renewed(vcsim_factory, repo: Repository, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    vc = vcsim_factory(session_idle_timeout=1.0)
    with connect(vc) as conn:
        back_up(conn, repo)
        time.sleep(2.5)  # the session expires (the keep-alive runs every 5 minutes)
        point = back_up(conn, repo)
    assert point.disks[0].mode == "incremental"


def test_password_from_the_os_keyring(vcsim: Vcsim, cli_repo: Path, tmp_path: Path) -> None:
    """keyrings.alt's file backend stands in for a desktop keyring, which CI machines do not run."""
    env = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring", "XDG_DATA_HOME": str(tmp_path / "data")}
    server = f"{vcsim.host}:{vcsim.port}"
    stored = run_vmkeep("store-password", "--vcenter", server, "--user", vcsim.user, env=env, stdin=vcsim.password)
    assert stored.code == 0, stored.err
    assert "stores passwords unencrypted" in stored.err  # the administrator is told
    backup = run_vmkeep("backup", *cli_connection(vcsim), "--vm", VM, "--repo", cli_repo, env=env)
    assert backup.code == 0, backup.err
    assert run_vmkeep("store-password", "--vcenter", server, "--user", vcsim.user, "--delete", env=env).code == 0
    missing = run_vmkeep("backup", *cli_connection(vcsim), "--vm", VM, "--repo", cli_repo, env=env)
    assert_one_line_error(missing, "vmkeep store-password")
