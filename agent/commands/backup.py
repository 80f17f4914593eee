"""Backup commands: backup-image (a raw image or block device)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vmkeep.hypervisors.base import BackupSession
from vmkeep.hypervisors.image.session import ImageSession
from vmkeep.repository.points import DiskRecord, RecoveryPoint
from vmkeep.repository.repo import Repository

from ..engine.backup import BackupOptions, backup_vm
from ..output import human_duration, human_size, print_json, rate
from ..terminal import TerminalProgress
from .common import EXIT_OK, json_option, open_repository, repo_options


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
        "--sanity-blocks",
        type=int,
        metavar="N",
        help="unchanged blocks to re-read and compare with the previous point (default: 8, or 1 in 1024, max 256)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    json_option(p)


def options_from(args: argparse.Namespace) -> BackupOptions:
    return BackupOptions(
        full_reason="a full backup was requested (--full)" if args.full else None,
        workers=max(1, args.workers),
        sanity_blocks=args.sanity_blocks,
        full_every=args.full_every,
    )


def run_backup(repo: Repository, session: BackupSession, args: argparse.Namespace) -> RecoveryPoint:
    with repo.lock("backup"):
        return backup_vm(session, repo, options_from(args), TerminalProgress(quiet=args.quiet))


def cmd_backup_image(args: argparse.Namespace) -> int:
    with open_repository(args) as repo, ImageSession(args.image, args.name, args.hints) as session:
        point = run_backup(repo, session, args)
    report([point], args.json)
    return EXIT_OK


def point_report(point: RecoveryPoint) -> dict[str, Any]:
    return point.summary_json()


def report(points: list[RecoveryPoint], as_json: bool) -> None:
    if as_json:
        print_json(point_report(points[0]) if len(points) == 1 else [point_report(p) for p in points])
        return
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


def read_figure(disk: DiskRecord) -> str:
    """What was read: "3.0 MiB", or "3.0 MiB + 8.0 MiB sanity check" when a sample was re-read to check."""
    if not disk.sanity_bytes:
        return human_size(disk.read_bytes)
    return f"{human_size(disk.read_bytes - disk.sanity_bytes)} + {human_size(disk.sanity_bytes)} sanity check"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value
