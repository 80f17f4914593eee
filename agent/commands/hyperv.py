"""Hyper-V's options on the host commands (``--hyperv HOST`` for vms and backup, ``--to-hyperv`` for restore).

The verbs are vSphere's (agent/commands/vsphere.py, restore.py); this module adds what only a
Hyper-V host needs: where its files are on SMB, and where a restored VM's disks go.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from vmkeep.hypervisors.platforms import Endpoint, PlatformKind

from ..exceptions import ConfigError
from .common import parse_network_map

if TYPE_CHECKING:
    from vmkeep.hypervisors.platforms import RestoreTarget
    from vmkeep.repository.points import RecoveryPoint

HOST_HELP = (
    "Hyper-V host name or WinRM URL. A name means http://HOST:5985/wsman, where NTLM seals every message "
    "(the password and the data are encrypted with NTLM's session key; no --allow-cleartext needed); "
    "https://HOST:5986/wsman adds TLS, verified as for vCenter (--ca-file, --thumbprint). Disks are read "
    "over SMB 3 with encryption required."
)
HOST_OPTION = ("--hyperv", PlatformKind.HYPERV, "HOST", HOST_HELP)
RESTORE_HOST_OPTION = ("--to-hyperv", PlatformKind.HYPERV, "HOST", "restore to this Hyper-V host (see --hyperv)")


def smb_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--smb-share",
        action="append",
        default=[],
        metavar="PREFIX=SHARE",
        help="Hyper-V: the SMB share holding host paths under PREFIX, e.g. 'C:\\ClusterStorage\\Volume1=vms' "
        "(repeatable; default: a path on drive X: is on the administrative share X$)",
    )
    p.add_argument("--smb-port", type=int, default=445, metavar="PORT", help="Hyper-V: the host's SMB port (445)")


def hyperv_endpoint(args: argparse.Namespace, endpoint: Endpoint) -> Endpoint:
    """The shared endpoint with Hyper-V's SMB settings (the hyperv extra is imported only here)."""
    from vmkeep.hypervisors.hyperv.platform import HypervEndpoint
    from vmkeep.hypervisors.hyperv.shares import ShareMap

    try:
        shares = ShareMap.parse(list(getattr(args, "smb_share", [])))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    port = int(getattr(args, "smb_port", 445))
    if not 0 < port < 65536:
        raise ConfigError(f"--smb-port {port} is not a TCP port")
    return HypervEndpoint(**asdict(endpoint) | {"tls": endpoint.tls}, smb_port=port, shares=shares)


def restore_options(host: argparse._ArgumentGroup) -> None:
    host.add_argument(
        "--hyperv-folder",
        metavar="PATH",
        help="Hyper-V: the host folder for the restored VHDX files (default: its virtual hard disk folder\\NAME)",
    )
    host.add_argument(
        "--staging-dir",
        type=Path,
        metavar="DIR",
        help="Hyper-V: local folder where each disk is made into a VHDX before upload (default: $TMPDIR)",
    )


def restore_target(args: argparse.Namespace, point: RecoveryPoint) -> RestoreTarget:
    from vmkeep.hypervisors.hyperv.platform import HypervRestoreTarget
    from vmkeep.hypervisors.hyperv.restore import HypervRestoreSpec

    network_map = parse_network_map(args.network)
    spec = HypervRestoreSpec(folder=args.hyperv_folder, network_map=network_map, staging=args.staging_dir)
    return HypervRestoreTarget(
        name=args.name or f"{point.vm}-restored", power_on=args.power_on, verify=not args.no_verify, spec=spec
    )
