"""What every command shares: options, opening the repository, exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vmkeep.repository.exceptions import PassphraseRequired
from vmkeep.repository.repo import Repository

from .. import secrets
from ..exceptions import ConfigError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DAMAGED = 3  # verify found problems, or a repository file is damaged
EXIT_INTERRUPTED = 130

REPO_ENV = "VMKEEP_REPO"


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


def open_repository(args: argparse.Namespace) -> Repository:
    """The repository of ``--repo``, unlocked for ``--no-lock``; prompts for a passphrase on a terminal."""
    path = repo_path(args)
    lock = not getattr(args, "no_lock", False)
    try:
        return Repository.open(path, secrets.passphrase(args.passphrase_file), lock=lock)
    except PassphraseRequired:
        if args.passphrase_file is None and sys.stdin.isatty():
            return Repository.open(path, secrets.passphrase(None, required=True), lock=lock)
        raise
