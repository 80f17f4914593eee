"""The ``vmkeep`` program's first lines: begin the passphrase's key derivation, then load the CLI.

Argon2id is the largest fixed cost of a command on an encrypted repository (115 ms of both cores
here, on purpose), and it runs on threads while the command loads its modules (cli.main,
``start_unlocking``). Loading and building the command line itself (argparse, logging, the
command's module) comes first and takes 20 to 30 ms; this module starts the derivation before
that, from a plain look at the arguments, for the common case: a command that takes
``--repo`` / ``-r`` (or ``$VMKEEP_REPO``), with the passphrase in ``$VMKEEP_PASSPHRASE``.

This is a guess, and only a head start: it decides nothing. The derivation begun here is used
only if the command, once parsed, opens that repository with that passphrase (repository/kdf.py
hands a derivation over by its parameters and passphrase); otherwise the command derives its
own, as it always did. Anything unusual (``--passphrase-file``, ``-rDIR``, no command that
takes a repository) starts nothing. It imports only what the derivation needs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

# Commands (the first word) whose parsers take --repo/-r: tests/agent/test_cli_startup.py checks
# this against the parsers, so a new command cannot be left out, or wrongly put in.
REPOSITORY_COMMANDS = frozenset(
    {"points", "info", "forget", "gc", "verify", "unlock", "repair", "backup-image", "backup", "restore", "key"}
)
# The variables the program reads for the repository and its passphrase, here first; the command
# line (commands/common.py) and secrets.py take them from here.
REPO_ENV = "VMKEEP_REPO"
PASSPHRASE_ENV = "VMKEEP_PASSPHRASE"


def command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv``: the first argument that is not an option (no global option takes a value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def early_unlock(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Path, bytes] | None:
    """The repository and passphrase a command will most likely open, or None to start nothing."""
    if command_of(argv) not in REPOSITORY_COMMANDS:
        return None
    passphrase = environ.get(PASSPHRASE_ENV, "")
    repo = environ.get(REPO_ENV, "")
    args = list(argv[: argv.index("--")] if "--" in argv else argv)
    for n, arg in enumerate(args):
        if arg.startswith("--passphrase-file"):
            return None  # the file wins over the variable; the command reads it itself
        if arg in ("--repo", "-r"):
            repo = args[n + 1] if n + 1 < len(args) else ""
        elif arg.startswith("--repo="):
            repo = arg.removeprefix("--repo=")
        elif arg.startswith("-r") and not arg.startswith("--") and len(arg) > 2:
            return None  # -rDIR, or -r among short options run together: leave it to argparse
    if not repo or not passphrase:
        return None
    return Path(repo), passphrase.encode()


def run() -> NoReturn:
    """The console script: a head start for the key derivation, then ``cli.run``."""
    guess = early_unlock(sys.argv[1:], os.environ)
    if guess is not None:
        from vmkeep.repository.kdf import start_deriving

        start_deriving(*guess)
    from .cli import run as run_cli

    run_cli()
