"""The ``vmkeep`` command line. Errors end in one line on stderr and a non-zero exit status."""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

from vmkeep.repository.exceptions import CorruptRepository

from .commands.common import EXIT_FAILURE, exit_code, start_unlocking
from .engine import cancel
from .engine.exceptions import Interrupted
from .exceptions import PromptCancelled
from .extras import missing_extra
from .launch import command_of
from .output import print_json

PROG = "vmkeep"


# Each module of agent/commands/ and the commands its add_parsers registers, in --help order. A
# command imports only its own module (an image backup loads no pyVmomi, pydantic or croniter);
# --help, completion and the man page load them all. tests/agent/test_cli_startup.py checks
# this table against what the modules register.
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "repository": ("init", "points", "info", "forget", "gc", "unlock", "repair"),
    "verify": ("verify",),
    "backup": ("backup-image",),
    "vsphere": ("backup", "store-password", "vms"),
    "restore": ("restore",),
    "key": ("key",),
    "config": ("config",),
    "agent": ("agent", "jobs", "history"),
    "worker": ("worker",),
    "fleet": ("fleet",),
    "demo": ("demo",),
    "manual": ("completion", "man"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (given a command of ``COMMAND_MODULES``) one with that command's module only."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Agentless, forever-incremental backup of virtual machines into a deduplicating repository.",
        epilog="Secrets are never taken on the command line: use --passphrase-file or $VMKEEP_PASSPHRASE. "
        "Exit status: 0 success, 1 failure, 2 bad usage or configuration, 3 damage found or a corrupt "
        "repository, 130 interrupted.",
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    parser.add_argument("--verbose", "-v", action="count", default=0, help="more log output (twice for debug)")
    parser.add_argument("--debug", action="store_true", help="show a traceback on unexpected errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = [m for m, commands in COMMAND_MODULES.items() if command in commands] or list(COMMAND_MODULES)
    for name in modules:
        importlib.import_module(f"{__package__}.commands.{name}").add_parsers(sub)
    return parser


class _VersionAction(argparse.Action):
    """--version, reading the package's metadata only when asked (importlib.metadata costs 30 ms)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"{PROG} {version()}")
        parser.exit()


def version() -> str:
    """The installed package's version."""
    import importlib.metadata

    try:
        return importlib.metadata.version(PROG)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    start_unlocking(args)  # Argon2id runs on a thread while the command imports what it needs
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format=f"{PROG}: %(levelname)s: %(message)s", stream=sys.stderr)
    cancel.reset()
    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code: int = args.func(args)
        return code
    except (KeyboardInterrupt, Exception) as raised:
        exc = missing_extra(raised, f"{PROG} {args.command}") or raised
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


def run() -> NoReturn:
    """The ``vmkeep`` program (console script and ``python -m``): :func:`main`, then a quick exit.

    When a command returns, its files are closed and durable and its locks are released. What is
    left of the usual exit is the interpreter's teardown (every module cleared, a last garbage
    collection): 15 ms of every command on the project's VM, a twentieth of an incremental
    backup. So the exit functions run as usual (logging's flush, thread pools, temporary
    directories), the standard streams are flushed, and the process ends without the teardown.
    While a non-daemon thread still runs, the usual exit waits for it as it always has.
    """
    code = main()
    main_thread = threading.main_thread()
    if any(t is not main_thread and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # e.g. a closed pipe: the status Python itself gives a failed flush at exit
        code = 120
    os._exit(code)


if __name__ == "__main__":
    run()
