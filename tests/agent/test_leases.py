"""One repository handle shared by a process's tasks: one lock at a time, gc waits for the tasks."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from vmkeep.agent.engine.cancel import CancelToken
from vmkeep.agent.engine.exceptions import Interrupted
from vmkeep.agent.engine.leases import SharedRepository
from vmkeep.repository.exceptions import RepositoryLocked
from vmkeep.repository.locks import read_locks
from vmkeep.repository.repo import Repository


def _lock_kinds(repo: Repository) -> list[str]:
    return sorted(str(found.kind) for found in read_locks(repo.backend))


def test_concurrent_users_share_one_lock_and_the_last_releases_it(repo: Repository) -> None:
    shared = SharedRepository(repo)
    with shared.shared() as first:
        assert _lock_kinds(repo) == ["shared"]
        with shared.shared(join=True) as second:
            assert second is first and _lock_kinds(repo) == ["shared"]  # one lock, one writer binding
            writer = second.writer()
            writer.close()
        assert _lock_kinds(repo) == ["shared"]
    assert _lock_kinds(repo) == []


def test_gc_waits_for_running_tasks_which_still_join(repo: Repository) -> None:
    shared = SharedRepository(repo)
    ran: list[list[str]] = []

    def gc(r: Repository) -> str:
        with r.lock("gc", exclusive=True):
            ran.append(_lock_kinds(r))
        return "done"

    job = shared.shared()
    job.__enter__()
    results: list[str] = []
    waiter = threading.Thread(target=lambda: results.append(shared.run_exclusive(gc)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and ran == []  # gc waits while the job holds the repository
    with shared.shared(join=True):  # a task of the running job is not stopped by the waiting gc
        pass
    job.__exit__(None, None, None)
    waiter.join(30)
    assert results == ["done"] and ran == [["exclusive"]]
    assert _lock_kinds(repo) == []


def test_gc_retries_while_another_process_holds_the_repository(repo_path: Path, repo: Repository) -> None:
    shared = SharedRepository(repo)
    attempts: list[int] = []
    with Repository.open(repo_path, None) as other, other.lock("someone else's backup"):

        def gc(r: Repository) -> int:
            attempts.append(1)
            if len(attempts) == 3:
                raise AssertionError("unreachable")
            with r.lock("gc", exclusive=True):
                return len(attempts)

        with pytest.raises(RepositoryLocked):  # gives up when told to
            shared.run_exclusive(gc, retry_every=0.01, give_up_after=0.0)
    assert shared.run_exclusive(gc, retry_every=0.01) == 2  # the other holder is gone: it runs


def test_a_cancelled_gc_stops_waiting(repo: Repository) -> None:
    shared = SharedRepository(repo)
    token = CancelToken()
    with shared.shared():
        token.cancel("the agent is stopping")
        with pytest.raises(Interrupted):
            shared.run_exclusive(lambda r: None, token)
