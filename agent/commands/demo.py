"""The demo command: the main job on an embedded default, with proof at each step."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..exceptions import ConfigError
from ..output import parse_size, print_json
from .common import EXIT_FAILURE, EXIT_OK, json_option


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on an embedded default and check the result",
        description="Start the vcsim/ simulator (built on first use) on 127.0.0.1, write data into a simulated "
        "VM's disk, back it up in full, change 1%% of it, back it up incrementally through changed block tracking, "
        "restore the VM to the simulated host as a new VM and both points to files, compare every restore "
        "byte for byte with the disk as its snapshot froze it, and finally run 'vmkeep agent' with a job file of two "
        "jobs a few seconds apart until both ran. With --image, do the same with a disk image "
        "and change hints, without the simulator.",
    )
    p.add_argument("--image", action="store_true", help="back up a sample disk image instead of a simulated VM")
    p.add_argument("--dir", type=Path, metavar="DIR", help="work directory (default: a new temporary one)")
    p.add_argument("--size", default="256M", metavar="SIZE", help="size of the sample disk, in MiB (default: 256M)")
    json_option(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_image_demo, run_vsphere_demo

    size = parse_size(args.size)
    if size < 1024 * 1024 or size % (1024 * 1024):
        raise ConfigError("--size must be a whole number of MiB")
    run = run_image_demo if args.image else run_vsphere_demo
    result = run(args.dir, size, say=(lambda s: None) if args.json else print)
    if args.json:
        print_json(result.to_json())
    else:
        print(("demo passed" if result.ok else "demo FAILED") + f"; files are in {result.workdir}")
    return EXIT_OK if result.ok else EXIT_FAILURE
