"""Where secrets come from: a file, an environment variable, or a prompt. Never argv.

Secrets are read once, kept only in memory, and never logged.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from .exceptions import ConfigError

PASSPHRASE_ENV = "VMKEEP_PASSPHRASE"
PASSWORD_ENV = "VMKEEP_PASSWORD"


def read_secret_file(path: Path, what: str) -> bytes:
    """The first line of ``path``, without its line ending."""
    try:
        with path.open("rb") as f:
            value = f.readline().rstrip(b"\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


def passphrase(file: Path | None, *, confirm: bool = False, required: bool = False) -> bytes | None:
    """The repository passphrase from ``--passphrase-file``, ``VMKEEP_PASSPHRASE``, or a prompt.

    Prompts only on a terminal and only when ``required``; returns None when there is none.
    """
    if file is not None:
        return read_secret_file(file, "passphrase")
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if not required:
        return None
    if not sys.stdin.isatty():
        raise ConfigError(f"a passphrase is needed: set {PASSPHRASE_ENV} or pass --passphrase-file")
    first = getpass.getpass("repository passphrase: ").encode()
    if not first:
        raise ConfigError("an empty passphrase is not allowed")
    if confirm and getpass.getpass("repeat passphrase: ").encode() != first:
        raise ConfigError("the passphrases do not match")
    return first


def password(file: Path | None, user: str, server: str) -> str:
    """The vCenter/ESXi password from ``--password-file``, ``VMKEEP_PASSWORD``, or a prompt."""
    if file is not None:
        return read_secret_file(file, "password").decode()
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise ConfigError(f"a password is needed for {user}@{server}: set {PASSWORD_ENV} or pass --password-file")
    return getpass.getpass(f"password for {user}@{server}: ")
