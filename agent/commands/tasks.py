"""Running backup tasks from a command: its resources, its options, and how results are printed.

Imported when a backup command runs, not when its options are parsed, so that the passphrase's
key derivation (started once the arguments are known) overlaps with loading the engine.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import cast

from vmkeep.hypervisors.base import BackupSession
from vmkeep.hypervisors.platforms import Endpoint, Platform, PlatformKind, SessionOptions, login_and_open
from vmkeep.repository.points import DiskRecord, RecoveryPoint
from vmkeep.repository.repo import Repository

from ..engine import cancel
from ..engine.cancel import CancelToken
from ..engine.jobs import BackupTask, Resources, RetryPolicy, TaskOptions, VmResult, VmStatus, run_tasks
from ..engine.leases import SharedRepository
from ..engine.limits import SnapshotLimits
from ..engine.progress import Progress
from ..output import human_duration, human_size, print_json, rate
from ..terminal import TerminalProgress

log = logging.getLogger(__name__)


def options_from(args: argparse.Namespace) -> TaskOptions:
    return TaskOptions(
        full=args.full,
        workers=max(1, args.workers),
        sanity_sample=sanity_sample(args),
        full_every=args.full_every,
        quiesce=not getattr(args, "no_quiesce", False),
    )


def sanity_sample(args: argparse.Namespace) -> int | None:
    """--sanity-sample, or the deprecated --sanity-blocks (which counted whole blocks; now windows)."""
    if args.sanity_sample is None and args.sanity_blocks is not None:
        log.warning("--sanity-blocks is deprecated: use --sanity-sample (it counts 64 KiB windows, not blocks)")
        return int(args.sanity_blocks)
    return cast("int | None", args.sanity_sample)


SessionOpener = Callable[[BackupTask], AbstractContextManager[BackupSession]]


class CliResources(Resources):
    """The repository the command opened, and a session per task from ``open_session``.

    Tasks that run at once share one lock on the repository (the first takes it, the last
    releases it, as the agent's do); tasks that run one after the other each take a fresh one,
    and every writer is bound to the lock it was made under. With ``limits``, a task waits for a
    snapshot slot of its host and datastores.
    """

    def __init__(
        self,
        repo: Repository,
        open_session: SessionOpener,
        quiet: bool = False,
        limits: SnapshotLimits | None = None,
    ) -> None:
        self._shared = SharedRepository(repo)
        self._open_session = open_session
        self._quiet = quiet
        self._limits = limits

    def repository(self, task: BackupTask) -> AbstractContextManager[Repository]:
        return self._shared.shared()

    def session(self, task: BackupTask) -> AbstractContextManager[BackupSession]:
        return self._open_session(task)

    def progress(self, task: BackupTask) -> Progress:
        return TerminalProgress(quiet=self._quiet)

    def slot(self, task: BackupTask, token: CancelToken) -> AbstractContextManager[object]:
        return self._limits.slot(task, token) if self._limits is not None else nullcontext()


def run_cli_tasks(
    tasks: list[BackupTask], resources: Resources, retry: RetryPolicy | None = None, concurrency: int = 1
) -> list[VmResult]:
    """Run the command's tasks, ``concurrency`` at a time; a lone VM's failure is raised as it was."""
    results = run_tasks(tasks, resources, cancel.root().child("cli"), retry=retry, concurrency=concurrency)
    for result in results:
        if result.status == VmStatus.INTERRUPTED and result.exception is not None:
            raise result.exception
    if len(results) == 1 and results[0].status == VmStatus.FAILED and results[0].exception is not None:
        raise results[0].exception
    return results


def session_opener(platform: Platform) -> SessionOpener:
    """Opens the task's VM on ``platform``, the command's one login (for tasks run one at a time)."""

    def open_session(task: BackupTask) -> BackupSession:
        return platform.open_session(task.vm, SessionOptions(quiesce=task.options.quiesce))

    return open_session


def login_per_task(kind: PlatformKind, endpoint: Endpoint) -> SessionOpener:
    """Logs in for each task and opens its VM (for tasks run at once: a login is not shared by threads)."""

    def open_session(task: BackupTask) -> AbstractContextManager[BackupSession]:
        return login_and_open(kind, endpoint, task.vm, SessionOptions(quiesce=task.options.quiesce))

    return open_session


def print_results(results: list[VmResult]) -> None:
    """The --json document of every backup command: the points committed, the failures, each VM's result."""
    print_json(
        {
            "points": [r.point.summary_json() for r in results if r.point is not None],
            "failures": [{"vm": r.vm, "error": r.error} for r in results if r.error is not None],
            "results": [r.to_json() for r in results],
        }
    )


def report(points: list[RecoveryPoint]) -> None:
    for point in points:
        read = sum(d.read_bytes for d in point.disks)
        print(
            f"{point.vm}: recovery point {point.short_id} ({point.kind}) in {human_duration(point.duration)}, "
            f"{rate(read, point.duration)}"
        )
        for d in point.disks:
            how = d.mode if d.reason is None else f"{d.mode} ({d.reason})"
            print(
                f"  {d.name}: {human_size(d.capacity)}, {how}: read {read_figure(d)}, "
                f"new {human_size(d.new_bytes)}, stored {human_size(d.stored_bytes)}, zero {human_size(d.zero_bytes)}"
            )
        for warning in point.warnings:
            print(f"  warning: {warning}")


def read_figure(disk: DiskRecord) -> str:
    """What was read: "3.0 MiB", or "3.0 MiB + 1.0 MiB sanity check (16 windows)" when a sample was read."""
    if not disk.sanity_bytes:
        return human_size(disk.read_bytes)
    windows = f" ({disk.sanity_windows} windows)" if disk.sanity_windows else ""
    return f"{human_size(disk.read_bytes - disk.sanity_bytes)} + {human_size(disk.sanity_bytes)} sanity check{windows}"
