"""The engine's commit sequence with a session: prepare, save, commit_failed or after_commit, close(committed).

The session here is the disk-image source itself (a real image file, a real repository),
subclassed in this test only to record which step ran when and to fail one step on demand:
the image source has no step of its own that can fail after the disks are read, and Hyper-V's
(converting a checkpoint, destroying the old reference point) are what these steps are for.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import make_image
from tests.fixtures.repos import run_vmkeep
from vmkeep.agent.engine.cancel import CancelToken
from vmkeep.agent.engine.jobs import BackupTask, Resources, VmResult, VmStatus, run_tasks
from vmkeep.hypervisors.base import BackupSession, CommitState
from vmkeep.hypervisors.exceptions import SourceError
from vmkeep.hypervisors.image.session import ImageSession
from vmkeep.repository.locks import Lock
from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.repo import Repository


class StepSession(ImageSession):
    """The image source, recording the commit steps; ``fail`` names the step that raises."""

    def __init__(self, path: Path, fail: str | None = None, token: str = "rct-1") -> None:
        super().__init__(path, "vm")
        self.fail = fail
        self.token = token
        self.steps: list[Any] = []
        self.lock: Lock | None = None  # the repository lock, for the "save" fault
        self.warnings.append("change tracking was reset; read in full")

    def prepare_commit(self) -> CommitState:
        self.steps.append("prepare_commit")
        if self.fail == "prepare":
            raise SourceError("converting the checkpoint to a reference point failed")
        if self.fail == "save":
            # The real way a point's write fails after the packs: the repository lock is gone.
            assert self.lock is not None
            self.lock.release()
        return CommitState({"disk0": self.token}, {"reference_point": f"rp-{self.token}"})

    def commit_failed(self) -> None:
        self.steps.append("commit_failed")

    def after_commit(self, point: RecoveryPoint, previous: RecoveryPoint | None) -> None:
        self.steps.append(("after_commit", point.id, previous.id if previous else None))
        if self.fail == "after":
            raise SourceError("could not destroy the previous reference point rp-0")

    def close(self, committed: bool) -> None:
        self.steps.append(("close", committed))
        if self.fail == "close" and not self.close_warnings:
            self.close_warnings.append("could not remove checkpoint vmkeep-1 of vm")
        super().close(committed)


class OneSession(Resources):
    """The test's repository under a lock of its own, and the one session given."""

    def __init__(self, repo: Repository, session: StepSession) -> None:
        self.repo = repo
        self.the_session = session

    @contextmanager
    def repository(self, task: BackupTask) -> Iterator[Repository]:
        with self.repo.lock("backup") as lock:
            self.the_session.lock = lock
            yield self.repo

    def session(self, task: BackupTask) -> BackupSession:
        return self.the_session  # a context manager: leaving it closes the session


def _run(repo: Repository, session: StepSession) -> VmResult:
    [result] = run_tasks([BackupTask("test", "vm", "image", "repo")], OneSession(repo, session), CancelToken())
    return result


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return make_image(tmp_path / "vm.img", 400_000, seed=3)


def test_a_point_records_the_tokens_and_source_of_prepare_commit_then_after_commit_then_close(
    repo: Repository, image: Path
) -> None:
    first = StepSession(image, token="rct-1")
    one = _run(repo, first)
    assert one.status == VmStatus.SUCCEEDED and one.error is None
    assert first.steps == ["prepare_commit", ("after_commit", one.point_id, None), ("close", True)]
    second = StepSession(image, token="rct-2")
    two = _run(repo, second)
    assert second.steps == ["prepare_commit", ("after_commit", two.point_id, one.point_id), ("close", True)]
    stored = {p.id: p for p in repo.points()}
    assert stored[one.point_id].disks[0].change_token == "rct-1"
    assert stored[two.point_id].disks[0].change_token == "rct-2"
    assert stored[two.point_id].source["reference_point"] == "rp-rct-2"
    assert stored[two.point_id].source["type"] == "image"  # the source's own keys stay


def test_a_failing_prepare_commit_commits_nothing_and_closes_uncommitted(repo: Repository, image: Path) -> None:
    session = StepSession(image, fail="prepare")
    result = _run(repo, session)
    assert result.status == VmStatus.FAILED and result.point_id is None
    assert result.error == "converting the checkpoint to a reference point failed"
    assert session.steps == ["prepare_commit", ("close", False)]
    assert repo.points() == []


def test_a_failing_save_calls_commit_failed_and_closes_uncommitted(repo: Repository, image: Path) -> None:
    session = StepSession(image, fail="save")
    result = _run(repo, session)
    assert result.status == VmStatus.FAILED and result.point_id is None
    assert result.error is not None and "lock" in result.error
    assert session.steps == ["prepare_commit", "commit_failed", ("close", False)]
    assert repo.point_ids() == []


def test_a_failing_after_commit_keeps_the_point_and_warns(repo: Repository, image: Path) -> None:
    session = StepSession(image, fail="after")
    result = _run(repo, session)
    assert result.status == VmStatus.WARNING and result.ok
    [point] = repo.points()
    assert result.point_id == point.id
    message = f"after the point {point.short_id} was committed: could not destroy the previous reference point rp-0"
    assert result.error == message
    assert result.warnings == ["change tracking was reset; read in full", message]
    assert session.steps[-1] == ("close", True)  # committed, whatever after_commit did
    assert result.to_json()["warnings"] == result.warnings


def test_close_warnings_make_a_warning_result(repo: Repository, image: Path) -> None:
    session = StepSession(image, fail="close")
    result = _run(repo, session)
    assert result.status == VmStatus.WARNING and result.point_id is not None
    assert result.error == "could not remove checkpoint vmkeep-1 of vm"
    assert result.warnings[-1] == "could not remove checkpoint vmkeep-1 of vm"


def test_session_warnings_are_stored_in_the_point_and_printed(repo: Repository, repo_path: Path, image: Path) -> None:
    result = _run(repo, StepSession(image))
    assert result.status == VmStatus.SUCCEEDED  # a warning of the source alone needs no attention
    assert result.warnings == ["change tracking was reset; read in full"]
    [point] = repo.points()
    assert point.warnings == ["change tracking was reset; read in full"]
    listed = run_vmkeep("points", "--repo", repo_path, "--json")
    assert listed.code == 0, listed.err
    assert json.loads(listed.out)[0]["warnings"] == ["change tracking was reset; read in full"]
    text = run_vmkeep("points", "--repo", repo_path)
    assert text.code == 0, text.err
    assert f"{point.short_id} vm: warning: change tracking was reset; read in full" in text.out.splitlines()


def test_a_session_closes_twice_safely_and_exit_passes_committed(image: Path) -> None:
    session = StepSession(image)
    with session:
        session.committed = True
    session.close(True)
    assert session.steps == [("close", True), ("close", True)]
