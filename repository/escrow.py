"""Putting an exported ``keys`` document back (``vmkeep key import``), after checking it fits.

An import must work when both ``keys`` and ``keyscopy`` are damaged or gone, so it does not go
through ``Repository.open``: it reads ``config``, checks the document names this repository and
unwraps with the passphrase, then reads a few index files and a blob with the unwrapped keys
(which fails if they are another repository's), and only then writes ``keys`` and ``keyscopy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .backend import LocalBackend
from .config import CONFIG_FILE, RepoConfig
from .exceptions import CorruptRepository, NotARepository, RepositoryError
from .keys import KeysDocument, write_keys
from .repo import Repository

INDEX_FILES_TRIED = 3


@dataclass(frozen=True)
class ImportedKeys:
    repo_id: str
    encrypted: bool
    upgraded: bool  # the imported document was version 1: written back as version 2
    checked_against_data: bool  # False only for a repository with no index file yet


def parse_export(content: bytes, where: str) -> KeysDocument:
    """An exported keys document, checked (a damaged export is not a damaged repository)."""
    try:
        return KeysDocument.parse(content, where)
    except CorruptRepository as exc:
        raise RepositoryError(f"not a usable vmkeep keys file: {exc}") from None


def import_keys(path: Path, document: KeysDocument, where: str, passphrase: bytes | None) -> ImportedKeys:
    """Check ``document`` (exported, read from ``where``) fits, and write it as the repository's keys."""
    if not (path / CONFIG_FILE).is_file():
        raise NotARepository(f"{path} is not a vmkeep repository (no config file)")
    backend = LocalBackend(path)
    config = RepoConfig.load(backend.read(CONFIG_FILE))
    if document.repo_id is not None and document.repo_id != config.repo_id:
        raise RepositoryError(
            f"{where} holds the keys of repository {document.repo_id}, not of {path} ({config.repo_id})"
        )
    if document.encryption != config.encryption:
        raise RepositoryError(
            f"{where} is for a repository with encryption {document.encryption}; {path} has {config.encryption}"
        )
    keys = document.unwrap(passphrase, where)
    repo = Repository(backend, config, keys, str(path))
    try:
        checked = _check_against_data(repo, where)
        write_keys(backend, document.for_repository(config.repo_id))
    finally:
        repo.close()
    return ImportedKeys(config.repo_id, document.encrypted, document.version < 2, checked)


def _check_against_data(repo: Repository, where: str) -> bool:
    """Read index files and one blob with the new keys; False if there is nothing to read yet."""
    names = repo.index_files()[:INDEX_FILES_TRIED]
    failures = []
    for name in names:
        try:
            entries = repo.read_index_file(name)
            blob = next((e.blob_id for pack in entries.values() for e in pack), None)
            if blob is not None:
                repo.read_blob(blob)
        except CorruptRepository as exc:
            failures.append(str(exc))
            continue
        return True
    if failures:
        raise RepositoryError(f"the keys in {where} do not read this repository's data: {'; '.join(failures)}")
    return False
