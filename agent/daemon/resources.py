"""What the agent's tasks run with: repositories unlocked once and shared, a login per task."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from vmkeep.hypervisors.base import BackupSession
from vmkeep.repository.repo import Repository

from ..config.load import LoadedConfig
from ..config.model import RepositoryConfig
from ..config.resolve import open_repository, source_endpoint, source_kind
from ..engine.cancel import CancelToken
from ..engine.jobs import BackupTask, Resources
from ..engine.leases import SharedRepository
from ..engine.limits import SnapshotLimits


class RepositoryPool:
    """Each repository of the job file opened (and its key unlocked) once, then kept."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._open: dict[tuple[str, RepositoryConfig], SharedRepository] = {}

    def get(self, name: str, config: RepositoryConfig) -> SharedRepository:
        """The shared handle; raises (RepositoryError, ConfigError) if it cannot be opened."""
        with self._guard:
            shared = self._open.get((name, config))
            if shared is None:
                shared = self._open[(name, config)] = SharedRepository(open_repository(name, config))
            return shared

    def close(self) -> None:
        with self._guard:
            for shared in self._open.values():
                shared.repo.close()
            self._open.clear()


class AgentResources(Resources):
    """Resources for tasks from the loaded job file."""

    def __init__(
        self,
        cfg: LoadedConfig,
        pool: RepositoryPool,
        limits: SnapshotLimits,
        on_session: Callable[[str, str, bool], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.limits = limits
        self._on_session = on_session  # (job, vm, open) as a VM's session opens and closes

    def shared(self, repository: str) -> SharedRepository:
        return self.pool.get(repository, self.cfg.config.repositories[repository])

    def repository(self, task: BackupTask) -> AbstractContextManager[Repository]:
        return self.shared(task.repository).shared(join=True)  # under the lock its job run holds

    @contextmanager
    def session(self, task: BackupTask) -> Iterator[BackupSession]:
        """A login to the task's source (its platform from the registry), and a session on its VM."""
        from vmkeep.hypervisors.platforms import SessionOptions, login_and_open

        source = self.cfg.config.sources[task.source]
        if self._on_session is not None:
            self._on_session(task.job, task.vm, True)
        try:
            options = SessionOptions(quiesce=task.options.quiesce)
            with login_and_open(source_kind(source), source_endpoint(task.source, source), task.vm, options) as session:
                yield session
        finally:
            if self._on_session is not None:
                self._on_session(task.job, task.vm, False)

    def slot(self, task: BackupTask, token: CancelToken) -> AbstractContextManager[object]:
        return self.limits.slot(task, token)

    def report_running(self, job: str, vm: str, running: bool) -> None:
        """A VM's backup runs elsewhere (a worker of the fleet) and began or ended: as a session here would."""
        if self._on_session is not None:
            self._on_session(job, vm, running)
