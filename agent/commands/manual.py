"""The completion and man commands: shell completion and the manual page, generated from the parser."""

from __future__ import annotations

import argparse

from .common import EXIT_OK


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a bash completion script generated from vmkeep's options. Load it with "
        "'source <(vmkeep completion bash)', or install it: "
        "'vmkeep completion bash > /etc/bash_completion.d/vmkeep'.",
    )
    p.add_argument("shell", choices=["bash"], help="the shell (bash)")
    p.set_defaults(func=cmd_completion)

    p = sub.add_parser(
        "man",
        help="print the manual page (roff)",
        description="Print vmkeep's manual page, generated from its options: 'vmkeep man | man -l -', or "
        "'vmkeep man > /usr/local/share/man/man1/vmkeep.1'.",
    )
    p.set_defaults(func=cmd_man)


def cmd_completion(args: argparse.Namespace) -> int:
    from ..cli import build_parser
    from ..manual import bash_completion

    print(bash_completion(build_parser()), end="")
    return EXIT_OK


def cmd_man(args: argparse.Namespace) -> int:
    from ..cli import build_parser, version
    from ..manual import man_page

    print(man_page(build_parser(), version()), end="")
    return EXIT_OK
