"""Backup commands: backup-image (a raw image or block device)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..engine.sample_size import DEFAULT_WINDOWS, WINDOW
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
        type=positive,
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


def cmd_backup_image(args: argparse.Namespace) -> int:
    from vmkeep.hypervisors.platforms import Endpoint, PlatformKind, SessionOptions, open_platform

    from ..engine.jobs import BackupTask
    from .tasks import CliResources, options_from, print_results, report, run_cli_tasks

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


def positive(text: str) -> int:
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
