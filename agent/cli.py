"""The ``vmkeep`` command line. Errors end in one line on stderr and a non-zero exit status."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from vmkeep.repository.exceptions import CorruptRepository

from .commands import agent, backup, config, demo, fleet, key, manual, repository, restore, vsphere, worker
from .commands.common import EXIT_FAILURE, exit_code
from .engine import cancel
from .engine.exceptions import Interrupted
from .exceptions import PromptCancelled
from .output import print_json

PROG = "vmkeep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Agentless, forever-incremental backup of virtual machines into a deduplicating repository.",
        epilog="Secrets are never taken on the command line: use --passphrase-file or $VMKEEP_PASSPHRASE. "
        "Exit status: 0 success, 1 failure, 2 bad usage or configuration, 3 damage found or a corrupt "
        "repository, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    parser.add_argument("--verbose", "-v", action="count", default=0, help="more log output (twice for debug)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    repository.add_parsers(sub)
    backup.add_parsers(sub)
    vsphere.add_parsers(sub)
    restore.add_parsers(sub)
    key.add_parsers(sub)
    config.add_parsers(sub)
    agent.add_parsers(sub)
    worker.add_parsers(sub)
    fleet.add_parsers(sub)
    demo.add_parsers(sub)
    manual.add_parsers(sub)
    return parser


def version() -> str:
    """The installed package's version."""
    try:
        return importlib.metadata.version(PROG)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(message)s", stream=sys.stderr)
    cancel.reset()
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code: int = args.func(args)
        return code
    except (KeyboardInterrupt, Exception) as exc:
        status = exit_code(exc)
        if status is None:
            if args.debug:
                raise
            status, message = EXIT_FAILURE, f"unexpected {type(exc).__name__}: {exc} (run with --debug for a traceback)"
        else:
            message = _message(exc)
        _error(message)
        if getattr(args, "json", False) and not getattr(exc, "json_reported", False):
            print_json({"error": message, "code": status})
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _message(exc: BaseException) -> str:
    """The one error line for an expected error."""
    if isinstance(exc, PromptCancelled):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt | Interrupted):
        return "interrupted; the job was cleaned up and nothing was committed"
    if isinstance(exc, CorruptRepository):
        message = str(exc)
        return message if message.startswith("corrupt repository") else f"corrupt repository: {message}"
    if isinstance(exc, OSError):
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}"
    return str(exc)


def _request_stop(signum: int, frame: FrameType | None) -> None:
    cancel.request(f"received {signal.Signals(signum).name}")


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
