"""Repository commands: init, points, info, forget, gc, unlock, repair (verify has its own module).

gc, retention and stats are imported by the commands that use them: start-up time is
most of a small incremental backup's run time, so modules a backup does not need wait.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from vmkeep.repository.config import DEFAULT_BLOCK_SIZE, DEFAULT_COMPRESSION_LEVEL, DEFAULT_PACK_SIZE, RepoConfig
from vmkeep.repository.points import RecoveryPoint, format_time

from .. import secrets
from ..exceptions import ConfigError
from ..output import human_size, parse_size, print_json, print_table
from ..terminal import byte_progress, count_progress
from .common import EXIT_DAMAGED, EXIT_OK, json_option, no_lock_option, open_repository, repo_options, repo_path

if TYPE_CHECKING:
    from vmkeep.repository.gc import MaxUnused
    from vmkeep.repository.repo import Repository


# The storage modules (codec, packs, index, repo) are imported by the commands that run, not when
# the options are parsed: the passphrase's key is derived meanwhile (cli.main, start_unlocking).


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
        "info",
        help="the repository at a glance: size, deduplication, compression, points per VM",
        description="Show the repository's size on disk, its distinct data before and after compression, "
        "the deduplication ratio (non-zero data the points reference over the distinct data stored) and the "
        "compression ratio, and per VM the number of points and the oldest and newest. Reads the index and "
        "the points' trees, no data block.",
    )
    repo_options(p)
    no_lock_option(p)
    json_option(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "forget",
        help="delete recovery points: chosen ones, or those a retention policy does not keep",
        description="Delete the recovery points given (ids, unique id prefixes, latest or latest:VM), or the "
        "points the --keep-* policy does not keep. A policy judges each VM's chain on its own (VM name, kind "
        "of source, and the vSphere instance uuid or image path), and keeps at least the newest point of every "
        "chain. Calendar periods are counted in this machine's time zone. A damaged point file can be "
        "forgotten by its id. Space is reclaimed by gc. Works on a full file system (see docs/FORMAT.md).",
    )
    repo_options(p)
    p.add_argument("points", nargs="*", metavar="POINT", help="a point to forget: id, unique prefix, latest:VM")
    p.add_argument("--keep-last", type=int, default=0, metavar="N", help="keep the N newest points of each chain")
    for name, period in (
        ("hourly", "hour"),
        ("daily", "day"),
        ("weekly", "ISO week"),
        ("monthly", "month"),
        ("yearly", "year"),
    ):
        p.add_argument(
            f"--keep-{name}",
            type=int,
            default=0,
            metavar="N",
            help=f"keep the newest point of each of the last N {period}s that have one",
        )
    p.add_argument("--vm", metavar="NAME", help="apply the policy to points of this VM only")
    p.add_argument("--dry-run", "-n", action="store_true", help="show what would be deleted, delete nothing")
    json_option(p)
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser(
        "gc",
        help="reclaim space no recovery point uses",
        description="Delete blocks that no recovery point references, repacking packs that hold garbage, and say "
        "what unused space stays and why. --dry-run prints the same plan the real run carries out. Takes an "
        "exclusive lock: it waits for no one and refuses to run while a backup holds the repository. On a full "
        "file system it deletes first and skips repacking if it cannot write.",
    )
    repo_options(p)
    p.add_argument("--dry-run", "-n", action="store_true", help="report what would be done, change nothing")
    p.add_argument(
        "--max-unused",
        metavar="LIMIT",
        help="unused space that may remain: a share of the repository (10%%), a size (100M), 0 to repack every "
        "pack holding garbage, or 'unlimited' (default: repack each pack of which more than 20%% is unused)",
    )
    json_option(p)
    p.set_defaults(func=cmd_gc)

    p = sub.add_parser(
        "unlock",
        help="remove stale locks",
        description="Remove locks whose holder is provably gone (a process of this machine, boot and PID "
        "namespace that no longer runs) or that were not refreshed for 30 minutes. With --remove-all, remove "
        "every lock: only when you know that no vmkeep process uses the repository.",
    )
    repo_options(p)
    p.add_argument("--remove-all", action="store_true", help="remove every lock, stale or not")
    json_option(p)
    p.set_defaults(func=cmd_unlock)

    p = sub.add_parser(
        "repair",
        help="rebuild the index from the packs and record what stays damaged",
        description="Read every pack, check every frame, and rebuild the index from the intact ones (this also "
        "recovers from a damaged index file). Damaged copies are dropped from the index; blocks that recovery "
        "points use but that no pack holds intact are recorded as missing, so the next backup of a VM that still "
        "has that content stores it again and heals every point using it. Takes the exclusive lock. Exits with "
        "status 3 if some points stay damaged, naming them.",
    )
    repo_options(p)
    json_option(p)
    p.set_defaults(func=cmd_repair)


def cmd_init(args: argparse.Namespace) -> int:
    from vmkeep.repository.repo import Repository

    path = repo_path(args)
    if args.passphrase_file is not None and not args.encrypt:
        raise ConfigError("--passphrase-file without --encrypt would create an unencrypted repository: add --encrypt")
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


def cmd_info(args: argparse.Namespace) -> int:
    from vmkeep.repository.summary import summarise

    with open_repository(args) as repo, repo.read_lock("info"):
        summary = summarise(repo, repo.points())
    if args.json:
        print_json({"repo": str(repo_path(args)), **summary.to_json()})
        return EXIT_OK
    files = summary.files
    print(
        f"repository {repo_path(args)} (id {summary.repo_id}, encryption {summary.encryption}, "
        f"block size {human_size(summary.block_size)})"
    )
    print(
        f"size on disk:  {human_size(summary.total_bytes)} in {files['data'].files} packs, "
        f"{files['index'].files} index files, {files['points'].files} points"
    )
    print(
        f"data:          {summary.data_blobs} distinct blocks, {human_size(summary.data_raw_bytes)} raw, "
        f"{human_size(summary.data_stored_bytes)} stored (compression {_ratio(summary.compression_ratio)})"
    )
    print(
        f"points:        reference {human_size(summary.referenced_bytes)} of non-zero data "
        f"(deduplication {_ratio(summary.dedup_ratio)}); restoring all would write "
        f"{human_size(summary.restore_bytes)}"
    )
    print(f"tree nodes:    {summary.tree_blobs}, {human_size(summary.tree_stored_bytes)}")
    if summary.chains:
        print()
        rows = [
            [
                c.vm,
                c.source_type,
                str(c.points),
                format_time(c.oldest)[:19].replace("T", " "),
                format_time(c.newest)[:19].replace("T", " "),
                c.newest_id[:12],
            ]
            for c in summary.chains
        ]
        print_table(["VM", "SOURCE", "POINTS", "OLDEST (UTC)", "NEWEST (UTC)", "NEWEST ID"], rows, right={2})
    return EXIT_OK


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def cmd_points(args: argparse.Namespace) -> int:
    from vmkeep.repository.stats import unique_sizes

    with open_repository(args) as repo, repo.read_lock("points"):
        points = repo.points(args.vm)
        if args.sizes:
            every = repo.points()
            with count_progress("points --sizes", len(every), "points", quiet=args.json) as on_point:
                sizes = unique_sizes(repo, every, on_point)
        else:
            sizes = {}
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
    noted = [p for p in points if p.warnings]
    if noted:
        print()
        for p in noted:
            for warning in p.warnings:
                print(f"{p.short_id} {p.vm}: warning: {warning}")
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    from vmkeep.repository.reserve import ensure_reserve, lock_making_room
    from vmkeep.repository.retention import ChainDecisions, RetentionPolicy, apply_policy, choose_points

    keep = {name: getattr(args, f"keep_{name}") for name in ("last", "hourly", "daily", "weekly", "monthly", "yearly")}
    policy = RetentionPolicy(**keep)
    if args.points and (not policy.empty() or args.vm):
        raise ConfigError("give either recovery points to forget or --keep-*/--vm rules, not both")
    if not args.points and policy.empty():
        raise ConfigError("no POINT and no --keep-* option given: refusing to forget every recovery point")
    if min(keep.values()) < 0:
        raise ConfigError("--keep-* values cannot be negative")
    with open_repository(args) as repo:
        lock, _released = lock_making_room(repo, "forget")
        with lock:
            scan = repo.scan_points()
            readable, damaged = scan.points, scan.damaged
            forget_damaged: list[str] = []
            chains: list[ChainDecisions]
            if args.points:
                chosen = [_point_id(repo, ref) for ref in args.points]
                forget_damaged = sorted({pid for pid in chosen if pid in damaged})
                chains = choose_points(readable, set(chosen))
            else:
                chains = apply_policy([p for p in readable if args.vm is None or p.vm == args.vm], policy)
            if not args.dry_run:
                for chain in chains:
                    for d in chain.removed:
                        repo.delete_point(d.point.id)
                for pid in forget_damaged:
                    repo.delete_point(pid)
            ensure_reserve(repo.backend)
    decisions = [d for chain in chains for d in chain.decisions]
    removed = [d for d in decisions if not d.keep]
    warnings = [
        f"{chain.chain.describe()}: every one of its {len(chain.decisions)} point(s) "
        f"{'would be' if args.dry_run else 'is'} forgotten; its next backup reads everything"
        for chain in chains
        if chain.keeps_none
    ]
    if not args.points:
        warnings += [
            f"point {pid[:12]} is damaged ({reason}): no policy can judge it; 'vmkeep forget {pid[:12]}' deletes it"
            for pid, reason in sorted(damaged.items())
        ]
    if args.json:
        print_json(
            {
                "dry_run": args.dry_run,
                "keep": [_point_doc(d.point) | {"reasons": d.reasons} for d in decisions if d.keep],
                "remove": [_point_doc(d.point) for d in removed],
                "remove_damaged": [{"id": pid, "error": damaged[pid]} for pid in forget_damaged],
                "chains": [
                    chain.chain.to_json()
                    | {"kept": len(chain.kept), "removed": len(chain.removed), "keeps_none": chain.keeps_none}
                    for chain in chains
                ],
                "warnings": list(warnings),
            }
        )
        return EXIT_OK
    verb = "would remove" if args.dry_run else "removed"
    rows = [
        [
            d.point.short_id,
            format_time(d.point.time)[:19].replace("T", " "),
            d.point.vm,
            "keep" if d.keep else verb,
            ", ".join(d.reasons),
        ]
        for d in decisions
        if not args.points or not d.keep
    ]
    rows += [[pid[:12], "?", "?", f"{verb} (damaged: {damaged[pid]})", ""] for pid in forget_damaged]
    if rows:
        print_table(["ID", "TIME (UTC)", "VM", "ACTION", "KEPT BY"], rows)
    for warning in warnings:
        print(f"warning: {warning}")
    total = len(removed) + len(forget_damaged)
    considered = len(decisions) + len(forget_damaged)
    print(f"{verb} {total} of {considered} recovery point(s); run 'vmkeep gc' to reclaim space")
    return EXIT_OK


def _point_id(repo: Repository, ref: str) -> str:
    """A point's id from an id, a unique prefix (the file need not be readable), or latest[:VM]."""
    if ref == "latest" or ref.startswith("latest:"):
        return repo.find_point(ref).id
    return repo.point_id(ref)


def _point_doc(point: RecoveryPoint) -> dict[str, Any]:
    return {"id": point.id, "vm": point.vm, "time": format_time(point.time), "chain": point.chain_key.to_json()}


def parse_max_unused(text: str) -> MaxUnused:
    """``10%``, ``100M``, ``0`` or ``unlimited``, as restic's ``prune --max-unused``."""
    from vmkeep.repository.gc import MaxUnused

    value = text.strip().lower()
    if value == "unlimited":
        return MaxUnused(text, percent=100.0)
    if value.endswith("%"):
        try:
            percent = float(value[:-1])
        except ValueError:
            raise ConfigError(f"--max-unused: not a percentage: {text!r}") from None
        if not 0 <= percent <= 100:
            raise ConfigError(f"--max-unused: a percentage from 0% to 100%, not {text!r}")
        return MaxUnused(text, percent=percent)
    return MaxUnused(text, limit_bytes=parse_size(value))


def cmd_gc(args: argparse.Namespace) -> int:
    from vmkeep.repository.gc import MaxUnused, collect_garbage

    max_unused = parse_max_unused(args.max_unused) if args.max_unused is not None else MaxUnused()
    with open_repository(args) as repo, byte_progress("gc: repacking", 0, quiet=args.json or args.dry_run) as bar:

        def on_repack(nbytes: int, total: int) -> None:
            bar.set_total(total)
            bar(nbytes)

        report = collect_garbage(repo, dry_run=args.dry_run, max_unused=max_unused, on_repack=on_repack)
    if args.json:
        print_json(report.to_json())
        return EXIT_OK
    done = report.done
    print(f"{done.points} recovery point(s) use {done.live_blobs} blobs ({human_size(done.live_bytes)} stored)")
    would = "would be " if report.dry_run else ""
    print(
        f"packs: {done.packs_before} before, {len(done.delete)} {would}deleted, {len(done.repack)} {would}repacked "
        f"into {report.packs_written} new, {report.packs_after} after"
    )
    if report.repack_skipped:
        print(
            f"repacking skipped: no room on the file system to write the {len(report.plan.new_packs)} new pack(s) "
            f"the plan needed"
        )
    if done.unreclaimed_bytes:
        print(
            f"{human_size(done.unreclaimed_bytes)} of unused data {'would stay' if report.dry_run else 'stays'} "
            f"in {done.unreclaimed_packs} pack(s){done.unreclaimed_reason.explain(done.max_unused)}"
        )
    else:
        print("no unused data " + ("would stay" if report.dry_run else "stays") + " in any pack")
    verb = "would free" if report.dry_run else "freed"
    print(
        f"{verb} {human_size(report.bytes_freed)} ({human_size(done.bytes_before)} -> {human_size(report.bytes_after)})"
    )
    if report.reserve_released and not report.reserve_restored and not report.dry_run:
        print("warning: no room to write the space reserve again; free some space on the file system")
    return EXIT_OK


def cmd_unlock(args: argparse.Namespace) -> int:
    from vmkeep.repository.locks import remove_locks

    with open_repository(args) as repo:
        removed = remove_locks(repo.backend, everything=args.remove_all)
    if args.json:
        print_json([{"lock": found.name, "holder": found.describe(), "why": why} for found, why in removed])
        return EXIT_OK
    for found, why in removed:
        print(f"removed {found.name}: {found.describe()} ({why})")
    print(f"removed {len(removed)} lock(s)")
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    from vmkeep.repository.packs import PACK_DIR
    from vmkeep.repository.repair import repair

    with open_repository(args) as repo:
        total = sum(f.size for f in repo.backend.list(PACK_DIR))
        with byte_progress("repair: reading packs", total, quiet=args.json) as on_pack:
            report = repair(repo, on_pack)
    if args.json:
        print_json(vars(report) | {"complete": report.complete})
        return EXIT_OK if report.complete else EXIT_DAMAGED
    for problem in report.problems:
        print(f"damaged: {problem}")
    print(
        f"scanned {report.packs} pack(s), {human_size(report.bytes_read)}: {report.frames_indexed} intact frame(s) "
        f"indexed, {report.frames_damaged} damaged; index files {report.index_files_before} -> "
        f"{report.index_files_after}"
    )
    if report.complete:
        print("every recovery point is whole")
        return EXIT_OK
    for pid, problems in sorted(report.damaged_points.items()):
        print(
            f"recovery point {pid[:12]} stays damaged: {problems[0]}"
            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    print(
        f"{len(report.damaged_points)} recovery point(s) stay damaged ({report.missing_blobs} block(s) missing); "
        "a backup of a VM that still has that content stores them again and heals them"
    )
    return EXIT_DAMAGED
