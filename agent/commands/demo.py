"""The demo command: the main job on an embedded default, with proof at each step."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..output import parse_size, print_json
from .common import EXIT_FAILURE, EXIT_OK, json_option


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on an embedded default and check the result",
        description="Back up a sample disk image in full, change 1%% of it, back it up incrementally with "
        "change hints, restore both recovery points and compare them byte for byte with the image as it was.",
    )
    p.add_argument("--dir", type=Path, metavar="DIR", help="work directory (default: a new temporary one)")
    p.add_argument("--size", default="256M", metavar="SIZE", help="size of the sample disk (default: 256M)")
    json_option(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_image_demo

    result = run_image_demo(args.dir, parse_size(args.size), say=(lambda s: None) if args.json else print)
    if args.json:
        print_json(result.to_json())
    else:
        print(("demo passed" if result.ok else "demo FAILED") + f"; files are in {result.workdir}")
    return EXIT_OK if result.ok else EXIT_FAILURE
