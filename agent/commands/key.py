"""Key escrow: ``vmkeep key export`` and ``vmkeep key import`` (after borg's ``key export``).

An encrypted repository whose ``keys`` file is lost is lost: every block is encrypted under a
data key that exists only there (and in ``keyscopy``, on the same disk). An export kept
elsewhere, still wrapped by the passphrase, brings it back.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from vmkeep.repository.escrow import import_keys, parse_export
from vmkeep.repository.kdf import KEYS_FILE
from vmkeep.repository.keys import KEYS_COPY_FILE, KeysDocument, write_keys
from vmkeep.repository.repo import Repository

from .. import secrets
from ..exceptions import ConfigError
from ..output import print_json
from ..paper_key import PaperKeyError, from_paper, is_paper, to_paper
from .common import EXIT_OK, json_option, open_repository, repo_options, repo_path

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    key = sub.add_parser(
        "key",
        help="export or import the repository's keys (escrow)",
        description="Keep a copy of the repository's keys away from the repository. Lose the keys file of an "
        "encrypted repository and every backup in it is unreadable, passphrase or not.",
    )
    actions = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    p = actions.add_parser(
        "export",
        help="write the keys document to a file or stdout",
        description="Write the repository's keys document (still wrapped by the passphrase when the repository "
        "is encrypted) to FILE or stdout, to keep offline. The passphrase is needed to check it opens. For an "
        "unencrypted repository the document holds the id key in clear: keep it as private as the repository.",
    )
    repo_options(p)
    p.add_argument("--file", type=Path, metavar="FILE", help="write to FILE (created, never overwritten)")
    p.add_argument("--paper", action="store_true", help="numbered hex lines with a check per line, to print")
    json_option(p)
    p.set_defaults(func=cmd_export)

    p = actions.add_parser(
        "import",
        help="restore the keys from an export",
        description="Check that FILE (from 'vmkeep key export', JSON or --paper) belongs to this repository, "
        "opens with the passphrase and reads its data, then write it as both keys and keyscopy. Works when "
        "both are damaged or missing.",
    )
    p.add_argument("file", type=Path, metavar="FILE", help="the exported keys ('-' for stdin)")
    repo_options(p)
    json_option(p)
    p.set_defaults(func=cmd_import)

    p = actions.add_parser(
        "passwd",
        help="change the passphrase of an encrypted repository",
        description="Wrap the repository's keys under a new passphrase and write keys and keyscopy. The data "
        "keys do not change, so exports made before still open with the old passphrase: replace them. The new "
        f"passphrase comes from --new-passphrase-file, ${secrets.NEW_PASSPHRASE_ENV}, or a prompt (asked twice).",
    )
    repo_options(p)
    p.add_argument("--new-passphrase-file", type=Path, metavar="FILE", help="read the new passphrase from FILE")
    json_option(p)
    p.set_defaults(func=cmd_passwd)


def cmd_export(args: argparse.Namespace) -> int:
    with open_repository(args) as repo:
        assert repo.keys_document is not None  # set by Repository.open
        document = repo.keys_document.for_repository(repo.config.repo_id)
        repo_id = repo.config.repo_id
    content = document.dump()
    if not document.encrypted:
        log.warning("this repository is not encrypted: the export holds its id key in clear; keep it private")
    text = to_paper(content, repo_id) if args.paper else content.decode()
    if args.file is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{args.file} exists already; choose another file") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {args.file}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    if args.json:
        print_json({"repo_id": repo_id, "file": str(args.file), "encrypted": document.encrypted, "paper": args.paper})
    else:
        print(f"exported the keys of repository {repo_id} to {args.file}; keep it away from the repository")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    where = "stdin" if str(args.file) == "-" else str(args.file)
    try:
        content = sys.stdin.buffer.read() if where == "stdin" else args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    if is_paper(content):
        try:
            content = from_paper(content)
        except PaperKeyError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    path = repo_path(args)
    document = parse_export(content, where)
    passphrase = secrets.passphrase(args.passphrase_file, required=document.encrypted)
    result = import_keys(path, document, where, passphrase)
    if args.json:
        print_json(vars(result))
    else:
        how = "checked against its data" if result.checked_against_data else "no data yet to check against"
        print(f"imported the keys of repository {result.repo_id} into {path} as keys and keyscopy ({how})")
    return EXIT_OK


def cmd_passwd(args: argparse.Namespace) -> int:
    old = secrets.passphrase(args.passphrase_file, required=True)
    with Repository.open(repo_path(args), old, lock=False) as repo:
        document, repo_id = repo.keys_document, repo.config.repo_id
        assert document is not None  # set by Repository.open
        if not document.encrypted:
            raise ConfigError("the repository is not encrypted: it has no passphrase to change")
        new = secrets.new_passphrase(args.new_passphrase_file)
        write_keys(repo.backend, KeysDocument.wrap(document.unwrap(old), new, repo_id))
    if args.json:
        print_json({"repo_id": repo_id, "written": [KEYS_FILE, KEYS_COPY_FILE]})
    else:
        print(
            f"changed the passphrase of repository {repo_id} (keys and keyscopy); exports made before still "
            "open with the old passphrase: make a new one with 'vmkeep key export'"
        )
    return EXIT_OK
