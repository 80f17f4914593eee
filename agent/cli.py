"""The ``vmkeep`` command line. Errors end in one line on stderr and a non-zero exit status."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from vmkeep.hypervisors.exceptions import SourceError
from vmkeep.repository.exceptions import CorruptRepository, RepositoryError

from .commands import agent, backup, config, demo, key, repository, restore, vsphere
from .commands.common import EXIT_DAMAGED, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE
from .engine import cancel
from .engine.exceptions import EngineError, Interrupted
from .exceptions import AgentError, ConfigError

PROG = "vmkeep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Agentless, forever-incremental backup of virtual machines into a deduplicating repository.",
        epilog="Secrets are never taken on the command line: use --passphrase-file or $VMKEEP_PASSPHRASE.",
    )
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
    demo.add_parsers(sub)
    return parser


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
    except (KeyboardInterrupt, Interrupted):
        _error("interrupted; the job was cleaned up and nothing was committed")
        return EXIT_INTERRUPTED
    except CorruptRepository as exc:
        message = str(exc)
        _error(message if message.startswith("corrupt repository") else f"corrupt repository: {message}")
        return EXIT_DAMAGED
    except (AgentError, RepositoryError, SourceError, EngineError) as exc:
        _error(str(exc))
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE
    except OSError as exc:
        _error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return EXIT_FAILURE
    except Exception as exc:
        if args.debug:
            raise
        _error(f"unexpected {type(exc).__name__}: {exc} (run with --debug for a traceback)")
        return EXIT_FAILURE
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _request_stop(signum: int, frame: FrameType | None) -> None:
    cancel.request(f"received {signal.Signals(signum).name}")


def _error(message: str) -> None:
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
