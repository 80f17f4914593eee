"""Backup commands: backup-image (a raw image or block device)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from vmkeep.hypervisors.base import BackupSession
from vmkeep.hypervisors.platforms import Endpoint, Platform, PlatformKind, SessionOptions, open_platform
from vmkeep.repository.points import DiskRecord, RecoveryPoint
from vmkeep.repository.repo import Repository

from ..engine import cancel
from ..engine.jobs import BackupTask, Resources, RetryPolicy, TaskOptions, VmResult, VmStatus, run_tasks
from ..engine.progress import Progress
from ..engine.sanity import DEFAULT_WINDOWS, WINDOW
from ..output import human_duration, human_size, print_json, rate
from ..terminal import TerminalProgress
from .common import EXIT_OK, json_option, open_repository, repo_options

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backup-image",
        help="back up a raw disk image or block device",
        description="Back up a raw disk image (or block device) as a one-disk VM. With --hints (the JSON of "
        "'rbd diff --format=json') only the changed extents are read; without, the whole image is read and "
        "deduplicated against the repository. The image must not change while it is read.",
    )
    p.add_argument("image", type=Path, metavar="IMAGE", help="raw image file or block device")
    repo_options(p)
    p.add_argument("--name", metavar="NAME", help="VM name to record (default: the image's file name)")
    p.add_argument("--hints", type=Path, metavar="FILE", help="changed extents since the previous point")
    backup_options(p)
    p.set_defaults(func=cmd_backup_image)


def backup_options(p: argparse.ArgumentParser, workers: int | None = None) -> None:
    p.add_argument("--full", action="store_true", help="read every disk in full, whatever change tracking says")
    workers = workers or os.cpu_count() or 2
    p.add_argument(
        "--workers",
        type=int,
        default=workers,
        metavar="N",
        help=f"threads that read, hash and compress (default: {workers})",
    )
    p.add_argument(
        "--full-every",
        type=_positive,
        metavar="N",
        help="make every Nth backup of a VM an active full (read everything), e.g. 30: what proves a chain, "
        "since the sanity check cannot find one block the change list missed",
    )
    p.add_argument(
        "--sanity-sample",
        type=_count,
        metavar="N",
        help=f"windows of {WINDOW // 1024} KiB per disk, in unchanged blocks, to compare with the previous point "
        f"(and in unallocated blocks, to check for zeros); 0 turns the check off (default: {DEFAULT_WINDOWS})",
    )
    p.add_argument("--sanity-blocks", type=_count, metavar="N", help="deprecated: use --sanity-sample")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    json_option(p)


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


class CliResources(Resources):
    """One repository opened by the command, and sessions opened by ``open_session``, one task at a time."""

    def __init__(
        self, repo: Repository, open_session: Callable[[BackupTask], BackupSession], quiet: bool = False
    ) -> None:
        self._repo = repo
        self._open_session = open_session
        self._quiet = quiet

    @contextmanager
    def repository(self, task: BackupTask) -> Iterator[Repository]:
        with self._repo.lock("backup"):  # a lock per task; its writer is bound to it
            yield self._repo

    def session(self, task: BackupTask) -> BackupSession:
        return self._open_session(task)

    def progress(self, task: BackupTask) -> Progress:
        return TerminalProgress(quiet=self._quiet)


def run_cli_tasks(tasks: list[BackupTask], resources: Resources, retry: RetryPolicy | None = None) -> list[VmResult]:
    """Run the command's tasks one after the other; a lone VM's failure is raised as it was."""
    results = run_tasks(tasks, resources, cancel.root().child("cli"), retry=retry)
    for result in results:
        if result.status == VmStatus.INTERRUPTED and result.exception is not None:
            raise result.exception
    if len(results) == 1 and results[0].status == VmStatus.FAILED and results[0].exception is not None:
        raise results[0].exception
    return results


def session_opener(platform: Platform) -> Callable[[BackupTask], BackupSession]:
    """Opens the task's VM on ``platform`` with the task's options."""

    def open_session(task: BackupTask) -> BackupSession:
        return platform.open_session(task.vm, SessionOptions(quiesce=task.options.quiesce))

    return open_session


def cmd_backup_image(args: argparse.Namespace) -> int:
    with open_repository(args) as repo, open_platform(PlatformKind.IMAGE, Endpoint(str(args.image))) as platform:
        # An image's session is named after the file unless --name says otherwise ("" asks for that).
        options = SessionOptions(change_hints=args.hints)
        resources = CliResources(repo, lambda task: platform.open_session(args.name or "", options), args.quiet)
        vm = args.name or args.image.name
        [result] = run_cli_tasks(
            [BackupTask("backup-image", vm, str(args.image), repo.location, options_from(args))], resources
        )
    assert result.point is not None
    if args.json:
        print_results([result])
    else:
        report([result.point])
    return EXIT_OK


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, not {text!r}")
    return value
