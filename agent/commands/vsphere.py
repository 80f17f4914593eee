"""Host commands: backup (of one or more VMs), vms (the inventory) and store-password.

The host option names the platform (``--vcenter URL`` for vSphere); the platform is then
chosen through the registry (hypervisors/platforms.py), which imports its module only now:
pyVmomi and requests take a fifth of a second to import, and an image backup needs neither.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmkeep.hypervisors.exceptions import NeedsAttention, SourceError
from vmkeep.hypervisors.platforms import Endpoint, Platform, PlatformKind, platform_class, platform_kind, platform_vm

from .. import secrets
from ..engine.limits import CONCURRENCY, SNAPSHOTS_PER_DATASTORE, SNAPSHOTS_PER_HOST
from ..exceptions import ConfigError
from ..output import human_size, print_json, print_table
from . import hyperv
from .backup import backup_options, positive
from .common import EXIT_FAILURE, EXIT_OK, json_option, open_repository, repo_options

if TYPE_CHECKING:
    from vmkeep.repository.points import RecoveryPoint
    from vmkeep.repository.repo import Repository

    from ..engine.jobs import VmResult

log = logging.getLogger(__name__)

# The options that name a host, one per platform; they exclude each other. A platform adds its row
# here (e.g. ("--hyperv", PlatformKind.HYPERV, "HOST", "Hyper-V host name or URL")).
HOST_OPTIONS: list[tuple[str, PlatformKind, str, str]] = [
    ("--vcenter", PlatformKind.VSPHERE, "URL", "vCenter or ESXi address or URL"),
    hyperv.HOST_OPTION,
]


class _HostOption(argparse.Action):
    """Keeps the host's address in ``server`` and its platform in ``platform``."""

    def __init__(self, *args: Any, platform: PlatformKind, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.platform = platform

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        namespace.platform = self.platform
        namespace.host_option = option_string


def host_options(
    p: argparse.ArgumentParser | argparse._ArgumentGroup,
    options: list[tuple[str, PlatformKind, str, str]] = HOST_OPTIONS,
    required: bool = True,
) -> None:
    """One of ``options`` (flag, platform, metavar, help): sets ``server``, ``platform`` and ``host_option``."""
    p.set_defaults(platform=None, host_option=None)
    hosts = p.add_mutually_exclusive_group(required=required)
    for flag, kind, metavar, text in options:
        hosts.add_argument(flag, dest="server", metavar=metavar, help=text, action=_HostOption, platform=kind)


def connection_options(p: argparse.ArgumentParser) -> None:
    host_options(p)
    p.add_argument("--user", "-u", required=True, help="the host's user, e.g. backup@vsphere.local")
    p.add_argument(
        "--password-file",
        type=Path,
        metavar="FILE",
        help="read the host's password from FILE (default: $VMKEEP_PASSWORD, else a prompt)",
    )
    tls_options(p)
    hyperv.smb_options(p)


def tls_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--ca-file", type=Path, metavar="FILE", help="trust only the CA certificates in FILE (PEM)")
    tls.add_argument(
        "--thumbprint",
        metavar="HEX",
        help="trust exactly the certificate with this SHA-256 (or SHA-1) thumbprint, and no other",
    )
    tls.add_argument("--insecure", action="store_true", help="do NOT verify the server's certificate (dangerous)")
    p.add_argument(
        "--allow-cleartext",
        action="store_true",
        help="accept an http:// URL: the password and the disks then cross the network unencrypted (simulators)",
    )


def endpoint_from(args: argparse.Namespace, kind: PlatformKind) -> Endpoint:
    """The host of the options, for ``kind``; bad TLS or URL choices fail before a password is asked for."""
    from vmkeep.hypervisors.tls import TlsPolicy, normalise_thumbprint

    if args.thumbprint:
        try:
            normalise_thumbprint(args.thumbprint)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    tls = TlsPolicy(
        ca_file=args.ca_file, thumbprint=args.thumbprint, insecure=args.insecure, allow_cleartext=args.allow_cleartext
    )
    try:
        platform_class(kind).check_address(args.server, tls)
    except SourceError as exc:
        raise ConfigError(str(exc)) from None
    endpoint = Endpoint(args.server, args.user, secrets.password(args.password_file, args.user, args.server), tls)
    if kind is PlatformKind.HYPERV:
        endpoint = hyperv.hyperv_endpoint(args, endpoint)
    return endpoint


def check_made_by(point: RecoveryPoint, kind: PlatformKind, why_not: str) -> None:
    """ConfigError unless ``point`` was made from a VM of ``kind``; ``why_not`` ends the message."""
    try:
        made_by: PlatformKind | None = platform_kind(point.source.get("type"))
    except SourceError:
        made_by = None
    if made_by != kind:
        what = platform_vm(made_by) if made_by is not None else f"a source of type {point.source.get('type')!r}"
        raise ConfigError(f"point {point.short_id} was made from {what}, not {platform_vm(kind)}: {why_not}")


def connect(args: argparse.Namespace) -> Platform:
    """The platform the host option names, logged in."""
    kind: PlatformKind = args.platform
    return platform_class(kind).connect(endpoint_from(args, kind))


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "backup",
        help="back up vSphere VMs (changed block tracking, no agent in the guest)",
        description="Back up VMs from vCenter or ESXi. Each VM gets a snapshot, its disks' changed blocks "
        "since the previous recovery point are read over the datastore HTTP endpoint, a recovery point is "
        "committed, and the snapshot is removed, also when the backup fails or is interrupted. Change "
        "tracking is enabled where it is off. A disk is read in full (and the point says why) when there is "
        "no earlier point, its change id is refused, it was resized or replaced, or --full is given. With --hyperv, "
        "a recovery checkpoint and Resilient Change Tracking take their place, and the frozen VHDX files are read "
        "over SMB (docs/HYPERV.md).",
    )
    connection_options(p)
    p.add_argument("--vm", action="append", required=True, metavar="NAME", help="VM to back up (repeatable)")
    repo_options(p)
    p.add_argument("--no-quiesce", action="store_true", help="take crash-consistent snapshots, never quiesced ones")
    p.add_argument(
        "--retries", type=int, default=0, metavar="N", help="try a VM that failed up to N more times (default: 0)"
    )
    p.add_argument(
        "--retry-delay", type=float, default=60.0, metavar="SECONDS", help="wait between tries (default: 60)"
    )
    p.add_argument(
        "--concurrency",
        type=positive,
        default=CONCURRENCY,
        metavar="N",
        help=f"back up up to N of the VMs at once, each with a login of its own (default: {CONCURRENCY})",
    )
    p.add_argument(
        "--snapshots-per-host",
        type=positive,
        default=SNAPSHOTS_PER_HOST,
        metavar="N",
        help=f"at most N of the VMs' snapshots at once on one host (default: {SNAPSHOTS_PER_HOST})",
    )
    p.add_argument(
        "--snapshots-per-datastore",
        type=positive,
        default=SNAPSHOTS_PER_DATASTORE,
        metavar="N",
        help=f"at most N of the VMs' snapshots at once on one datastore (default: {SNAPSHOTS_PER_DATASTORE})",
    )
    # Reads are HTTP round trips: more of them in flight than there are CPUs keeps the link busy.
    backup_options(p, workers=max(4, os.cpu_count() or 2))
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser(
        "store-password",
        help="keep a vCenter/ESXi or Hyper-V password in the OS keyring",
        description="Store the password for USER on SERVER in the OS keyring (read from a prompt, or from "
        "standard input when it is not a terminal), so that backups need neither a file nor an environment "
        "variable. With --delete, remove it. Needs the keyring package: pip install 'vmkeep[keyring]'.",
    )
    server = p.add_mutually_exclusive_group(required=True)
    server.add_argument("--vcenter", dest="server", metavar="URL", help="vCenter or ESXi address")
    server.add_argument("--hyperv", dest="server", metavar="HOST", help="Hyper-V host (as given to --hyperv)")
    p.add_argument("--user", "-u", required=True, help="the host's user")
    p.add_argument("--delete", action="store_true", help="remove the stored password")
    p.set_defaults(func=cmd_store_password)

    p = sub.add_parser(
        "vms",
        help="list the VMs of a vCenter, ESXi or Hyper-V host",
        description="List VMs with power state, change tracking state, snapshots and disks (one round trip).",
    )
    connection_options(p)
    json_option(p)
    p.set_defaults(func=cmd_vms)


def cmd_store_password(args: argparse.Namespace) -> int:
    import sys

    if args.delete:
        secrets.store_keyring_password(args.user, args.server, None)
        print(f"removed the password of {args.user}@{args.server} from the keyring")
        return EXIT_OK
    if sys.stdin.isatty():
        secret = secrets.prompt_secret(f"password for {args.user}@{args.server}: ")
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise ConfigError("an empty password was given")
    secrets.store_keyring_password(args.user, args.server, secret)
    print(f"stored the password of {args.user}@{args.server} in the keyring")
    return EXIT_OK


def cmd_vms(args: argparse.Namespace) -> int:
    with connect(args) as platform:
        vms = platform.list_vms()
    if args.json:
        print_json([v.to_json() for v in vms])
        return EXIT_OK
    rows = [
        [
            v.name + (" (template)" if v.template else ""),
            v.power_state,
            v.tracking,
            str(len(v.snapshots)),
            ", ".join(f"{d.label} {human_size(d.capacity)}" for d in v.disks),
        ]
        for v in vms
    ]
    tracking = "RCT" if args.platform == PlatformKind.HYPERV else "CBT"  # each platform's name for it
    print_table(["VM", "POWER", tracking, "SNAPSHOTS", "DISKS"], rows)
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    from .tasks import print_results, report

    if args.retries < 0 or args.retry_delay < 0:
        raise ConfigError("--retries and --retry-delay cannot be negative")
    vms = list(dict.fromkeys(args.vm))  # each VM once, in the order given
    kind: PlatformKind = args.platform
    endpoint = endpoint_from(args, kind)  # a refused URL or TLS option fails before the repository is opened
    with open_repository(args) as repo:
        results = _run_backups(args, repo, kind, endpoint, vms)
    points = [r.point for r in results if r.point is not None]
    failures = [{"vm": r.vm, "error": r.error} for r in results if r.error is not None]
    if args.json:
        print_results(results)
    else:
        if points:
            report(points)
        if len(vms) == 1 and failures:  # the point is committed, but e.g. its snapshot stayed behind
            raise NeedsAttention(failures[0]["error"])
        for failure in failures:
            print(f"{failure['vm']}: FAILED: {failure['error']}")
    return EXIT_FAILURE if failures else EXIT_OK


def _run_backups(
    args: argparse.Namespace, repo: Repository, kind: PlatformKind, endpoint: Endpoint, vms: list[str]
) -> list[VmResult]:
    """Back up ``vms``: one at a time on the command's login, or ``--concurrency`` at a time, each task
    logged in on its own and holding a snapshot slot of its host and datastores (as the agent's jobs do)."""
    from ..engine.jobs import BackupTask, RetryPolicy
    from ..engine.limits import SnapshotLimits
    from .tasks import CliResources, login_per_task, options_from, run_cli_tasks, session_opener

    options = options_from(args)
    retry = RetryPolicy(args.retries, args.retry_delay)
    with platform_class(kind).connect(endpoint) as platform:  # a wrong password or host fails here, once
        if len(vms) == 1 or args.concurrency == 1:
            tasks = [BackupTask("backup", vm, args.server, repo.location, options) for vm in vms]
            return run_cli_tasks(tasks, CliResources(repo, session_opener(platform), args.quiet), retry)
        placement = {v.name: v for v in platform.list_vms()}
    tasks = []
    for vm in vms:
        where = placement.get(vm)  # a VM not found fails in its own task, as it would alone
        host, datastores = (where.host, where.datastores) if where is not None else ("", ())
        tasks.append(BackupTask("backup", vm, args.server, repo.location, options, host, datastores))
    limits = SnapshotLimits(args.snapshots_per_host, args.snapshots_per_datastore)
    resources = CliResources(repo, login_per_task(kind, endpoint), args.quiet, limits)
    return run_cli_tasks(tasks, resources, retry, concurrency=args.concurrency)
