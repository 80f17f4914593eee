"""Repository commands: init, points, forget, gc, verify.

gc, verify, retention and stats are imported by the commands that use them: start-up time is
most of a small incremental backup's run time, so modules a backup does not need wait.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from vmkeep.repository.config import DEFAULT_BLOCK_SIZE, DEFAULT_COMPRESSION_LEVEL, DEFAULT_PACK_SIZE, RepoConfig
from vmkeep.repository.points import format_time
from vmkeep.repository.repo import Repository

from .. import secrets
from ..exceptions import ConfigError
from ..output import human_size, parse_size, print_json, print_table
from .common import EXIT_DAMAGED, EXIT_OK, json_option, no_lock_option, open_repository, repo_options, repo_path


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("init", help="create a repository", description="Create a new, empty repository.")
    repo_options(p, positional=True)
    p.add_argument(
        "--block-size",
        default=str(DEFAULT_BLOCK_SIZE),
        metavar="SIZE",
        help="fixed block size, a power of two from 4K to 64M (default: 1M); cannot change later",
    )
    p.add_argument("--encrypt", action="store_true", help="encrypt with AES-256-GCM under a passphrase")
    p.add_argument(
        "--compression-level",
        type=int,
        default=DEFAULT_COMPRESSION_LEVEL,
        metavar="N",
        help=f"zstd level, 0 for none (default: {DEFAULT_COMPRESSION_LEVEL})",
    )
    p.add_argument(
        "--pack-size",
        default=str(DEFAULT_PACK_SIZE),
        metavar="SIZE",
        help="target size of pack files (default: 32M)",
    )
    json_option(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "points",
        help="list recovery points",
        description="List recovery points, oldest first, with what each backup read and stored.",
    )
    repo_options(p)
    p.add_argument("--vm", metavar="NAME", help="only points of this VM")
    p.add_argument(
        "--sizes",
        action="store_true",
        help="also compute each point's unique size: what deleting it alone would free (reads all tree nodes)",
    )
    no_lock_option(p)
    json_option(p)
    p.set_defaults(func=cmd_points)

    p = sub.add_parser(
        "forget",
        help="delete recovery points by a retention policy",
        description="Delete recovery points that the --keep-* policy does not keep, per VM. "
        "Space is reclaimed by gc. Calendar periods are counted in this machine's time zone.",
    )
    repo_options(p)
    for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        p.add_argument(f"--keep-{name}", type=int, default=0, metavar="N", help=f"keep {name} points")
    p.add_argument("--vm", metavar="NAME", help="only consider points of this VM")
    p.add_argument("--dry-run", "-n", action="store_true", help="show what would be deleted, delete nothing")
    json_option(p)
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser(
        "gc",
        help="reclaim space no recovery point uses",
        description="Delete blocks that no recovery point references, repacking packs that are mostly garbage. "
        "Takes an exclusive lock: it waits for no one and refuses to run while a backup holds the repository.",
    )
    repo_options(p)
    p.add_argument("--dry-run", "-n", action="store_true", help="report what would be freed, change nothing")
    json_option(p)
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser(
        "verify",
        help="check the repository, or a recovery point against its source",
        description="Check the repository's structure; with --read-data also re-read and re-check every block. "
        "With --against-source IMAGE, instead compare a recovery point with the live image, block by block: "
        "the only proof that a change list missed nothing (the CBT sanity check samples; it cannot prove that). "
        "Exits with status 3 when it finds damage or a difference.",
    )
    repo_options(p)
    p.add_argument("--read-data", action="store_true", help="read and check every stored byte")
    source = p.add_argument_group(
        "compare with the source",
        "The image must hold the state the point was taken from (kept still since, or a snapshot): "
        "anything written to it after the backup shows as a difference.",
    )
    source.add_argument(
        "--against-source",
        type=Path,
        metavar="IMAGE",
        help="compare a point with this raw image or block device, every block, reporting the differing offsets",
    )
    source.add_argument("--point", metavar="REF", help="the point to compare (default: latest:NAME)")
    source.add_argument("--name", metavar="NAME", help="the VM name the image was backed up as (default: file name)")
    source.add_argument(
        "--workers", type=int, default=os.cpu_count() or 2, metavar="N", help="reader threads (default: CPUs)"
    )
    no_lock_option(p)
    json_option(p)
    p.set_defaults(func=cmd_verify)


def cmd_init(args: argparse.Namespace) -> int:
    path = repo_path(args)
    try:
        config = RepoConfig.new(
            block_size=parse_size(args.block_size),
            encrypted=args.encrypt,
            compression_level=args.compression_level,
            pack_size=parse_size(args.pack_size),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    passphrase = secrets.passphrase(args.passphrase_file, confirm=True, required=True) if args.encrypt else None
    with Repository.init(path, config, passphrase) as repo:
        doc = {
            "repo": str(path),
            "id": repo.config.repo_id,
            "block_size": config.block_size,
            "encryption": config.encryption,
            "compression_level": config.compression_level,
        }
    if args.json:
        print_json(doc)
    else:
        print(
            f"created repository {path} (block size {human_size(config.block_size)}, "
            f"encryption {config.encryption}, zstd level {config.compression_level})"
        )
    return EXIT_OK


def cmd_points(args: argparse.Namespace) -> int:
    from vmkeep.repository.stats import unique_sizes

    with open_repository(args) as repo, repo.lock("points"):
        points = repo.points(args.vm)
        sizes = unique_sizes(repo, repo.points()) if args.sizes else {}
    if args.json:
        docs: list[dict[str, Any]] = []
        for p in points:
            doc = p.summary_json()
            if args.sizes:
                doc["unique_bytes"] = sizes.get(p.id, 0)
            docs.append(doc)
        print_json(docs)
        return EXIT_OK
    if not points:
        print("no recovery points" + (f" of VM {args.vm!r}" if args.vm else ""))
        return EXIT_OK
    headers = ["ID", "TIME (UTC)", "VM", "KIND", "DISKS", "SIZE", "READ", "NEW", "STORED"]
    if args.sizes:
        headers.append("UNIQUE")
    rows = []
    for p in points:
        row = [
            p.short_id,
            format_time(p.time)[:19].replace("T", " "),
            p.vm,
            p.kind,
            str(len(p.disks)),
            human_size(sum(d.capacity for d in p.disks)),
            human_size(sum(d.read_bytes for d in p.disks)),
            human_size(sum(d.new_bytes for d in p.disks)),
            human_size(sum(d.stored_bytes for d in p.disks)),
        ]
        if args.sizes:
            row.append(human_size(sizes.get(p.id, 0)))
        rows.append(row)
    print_table(headers, rows, right={4, 5, 6, 7, 8, 9})
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    from vmkeep.repository.retention import RetentionPolicy, apply_policy

    policy = RetentionPolicy(
        last=args.keep_last,
        hourly=args.keep_hourly,
        daily=args.keep_daily,
        weekly=args.keep_weekly,
        monthly=args.keep_monthly,
        yearly=args.keep_yearly,
    )
    if policy.empty():
        raise ConfigError("no --keep-* option given: refusing to forget every recovery point")
    if (
        min(args.keep_last, args.keep_hourly, args.keep_daily, args.keep_weekly, args.keep_monthly, args.keep_yearly)
        < 0
    ):
        raise ConfigError("--keep-* values cannot be negative")
    with open_repository(args) as repo, repo.lock("forget"):
        decisions = apply_policy(repo.points(args.vm), policy)
        if not args.dry_run:
            for d in decisions:
                if not d.keep:
                    repo.delete_point(d.point.id)
    removed = [d for d in decisions if not d.keep]
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "keep": [
                    {"id": d.point.id, "vm": d.point.vm, "time": format_time(d.point.time), "reasons": d.reasons}
                    for d in decisions
                    if d.keep
                ],
                "remove": [{"id": d.point.id, "vm": d.point.vm, "time": format_time(d.point.time)} for d in removed],
            }
        )
        return EXIT_OK
    rows = [
        [
            d.point.short_id,
            format_time(d.point.time)[:19].replace("T", " "),
            d.point.vm,
            "keep" if d.keep else ("would remove" if args.dry_run else "removed"),
            ", ".join(d.reasons),
        ]
        for d in decisions
    ]
    if rows:
        print_table(["ID", "TIME (UTC)", "VM", "ACTION", "KEPT BY"], rows)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} of {len(decisions)} recovery point(s); run 'vmkeep gc' to reclaim space")
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    from vmkeep.repository.gc import collect_garbage

    with open_repository(args) as repo:
        report = collect_garbage(repo, dry_run=args.dry_run)
    if args.json:
        print_json({**vars(report), "bytes_freed": report.bytes_freed})
        return EXIT_OK
    verb = "would free" if report.dry_run else "freed"
    print(f"{report.points} recovery point(s) use {report.live_blobs} blobs")
    print(
        f"packs: {report.packs_before} before, {report.packs_deleted} deleted, "
        f"{report.packs_repacked} repacked into {report.packs_written}, {report.packs_after} after"
    )
    print(
        f"{verb} {human_size(report.bytes_freed)} ({human_size(report.bytes_before)} -> "
        f"{human_size(report.bytes_after)})"
    )
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from vmkeep.repository.verify import verify

    if args.against_source is not None:
        return verify_against_source(args)
    if args.point is not None or args.name is not None:
        raise ConfigError("--point and --name go with --against-source IMAGE")
    with open_repository(args) as repo:
        report = verify(repo, read_data=args.read_data)
    if args.json:
        print_json(vars(report) | {"ok": report.ok})
    else:
        what = "structure and data" if report.read_data else "structure"
        print(
            f"checked {what}: {report.points} point(s), {report.index_files} index file(s), "
            f"{report.packs} pack(s), {report.blobs} blob(s), {human_size(report.bytes_read)} read"
        )
        for warning in report.warnings:
            print(f"warning: {warning}")
        for error in report.errors:
            print(f"error: {error}")
        if report.damaged_points:
            print(f"damaged recovery points: {', '.join(sorted(p[:12] for p in report.damaged_points))}")
        print("no errors found" if report.ok else f"{len(report.errors)} error(s) found")
    return EXIT_OK if report.ok else EXIT_DAMAGED


def verify_against_source(args: argparse.Namespace) -> int:
    from vmkeep.hypervisors.image.session import ImageSession

    from ..engine.compare import compare_with_source
    from ..terminal import TerminalProgress

    if args.read_data:
        raise ConfigError("--against-source compares with the source; run --read-data separately")
    with (
        ImageSession(args.against_source, args.name) as session,
        open_repository(args) as repo,
        repo.lock("verify"),
    ):
        point = repo.find_point(args.point or f"latest:{session.vm_name}")
        result = compare_with_source(repo, point, session, max(1, args.workers), TerminalProgress(quiet=args.json))
    if args.json:
        print_json(
            {
                "point": point.id,
                "vm": point.vm,
                "source": str(args.against_source),
                "block_size": result.block_size,
                "identical": result.identical,
                "disks": [vars(d) | {"identical": d.identical} for d in result.disks],
                "source_only": result.source_only,
            }
        )
        return EXIT_OK if result.identical else EXIT_DAMAGED
    print(f"compared recovery point {point.short_id} of {point.vm} with {args.against_source}")
    for d in result.disks:
        if d.source_capacity is None:
            print(f"  disk {d.key}: not in the source")
        elif d.source_capacity != d.capacity:
            print(f"  disk {d.key}: {d.source_capacity} bytes in the source, {d.capacity} in the point")
        elif d.differing_blocks == 0:
            print(f"  disk {d.key}: identical ({d.blocks} blocks, {human_size(d.bytes_read)} compared)")
        else:
            offsets = ", ".join(str(o) for o in d.first_differences)
            more = " ..." if d.differing_blocks > len(d.first_differences) else ""
            print(
                f"  disk {d.key}: {d.differing_blocks} of {d.blocks} blocks of {human_size(result.block_size)} "
                f"differ, at byte offsets {offsets}{more}"
            )
    for key in result.source_only:
        print(f"  disk {key}: in the source, not in the point")
    if result.identical:
        print("the point holds exactly what the source holds")
        return EXIT_OK
    print("differences found: restoring this point would not give back the source as it is now")
    return EXIT_DAMAGED
