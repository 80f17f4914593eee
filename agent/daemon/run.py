"""One run of one job: which VMs, their backups, retention, history and the failure notice.

The same function serves the agent's schedule and ``vmkeep jobs run`` in the foreground.
The run holds its repository under one lock from start to end (re-reading the index if gc
changed it since the last run); each VM's backup makes its own writer under that lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vmkeep.hypervisors.exceptions import SourceError
from vmkeep.repository.exceptions import RepositoryError, RepositoryLocked
from vmkeep.repository.repo import Repository
from vmkeep.repository.retention import apply_policy

from ..config.load import LoadedConfig
from ..config.model import JobConfig
from ..engine.cancel import CancelToken
from ..engine.exceptions import Interrupted
from ..engine.jobs import BackupTask, Executor, RetryPolicy, TaskOptions, VmResult, VmStatus, run_tasks
from ..exceptions import AgentError
from ..extras import extra_error
from ..history import History, RunStatus, Trigger
from ..output import human_size
from .logs import event
from .resources import AgentResources
from .webhook import send_notice


@dataclass
class RunOutcome:
    run_id: int
    job: str
    trigger: Trigger
    status: RunStatus
    error: str | None = None
    results: list[VmResult] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)  # point ids removed by retention

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "job": self.job,
            "trigger": str(self.trigger),
            "status": str(self.status),
            "error": self.error,
            "vms": [r.to_json() for r in self.results],
            "forgotten": self.forgotten,
        }


class JobFailed(Exception):
    """The run cannot go on as a whole (repository or source unusable)."""


def run_job(
    name: str,
    *,
    run_id: int,
    trigger: Trigger,
    cfg: LoadedConfig,
    resources: AgentResources,
    history: History,
    token: CancelToken,
    only_vms: list[str] | None = None,
    on_result: Callable[[VmResult], None] | None = None,
) -> RunOutcome:
    """Run job ``name`` now; never raises for a failure of the job or of its VMs."""
    job: JobConfig = cfg.config.jobs[name]
    outcome = RunOutcome(run_id, name, trigger, RunStatus.RUNNING)
    event(logging.INFO, "run-started", job=name, run=run_id, trigger=str(trigger))

    def record(result: VmResult) -> None:
        history.record_vm(run_id, result)
        level = logging.INFO if result.status == VmStatus.SUCCEEDED else logging.ERROR
        event(
            level,
            f"vm-{result.status}",
            result.error or "",
            job=name,
            vm=result.vm,
            point=result.point_id[:12] if result.point_id else None,
            kind=result.kind,
            read=human_size(result.read_bytes) if result.point_id else None,
            stored=human_size(result.stored_bytes) if result.point_id else None,
            attempts=result.attempts,
            duration=f"{result.duration:.1f}s",
        )
        if on_result is not None:
            on_result(result)

    try:
        try:
            shared = resources.shared(job.repository)
        except (RepositoryError, AgentError, OSError) as exc:
            path = cfg.config.repositories[job.repository].path
            raise JobFailed(f"repository {job.repository!r} ({path}): {exc}") from None
        try:
            with shared.shared(token) as repo:
                tasks, unresolved = plan_tasks(name, cfg, only_vms)
                for result in unresolved:
                    record(result)
                retry = RetryPolicy(job.retries.count, job.retries.delay)
                done = run_tasks(
                    tasks,
                    resources,
                    token,
                    concurrency=job.concurrency,
                    retry=retry,
                    on_result=record,
                    executor=executor_of(cfg),
                )
                outcome.results = unresolved + done
                if job.retention is not None:
                    outcome.forgotten = _apply_retention(repo, name, job, [r.vm for r in done if r.point_id])
        except RepositoryLocked as exc:
            raise JobFailed(f"repository {job.repository!r} is locked: {exc}") from None
        except RepositoryError as exc:
            raise JobFailed(f"repository {job.repository!r}: {exc}") from None
    except JobFailed as exc:
        outcome.status, outcome.error = RunStatus.FAILED, str(exc)
    except Interrupted as exc:
        outcome.status, outcome.error = RunStatus.INTERRUPTED, str(exc)
    else:
        outcome.status = _status(outcome.results)
        failed = [r for r in outcome.results if not r.ok]
        if failed:
            outcome.error = "; ".join(f"{r.vm}: {r.error}" for r in failed)
    history.finish_run(run_id, outcome.status, outcome.error)
    if job.webhook and outcome.status in (RunStatus.FAILED, RunStatus.PARTIAL):  # not for a stop on request
        send_notice(job.webhook, outcome)
    ok = outcome.status == RunStatus.SUCCEEDED
    event(
        logging.INFO if ok else logging.ERROR,
        "run-finished",
        outcome.error or "",
        job=name,
        run=run_id,
        status=str(outcome.status),
        vms=len(outcome.results),
        failed=sum(1 for r in outcome.results if not r.ok),
        forgotten=len(outcome.forgotten) or None,
    )
    return outcome


def executor_of(cfg: LoadedConfig) -> Executor | None:
    """The job file's executor; None for the default (threads in this process). Celery is
    imported only when the job file asks for it."""
    from ..config.kinds import ExecutorType

    if cfg.config.executor.type != ExecutorType.CELERY:
        return None
    try:
        from ..fleet.executor import CeleryExecutor
        from ..fleet.settings import FleetSettings, vmkeep_version
    except ImportError as exc:
        raise JobFailed(str(extra_error("fleet", exc, "the celery executor"))) from None
    agent = cfg.config.agent
    try:
        executor = CeleryExecutor(
            FleetSettings.of(cfg), vmkeep_version(), agent.snapshots_per_host, agent.snapshots_per_datastore
        )
        executor.app  # noqa: B018 (makes the Celery app now: a missing extra fails the run, not each VM)
    except AgentError as exc:
        raise JobFailed(f"executor: {exc}") from None
    return executor


def _status(results: list[VmResult]) -> RunStatus:
    if any(r.status == VmStatus.INTERRUPTED for r in results):
        return RunStatus.INTERRUPTED
    if all(r.ok for r in results):
        return RunStatus.SUCCEEDED
    return RunStatus.PARTIAL if any(r.ok for r in results) else RunStatus.FAILED


def plan_tasks(name: str, cfg: LoadedConfig, only_vms: list[str] | None) -> tuple[list[BackupTask], list[VmResult]]:
    """The job's VMs found in the source's inventory now: tasks, and failed results for the others."""
    from vmkeep.hypervisors.platforms import open_platform

    from ..config.resolve import source_endpoint, source_kind

    config = cfg.config
    job = config.jobs[name]
    source = config.sources[job.source]
    try:
        with open_platform(source_kind(source), source_endpoint(job.source, source)) as platform:
            inventory = [v for v in platform.list_vms() if not v.template]
    except (SourceError, AgentError) as exc:
        raise JobFailed(f"source {job.source!r}: {exc}") from None
    options = TaskOptions(
        full_every=job.full_every, workers=job.workers, quiesce=job.quiesce, sanity_sample=job.sanity_sample
    )
    now = datetime.now(UTC)
    tasks: list[BackupTask] = []
    failed: list[VmResult] = []
    names = {v.name for v in inventory}
    for vm in inventory:
        if not job.matches(vm.name, vm.folder) or (only_vms and vm.name not in only_vms):
            continue
        others = [
            n for n, j in config.jobs.items() if n != name and j.source == job.source and j.matches(vm.name, vm.folder)
        ]
        if others:
            error = f"VM {vm.name!r} is also selected by job(s) {', '.join(others)}; a VM belongs to one job"
            failed.append(VmResult(name, vm.name, VmStatus.FAILED, now, error=error))
            continue
        tasks.append(BackupTask(name, vm.name, job.source, job.repository, options, vm.host, vm.datastores))
    wanted = set(only_vms or []) | job.exact_names
    for missing in sorted(wanted - names):
        failed.append(VmResult(name, missing, VmStatus.FAILED, now, error=f"no VM named {missing!r} on {job.source}"))
    for vm_name in sorted(set(only_vms or []) & names - {t.vm for t in tasks} - {r.vm for r in failed}):
        failed.append(VmResult(name, vm_name, VmStatus.FAILED, now, error=f"VM {vm_name!r} is not in job {name!r}"))
    return tasks, failed


def _apply_retention(repo: Repository, name: str, job: JobConfig, vms: list[str]) -> list[str]:
    """Forget the points of ``vms`` that the job's retention does not keep; their ids."""
    assert job.retention is not None
    if not vms:
        return []
    touched = set(vms)
    points = [p for p in repo.points() if p.vm in touched]
    removed = []
    for chain in apply_policy(points, job.retention.policy()):
        for decision in chain.removed:
            repo.delete_point(decision.point.id)
            removed.append(decision.point.id)
            event(logging.INFO, "point-forgotten", job=name, vm=decision.point.vm, point=decision.point.short_id)
    return removed
