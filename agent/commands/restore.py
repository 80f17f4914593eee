"""The restore command: a recovery point to image files (and, per platform, to a host)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..engine.restore import restore_point_to_dir
from ..exceptions import ConfigError
from ..output import human_size, print_json
from ..terminal import TerminalProgress
from .common import EXIT_OK, json_option, open_repository, repo_options


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "restore",
        help="restore a recovery point",
        description="Restore a recovery point. With --to-dir, write one sparse raw image per disk "
        "(named VM-KEY.img); existing files are never overwritten. POINT is an id, a unique prefix of one, "
        "'latest' or 'latest:VM'.",
    )
    p.add_argument("point", metavar="POINT", help="recovery point id or unique prefix, 'latest' or 'latest:VM'")
    repo_options(p)
    p.add_argument("--to-dir", type=Path, metavar="DIR", help="write raw disk images into DIR")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, metavar="N", help="reader threads")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    json_option(p)
    p.set_defaults(func=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    if args.to_dir is None:
        raise ConfigError("say where to restore: --to-dir DIR")
    with open_repository(args) as repo, repo.lock("restore"):
        point = repo.find_point(args.point)
        progress = TerminalProgress(quiet=args.quiet)
        disks = restore_point_to_dir(repo, point, args.to_dir, max(1, args.workers), progress)
    if args.json:
        print_json({"point": point.id, "vm": point.vm, "disks": [vars(d) for d in disks]})
    else:
        for d in disks:
            print(f"restored {point.vm} disk {d.key} ({human_size(d.size)}) to {d.path}")
    return EXIT_OK
