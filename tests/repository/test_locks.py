"""Locks name their holder beyond a host name, are stale only when provably so, and can be lost.

The container case is real: the holder runs in a new PID namespace made by ``unshare``, where
it is pid 1, on the same host name, exactly as a backup in a container on this machine is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.images import make_image
from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from vmkeep.repository.exceptions import LockLost, RepositoryLocked
from vmkeep.repository.gc import collect_garbage
from vmkeep.repository.locks import STALE_AFTER, LockInfo, LockKind, read_locks, this_holder
from vmkeep.repository.repo import Repository

HOLD_LOCK = """
import sys, time
from pathlib import Path
from vmkeep.repository.repo import Repository
import os
with Repository.open(Path(sys.argv[1]), None) as repo, repo.lock("backup"):
    print(os.getpid(), flush=True)
    time.sleep(60)
"""


def _unshare_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True, check=False)
    return probe.returncode == 0


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(repo_path: Path, name: str, doc: object) -> Path:
    path = repo_path / "locks" / name
    path.write_text(json.dumps(doc))
    return path


def _v2_lock(pid: int, pid_start: int, **holder: object) -> dict[str, object]:
    me = this_holder()
    return {
        "version": 2,
        "kind": "exclusive",
        "operation": "gc",
        "time": time.time(),
        "holder": {
            "host": me.host,
            "instance": "0123456789abcdef-1",
            "boot_id": me.boot_id,
            "pid_namespace": me.pid_namespace,
            "pid": pid,
            "pid_start": pid_start,
            **holder,
        },
    }


def test_a_lock_of_a_dead_process_in_this_namespace_is_stale(repo_path: Path, tmp_path: Path) -> None:
    lock = _write_lock(repo_path, "exclusive-0123456789abcdef", _v2_lock(_dead_pid(), 12345))
    result = run_vmkeep("backup-image", make_image(tmp_path / "vm.img", 100_000), "--repo", repo_path)
    assert result.code == 0, result.err
    assert "removing stale lock" in result.err and "its process is gone" in result.err
    assert not lock.exists()


@pytest.mark.parametrize(
    "other",
    [{"pid_namespace": "pid:[1]"}, {"boot_id": "00000000-0000-0000-0000-000000000000"}, {"host": "elsewhere"}],
    ids=["other-pid-namespace", "other-boot", "other-host"],
)
def test_a_fresh_lock_that_cannot_be_checked_here_is_respected(
    repo_path: Path, tmp_path: Path, other: dict[str, str]
) -> None:
    """The same dead pid, but from a namespace, boot or host where it cannot be looked up."""
    lock = _write_lock(repo_path, "exclusive-0123456789abcdef", _v2_lock(_dead_pid(), 12345, **other))
    result = run_vmkeep("backup-image", make_image(tmp_path / "vm.img", 100_000), "--repo", repo_path)
    assert_one_line_error(result, "in use by gc")
    assert lock.exists()


def test_a_lock_not_refreshed_for_the_stale_period_is_removed(repo_path: Path, tmp_path: Path) -> None:
    doc = _v2_lock(1, 1, host="elsewhere")
    doc["time"] = time.time() - STALE_AFTER - 60
    lock = _write_lock(repo_path, "exclusive-0123456789abcdef", doc)
    old = time.time() - STALE_AFTER - 60
    os.utime(lock, (old, old))
    result = run_vmkeep("backup-image", make_image(tmp_path / "vm.img", 100_000), "--repo", repo_path)
    assert result.code == 0, result.err
    assert "not refreshed for" in result.err and not lock.exists()


@pytest.mark.skipif(not _unshare_available(), reason="unshare --pid is not permitted here")
def test_gc_respects_a_backup_running_in_another_pid_namespace(repo_path: Path, tmp_path: Path) -> None:
    """Finding 2: a live holder that is pid 1 in its container must not be judged dead."""
    script = tmp_path / "hold.py"
    script.write_text(HOLD_LOCK)
    holder = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(script), str(repo_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "1"  # it is pid 1 in its namespace
        result = run_vmkeep("gc", "--repo", repo_path)
        assert_one_line_error(result, "in use by backup", "pid 1 on")
        assert "stale" not in result.err
        (found,) = read_locks_of(repo_path)
        assert found.info is not None and found.info.holder.pid == 1
    finally:
        holder.kill()
        holder.wait()


def read_locks_of(repo_path: Path) -> list:  # type: ignore[type-arg]
    with Repository.open(repo_path, None) as repo:
        return read_locks(repo.backend)


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all",
        json.dumps({**_v2_lock(1, 1), "version": 7}).encode(),
        json.dumps({**_v2_lock(1, 1), "kind": 3}).encode(),
    ],
    ids=["garbage", "unknown-version", "wrong-type"],
)
def test_an_unreadable_lock_counts_as_held_and_is_reported(repo_path: Path, content: bytes) -> None:
    lock = repo_path / "locks" / "shared-0123456789abcdef"
    lock.write_bytes(content)
    result = run_vmkeep("gc", "--repo", repo_path)
    assert_one_line_error(result, "unreadable lock file locks/shared-0123456789abcdef")
    assert lock.exists()
    # ... until it has not been touched for the stale period.
    old = time.time() - STALE_AFTER - 60
    os.utime(lock, (old, old))
    result = run_vmkeep("gc", "--repo", repo_path)
    assert result.code == 0, result.err
    assert not lock.exists()


def test_an_extra_field_does_not_make_a_lock_unreadable(repo_path: Path) -> None:
    doc = _v2_lock(os.getpid(), this_holder().pid_start)
    doc["kind"] = "shared"
    doc["future_field"] = {"anything": 1}
    _write_lock(repo_path, "shared-0123456789abcdef", doc)
    (found,) = read_locks_of(repo_path)
    assert found.info is not None and found.info.kind is LockKind.SHARED
    with Repository.open(repo_path, None) as repo, pytest.raises(RepositoryLocked):
        collect_garbage(repo)


def test_lock_files_round_trip(repo_path: Path) -> None:
    with Repository.open(repo_path, None) as repo, repo.lock("backup") as lock:
        (found,) = read_locks(repo.backend)
        assert found.info is not None
        assert found.info == LockInfo.parse(found.info.dump(), found.name)
        assert found.info.holder == this_holder()
        assert lock.held


def test_a_writer_needs_a_held_lock(repo_path: Path) -> None:
    with Repository.open(repo_path, None) as repo:
        with pytest.raises(LockLost, match="no repository lock is held"):
            repo.writer()
        with repo.lock("backup"):
            writer = repo.writer()
        try:
            with pytest.raises(LockLost, match="released"):
                writer.known(b"\x01" * 32)
        finally:
            writer.close()


def test_a_lock_removed_by_another_process_is_lost(repo_path: Path) -> None:
    with Repository.open(repo_path, None) as repo, repo.lock("backup") as lock:
        writer = repo.writer()
        try:
            for f in (repo_path / "locks").iterdir():
                f.unlink()  # what a process that wrongly judged it stale would do
            lock.refresh()
            assert not lock.held
            with pytest.raises(LockLost, match="removed it as stale"):
                writer.known(b"\x01" * 32)
            with pytest.raises(LockLost):
                writer.flush()
        finally:
            writer.close()


def test_verify_names_an_unreadable_lock_and_unlock_removes_it(repo_path: Path) -> None:
    garbage = repo_path / "locks" / "exclusive-0123456789abcdef"
    garbage.write_bytes(b"\x00\x01 torn")
    live = _write_lock(
        repo_path, "shared-fedcba9876543210", {**_v2_lock(os.getpid(), this_holder().pid_start), "kind": "shared"}
    )
    assert_one_line_error(run_vmkeep("verify", "--repo", repo_path), "unreadable lock file")  # it blocks verify too
    garbage.rename(repo_path / "locks" / "shared-0123456789abcdef")
    result = run_vmkeep("verify", "--repo", repo_path)
    assert result.code == 0 and "unreadable lock file locks/shared-0123456789abcdef" in result.out
    assert run_vmkeep("unlock", "--repo", repo_path).out.strip() == "removed 0 lock(s)"  # neither is stale
    result = run_vmkeep("unlock", "--repo", repo_path, "--remove-all", "--json")
    assert result.code == 0 and len(json.loads(result.out)) == 2
    assert not live.exists() and not list((repo_path / "locks").iterdir())
