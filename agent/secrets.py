"""Where secrets come from: a file, an environment variable, or a prompt. Never argv.

Secrets are read once, kept only in memory, and never logged.
"""

from __future__ import annotations

import getpass
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from .exceptions import ConfigError, PromptCancelled
from .launch import PASSPHRASE_ENV  # read there first, before anything is loaded

NEW_PASSPHRASE_ENV = "VMKEEP_NEW_PASSPHRASE"  # key passwd: the passphrase replacing the current one
PASSWORD_ENV = "VMKEEP_PASSWORD"
KEYRING_SERVICE = "vmkeep"

log = logging.getLogger(__name__)


def prompt_secret(text: str) -> str:
    """Ask for a secret on the terminal, without echo.

    Ctrl-D and Ctrl-C end the command at once (``PromptCancelled``). The CLI's SIGINT handler only
    asks a running job to stop at its next block, which at a prompt would mean typing on regardless,
    so the default handler is put back while the prompt waits.
    """
    what = text.strip().rstrip(":")
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler) if main_thread else None
    try:
        return getpass.getpass(text)
    except EOFError:
        sys.stderr.write("\n")
        raise PromptCancelled(f"{what} prompt ended with Ctrl-D; nothing was done") from None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise PromptCancelled(f"interrupted at the {what} prompt (Ctrl-C); nothing was done") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


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
    first = prompt_secret("repository passphrase: ").encode()
    if not first:
        raise ConfigError("an empty passphrase is not allowed")
    if confirm and prompt_secret("repeat passphrase: ").encode() != first:
        raise ConfigError("the passphrases do not match")
    return first


def new_passphrase(file: Path | None) -> bytes:
    """The new passphrase for ``key passwd``: ``--new-passphrase-file``, ``VMKEEP_NEW_PASSPHRASE``, or a prompt."""
    if file is not None:
        return read_secret_file(file, "new passphrase")
    env = os.environ.get(NEW_PASSPHRASE_ENV)
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        raise ConfigError(f"a new passphrase is needed: set {NEW_PASSPHRASE_ENV} or pass --new-passphrase-file")
    first = prompt_secret("new repository passphrase: ").encode()
    if not first:
        raise ConfigError("an empty passphrase is not allowed")
    if prompt_secret("repeat new passphrase: ").encode() != first:
        raise ConfigError("the passphrases do not match")
    return first


def password(file: Path | None, user: str, server: str) -> str:
    """The vCenter/ESXi password: ``--password-file``, ``VMKEEP_PASSWORD``, the OS keyring, or a prompt."""
    if file is not None:
        return read_secret_file(file, "password").decode()
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env
    stored = keyring_password(user, server)
    if stored:
        return stored
    if not sys.stdin.isatty():
        raise ConfigError(
            f"a password is needed for {user}@{server}: set {PASSWORD_ENV}, pass --password-file, "
            "or store it with 'vmkeep store-password'"
        )
    return prompt_secret(f"password for {user}@{server}: ")


def keyring_entry(user: str, server: str) -> str:
    return f"{user}@{server}"


def keyring_password(user: str, server: str) -> str | None:
    """The password stored in the OS keyring for this user and server, if keyring is installed."""
    try:
        import keyring
        from keyring.errors import KeyringError
    except ImportError:
        return None
    try:
        value: str | None = keyring.get_password(KEYRING_SERVICE, keyring_entry(user, server))
    except KeyringError as exc:
        log.debug("keyring lookup failed: %s", exc)
        return None
    return value


def store_keyring_password(user: str, server: str, secret: str | None) -> None:
    """Store (or, with None, delete) the password in the OS keyring."""
    try:
        import keyring
        from keyring.errors import KeyringError, PasswordDeleteError
    except ImportError:
        raise ConfigError("the keyring package is not installed (pip install 'vmkeep[keyring]')") from None
    backend = type(keyring.get_keyring()).__name__
    if "Plaintext" in backend or "Fail" in backend:
        log.warning(
            "the keyring backend %s %s",
            backend,
            "cannot store passwords" if "Fail" in backend else "stores passwords unencrypted",
        )
    try:
        if secret is None:
            keyring.delete_password(KEYRING_SERVICE, keyring_entry(user, server))
        else:
            keyring.set_password(KEYRING_SERVICE, keyring_entry(user, server), secret)
    except PasswordDeleteError:
        raise ConfigError(f"the keyring holds no password for {user}@{server}") from None
    except KeyringError as exc:
        raise ConfigError(f"the OS keyring refused: {exc}") from None
