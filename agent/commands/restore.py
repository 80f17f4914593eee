"""The restore command: a recovery point to image files (and, per platform, to a host)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vmkeep.hypervisors.platforms import PlatformKind, RestoreTarget, platform_class

from ..exceptions import ConfigError
from ..output import human_size, print_json
from . import hyperv
from .common import EXIT_OK, json_option, no_lock_option, open_repository, parse_network_map, repo_options
from .vsphere import check_made_by, endpoint_from, host_options, tls_options

if TYPE_CHECKING:
    from vmkeep.repository.points import RecoveryPoint

# The options that name the host to restore to, one per platform (as HOST_OPTIONS of backup).
RESTORE_HOST_OPTIONS: list[tuple[str, PlatformKind, str, str]] = [
    ("--to-host", PlatformKind.VSPHERE, "URL", "vCenter or ESXi address or URL"),
    hyperv.RESTORE_HOST_OPTION,
]


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "restore",
        help="restore a recovery point",
        description="Restore a recovery point. With --to-dir, write one sparse raw image per disk "
        "(named VM-KEY.img); existing files are never overwritten. POINT is an id, a unique prefix of one, "
        "'latest:VM' (the newest point of VM), or 'latest' when all points are of one VM.",
    )
    p.add_argument("point", metavar="POINT", help="recovery point id or unique prefix, 'latest:VM' or 'latest'")
    repo_options(p)
    p.add_argument("--to-dir", type=Path, metavar="DIR", help="write raw disk images into DIR")
    host = p.add_argument_group(
        "restore to vCenter/ESXi as a new VM (vSphere points)",
        "The VM is created with the recorded CPU, memory, firmware, controllers, disks and NICs (new MAC "
        "addresses), each disk is uploaded and read back to check it; an existing VM is never overwritten, "
        "and a failed restore removes the half-created VM.",
    )
    host_options(host, RESTORE_HOST_OPTIONS, required=False)
    host.add_argument("--user", "-u", help="vSphere user")
    host.add_argument("--password-file", type=Path, metavar="FILE", help="vSphere password file ($VMKEEP_PASSWORD)")
    tls_options(host)
    host.add_argument("--datastore", metavar="DS", help="datastore for the new VM's files")
    host.add_argument("--name", metavar="NAME", help="name of the new VM (default: the recorded name + '-restored')")
    host.add_argument("--folder", metavar="PATH", help="VM folder below the datacenter's, e.g. restored/2026")
    host.add_argument("--esx-host", metavar="NAME", help="host to register the VM on (default: one seeing DS)")
    host.add_argument(
        "--network",
        action="append",
        default=[],
        metavar="OLD=NEW",
        help="connect NICs recorded on network OLD to network NEW (repeatable)",
    )
    host.add_argument("--power-on", action="store_true", help="power the VM on after the restore")
    host.add_argument("--no-verify", action="store_true", help="skip reading the uploaded disks back")
    hyperv.smb_options(host)
    hyperv.restore_options(host)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, metavar="N", help="reader threads")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    no_lock_option(p)
    json_option(p)
    p.set_defaults(func=cmd_restore)


def cmd_restore(args: argparse.Namespace) -> int:
    if (args.to_dir is None) == (args.server is None):
        raise ConfigError("say where to restore: --to-dir DIR, or --to-host URL with --datastore DS")
    if args.server is not None:
        return restore_to_host(args)
    # Imported now, not when the options were parsed: the passphrase's key is being derived meanwhile.
    from ..engine.restore import restore_point_to_dir
    from ..terminal import TerminalProgress

    with open_repository(args) as repo, repo.read_lock("restore"):
        point = repo.find_point(args.point)
        progress = TerminalProgress(quiet=args.quiet)
        disks = restore_point_to_dir(repo, point, args.to_dir, max(1, args.workers), progress)
    if args.json:
        print_json({"point": point.id, "vm": point.vm, "disks": [vars(d) for d in disks]})
    else:
        names = {d.key: d.name for d in point.disks}
        for d in disks:
            print(f"restored {point.vm} {names[d.key]} ({human_size(d.size)}) to {d.path}")
    return EXIT_OK


def _vsphere_target(args: argparse.Namespace, point: RecoveryPoint) -> RestoreTarget:
    from vmkeep.hypervisors.vsphere.restore import VsphereRestoreTarget

    network_map = parse_network_map(args.network)
    return VsphereRestoreTarget(
        name=args.name or f"{point.vm}-restored",
        datastore=args.datastore,
        folder=args.folder,
        esx_host=args.esx_host,
        network_map=network_map,
        power_on=args.power_on,
        verify=not args.no_verify,
    )


# Per platform that restores to a host: the options it needs, and its target from the options.
# A platform adds its row here; a point of a platform without one is refused with one line.
HOST_TARGETS: dict[
    PlatformKind, tuple[tuple[str, ...], Callable[[argparse.Namespace, RecoveryPoint], RestoreTarget]]
] = {
    PlatformKind.VSPHERE: (("--user", "--datastore"), _vsphere_target),
    PlatformKind.HYPERV: (("--user",), hyperv.restore_target),
}


def restore_to_host(args: argparse.Namespace) -> int:
    """Restore to the host the host option names; a point of another platform is refused."""
    kind: PlatformKind = args.platform
    needed, make_target = HOST_TARGETS[kind]
    missing = [option for option in needed if not getattr(args, option.lstrip("-").replace("-", "_"))]
    if missing:
        raise ConfigError(f"{args.host_option} needs {' and '.join(missing)}")
    from ..engine.restore import disk_images
    from ..terminal import TerminalProgress

    workers = max(1, args.workers)
    endpoint = endpoint_from(args, kind)  # a refused URL or TLS option fails before the repository is opened
    with open_repository(args) as repo, repo.read_lock("restore"):
        point = repo.find_point(args.point)
        check_made_by(point, kind, f"{args.host_option} cannot restore it; restore it with --to-dir")
        if not point.hardware:
            raise ConfigError(
                f"point {point.short_id} records no hardware to create a VM with; restore it with --to-dir"
            )
        target = make_target(args, point)
        images = disk_images(repo, point, workers)
        progress = TerminalProgress(quiet=args.quiet)
        progress.disk_started(point.vm, "all disks", sum(d.capacity for d in point.disks), "upload", None)
        with platform_class(kind).connect(endpoint) as platform:
            restored = platform.restore_to_host(point.hardware, images, target, progress=progress.advance)
        progress.disk_finished("all disks")
    if args.json:
        print_json({"point": point.id, **restored.to_json()})
    else:
        print(f"restored {point.vm} ({point.short_id}) to {args.server} as VM {restored.name} ({restored.id})")
        names = {d.key: d.name for d in point.disks}
        for d in restored.disks:
            print(
                f"  {names.get(d['key'], 'disk ' + d['key'])}: {human_size(d['size'])} uploaded to {d['file']}"
                + (", verified" if target.verify else "")
            )
    return EXIT_OK
