"""``vmkeep verify``: check the repository, or compare a recovery point with its source.

A command of its own module, apart from init, points and the other repository commands: its
comparison with a VM needs the host options (and the hypervisor platforms they name), which
those commands have no use for and would otherwise load at every start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import ConfigError
from ..output import human_size, print_json
from ..terminal import byte_progress
from . import hyperv
from .common import EXIT_DAMAGED, EXIT_OK, json_option, no_lock_option, open_repository, repo_options
from .vsphere import check_made_by, endpoint_from, host_options, tls_options

if TYPE_CHECKING:
    from vmkeep.hypervisors.platforms import PlatformKind

    from ..engine.compare import Comparison


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help="check the repository, or a recovery point against its source",
        description="Check the repository's structure; with --read-data also re-read and re-check every block. "
        "With --against-source IMAGE or --against-vm NAME, instead compare a recovery point with its source, "
        "block by block: the only proof that a change list missed nothing (the CBT sanity check samples; it "
        "cannot prove that). Exits with status 3 when it finds damage or a difference.",
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
    vm = p.add_argument_group(
        "compare with a VM",
        "The VM's disks are read from a snapshot (vSphere) or checkpoint (Hyper-V) taken for the comparison and "
        "removed after it. The VM must hold the state the point was taken from (powered off since, or not "
        "written to): what its guest wrote after the backup shows as a difference.",
    )
    vm.add_argument("--against-vm", metavar="NAME", help="compare a point (default: latest:NAME) with this VM")
    host_options(vm, required=False)
    vm.add_argument("--user", "-u", help="the host's user")
    vm.add_argument("--password-file", type=Path, metavar="FILE", help="the host's password file ($VMKEEP_PASSWORD)")
    tls_options(vm)
    hyperv.smb_options(vm)
    no_lock_option(p)
    json_option(p)
    p.set_defaults(func=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from vmkeep.repository.packs import PACK_DIR
    from vmkeep.repository.verify import verify

    if args.against_source is not None and args.against_vm is not None:
        raise ConfigError("compare with one source: --against-source IMAGE or --against-vm NAME")
    if args.server is not None and args.against_vm is None:
        raise ConfigError(f"{args.host_option} goes with --against-vm NAME")
    if args.against_source is not None:
        return verify_against_source(args)
    if args.against_vm is not None:
        return verify_against_vm(args)
    if args.point is not None or args.name is not None:
        raise ConfigError("--point and --name go with --against-source IMAGE")
    with open_repository(args) as repo:
        total = sum(f.size for f in repo.backend.list(PACK_DIR)) if args.read_data else 0
        with byte_progress("verify --read-data", total, quiet=args.json or not args.read_data) as on_pack:
            report = verify(repo, read_data=args.read_data, on_pack=on_pack, lock=not args.no_lock)
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
        if report.damage_record:
            print(
                f"recorded the damage in {report.damage_record}: backups no longer deduplicate against it, and "
                "the next backup that sees the same content stores it again; 'vmkeep repair' rebuilds the index"
            )
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
        repo.read_lock("verify"),
    ):
        point = repo.find_point(args.point or f"latest:{session.vm_name}")
        result = compare_with_source(repo, point, session, max(1, args.workers), TerminalProgress(quiet=args.json))
    return report_comparison(args, result, str(args.against_source))


def verify_against_vm(args: argparse.Namespace) -> int:
    """Compare a point with a VM's disks, read from a snapshot (checkpoint) taken for it and removed after."""
    from vmkeep.hypervisors.platforms import SessionOptions, login_and_open

    from ..engine.compare import compare_with_source
    from ..terminal import TerminalProgress

    kind: PlatformKind | None = args.platform
    if kind is None:
        raise ConfigError("--against-vm needs the VM's host: --vcenter URL or --hyperv HOST, with --user")
    if not args.user:
        raise ConfigError(f"{args.host_option} needs --user")
    if args.read_data or args.name is not None:
        raise ConfigError("--against-vm compares with the VM; --read-data and --name go without it")
    endpoint = endpoint_from(args, kind)  # a refused URL or TLS option fails before the repository is opened
    with open_repository(args) as repo, repo.read_lock("verify"):
        point = repo.find_point(args.point or f"latest:{args.against_vm}")
        check_made_by(point, kind, f"{args.host_option} cannot be its source")
        options = SessionOptions(quiesce=False)  # the disks as they are: nothing to make consistent
        with login_and_open(kind, endpoint, args.against_vm, options) as session:
            progress = TerminalProgress(quiet=args.json)
            result = compare_with_source(repo, point, session, max(1, args.workers), progress)
        warnings = (*session.warnings, *session.close_warnings)  # e.g. a snapshot it could not remove
    for warning in warnings:
        print(f"vmkeep: warning: {args.against_vm}: {warning}", file=sys.stderr)
    return report_comparison(args, result, f"VM {args.against_vm} on {args.server}", warnings)


def report_comparison(args: argparse.Namespace, result: Comparison, source: str, warnings: tuple[str, ...] = ()) -> int:
    """Print a comparison (text or --json); the exit status: 0 identical, 3 differences."""
    point = result.point
    if args.json:
        print_json(
            {
                "point": point.id,
                "vm": point.vm,
                "source": source,
                "block_size": result.block_size,
                "identical": result.identical,
                "disks": [vars(d) | {"identical": d.identical} for d in result.disks],
                "source_only": result.source_only,
                "warnings": list(warnings),
            }
        )
        return EXIT_OK if result.identical else EXIT_DAMAGED
    print(f"compared recovery point {point.short_id} of {point.vm} with {source}")
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
