"""What every command shares: options, opening the repository, exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vmkeep.hypervisors.exceptions import SourceError
from vmkeep.hypervisors.image.exceptions import HintsError
from vmkeep.repository.exceptions import (
    AmbiguousPoint,
    CorruptRepository,
    NotARepository,
    PassphraseRequired,
    RepositoryError,
    RepositoryExists,
    WrongPassphrase,
)

from .. import secrets
from ..engine.exceptions import EngineError, Interrupted
from ..exceptions import AgentError, ConfigError, PromptCancelled
from ..launch import REPO_ENV

if TYPE_CHECKING:
    from vmkeep.repository.repo import Repository

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # bad usage or configuration: what the administrator asked for cannot be done as asked
EXIT_DAMAGED = 3  # verify found problems, or a repository file is damaged
EXIT_INTERRUPTED = 130

# The one place where an error becomes an exit status: the first row whose class matches wins, so
# subclasses come before their bases. The README's table of exit codes lists the same rows.
EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (KeyboardInterrupt, EXIT_INTERRUPTED, "interrupted (Ctrl-C, SIGTERM)"),
    (Interrupted, EXIT_INTERRUPTED, "interrupted (Ctrl-C, SIGTERM)"),
    (PromptCancelled, EXIT_INTERRUPTED, "Ctrl-C or Ctrl-D at a passphrase or password prompt"),
    (CorruptRepository, EXIT_DAMAGED, "a repository file is damaged or missing"),
    (ConfigError, EXIT_USAGE, "a bad option, option value, environment setting or secret file"),
    (NotARepository, EXIT_USAGE, "the repository path does not exist, or is not a repository"),
    (RepositoryExists, EXIT_USAGE, "init into a directory that is not empty"),
    (PassphraseRequired, EXIT_USAGE, "an encrypted repository and no passphrase"),
    (WrongPassphrase, EXIT_USAGE, "the passphrase does not open the repository"),
    (AmbiguousPoint, EXIT_USAGE, "a point reference that matches several points, or 'latest' with several VMs"),
    (HintsError, EXIT_USAGE, "a --hints file that cannot be read or is malformed"),
    (AgentError, EXIT_FAILURE, "any other failure"),
    (RepositoryError, EXIT_FAILURE, "any other failure"),
    (SourceError, EXIT_FAILURE, "any other failure"),
    (EngineError, EXIT_FAILURE, "any other failure"),
    (OSError, EXIT_FAILURE, "any other failure"),
)


def exit_code(exc: BaseException) -> int | None:
    """The exit status for an expected error, or None for an unexpected one (a bug)."""
    for cls, code, _ in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return None


def repo_options(parser: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        parser.add_argument("repo", nargs="?", metavar="REPO", help=f"repository path (default: ${REPO_ENV})")
    else:
        parser.add_argument("--repo", "-r", metavar="REPO", help=f"repository path (default: ${REPO_ENV})")
    parser.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="FILE",
        help="read the repository passphrase from FILE (default: $VMKEEP_PASSPHRASE, else a prompt)",
    )


def no_lock_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-lock",
        action="store_true",
        help="write no lock file, so this works on a read-only mount or a full file system; the risk: "
        "a gc running at the same time can delete data this command is reading",
    )


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON document on stdout instead of text")


def repo_path(args: argparse.Namespace) -> Path:
    value = args.repo or os.environ.get(REPO_ENV)
    if not value:
        raise ConfigError(f"no repository given: pass --repo or set {REPO_ENV}")
    return Path(value)


def start_unlocking(args: argparse.Namespace) -> None:
    """For a command on a repository: begin deriving its key now, while the command loads its modules.

    Only with a passphrase given without a prompt (``--passphrase-file``, ``$VMKEEP_PASSPHRASE``),
    and silently not at all when anything is amiss: the command then meets the problem where it
    always did, in ``open_repository``, and reports it there.
    """
    if not hasattr(args, "passphrase_file"):
        return
    try:
        path = repo_path(args)
        passphrase = secrets.passphrase(args.passphrase_file)
    except (ConfigError, OSError):
        return
    if passphrase:
        from vmkeep.repository.kdf import start_deriving

        start_deriving(path, passphrase)


def open_repository(args: argparse.Namespace) -> Repository:
    """The repository of ``--repo``, unlocked for ``--no-lock``; prompts for a passphrase on a terminal."""
    from vmkeep.repository.repo import Repository

    path = repo_path(args)
    lock = not getattr(args, "no_lock", False)
    try:
        return Repository.open(path, secrets.passphrase(args.passphrase_file), lock=lock)
    except PassphraseRequired:
        if args.passphrase_file is None and sys.stdin.isatty():
            return Repository.open(path, secrets.passphrase(None, required=True), lock=lock)
        raise


def parse_network_map(items: list[str]) -> dict[str, str]:
    """The --network OLD=NEW options of a restore to a host, as a mapping."""
    mapping = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise ConfigError(f"--network takes OLD=NEW, not {item!r}")
        mapping[old] = new
    return mapping
