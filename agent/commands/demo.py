"""The demo command: the main job on an embedded default, with proof at each step."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from ..exceptions import ConfigError
from ..output import parse_size, print_json
from .common import EXIT_FAILURE, EXIT_OK, json_option


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on an embedded default and check the result",
        description="Start the vcsim/ simulator (built on first use) on 127.0.0.1, write data into a simulated "
        "VM's disk, back it up in full, change 1% of it, back it up incrementally through changed block tracking, "
        "restore the VM to the simulated host as a new VM and both points to files, compare every restore "
        "byte for byte with the disk as its snapshot froze it, and finally run 'vmkeep agent' with a job file of two "
        "jobs a few seconds apart until both ran. With --image, do the same with a disk image "
        "and change hints, without the simulator.",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--image", action="store_true", help="back up a sample disk image instead of a simulated VM")
    kind.add_argument(
        "--hyperv",
        action="store_true",
        help="the same on the simulated Hyper-V host: WinRM (NTLM, encrypted), RCT, the VHDX read over SMB "
        "(Samba, when run as root), restore to files and to the host",
    )
    p.add_argument(
        "--dir", type=Path, metavar="DIR", help="work directory, kept (default: a temporary one, removed at the end)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory (repository, restores)")
    p.add_argument(
        "--size",
        default="256",
        metavar="SIZE",
        help="size of the sample disk: MiB, or with a unit (256, 1G; default 256)",
    )
    json_option(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_image_demo, run_vsphere_demo

    size = parse_size(args.size + "M" if args.size.strip().isdigit() else args.size)
    if size < 1024 * 1024 or size % (1024 * 1024):
        raise ConfigError("--size must be a whole number of MiB")
    run = run_image_demo if args.image else run_vsphere_demo
    if args.hyperv:
        from ..demo_hyperv import run_hyperv_demo

        run = run_hyperv_demo
    workdir = args.dir if args.dir is not None else Path(tempfile.mkdtemp(prefix="vmkeep-demo-"))
    remove = args.dir is None and not args.keep
    try:
        result = run(workdir, size, say=(lambda s: None) if args.json else print)
    except BaseException:
        if remove:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    remove = remove and result.ok  # a failed demo keeps its files, to look at
    if remove:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print_json({**result.to_json(), "kept": not remove})
    else:
        verdict = "demo passed" if result.ok else "demo FAILED"
        print(
            f"{verdict}; "
            + ("its temporary files were removed (--keep keeps them)" if remove else f"files are in {workdir}")
        )
    return EXIT_OK if result.ok else EXIT_FAILURE
