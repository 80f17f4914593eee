"""Errors raised by the repository. Every one carries a message fit for a one-line CLI error."""

from __future__ import annotations


class RepositoryError(Exception):
    """Base class: something about the repository prevents the operation."""


class NotARepository(RepositoryError):
    """The path does not hold a vmkeep repository (or its config is unreadable)."""


class RepositoryExists(RepositoryError):
    """`init` was pointed at a path that already holds a repository or other files."""


class PassphraseRequired(RepositoryError):
    """The repository is encrypted and no passphrase was given."""


class WrongPassphrase(RepositoryError):
    """The passphrase does not unwrap the repository keys."""


class CorruptRepository(RepositoryError):
    """A repository file failed its checksum, authentication or structural checks."""


class FileMissing(CorruptRepository):
    """A repository file is not there (damage, or removed by another process since it was listed)."""


class BlockMissing(CorruptRepository):
    """A recovery point refers to a block that no index or pack holds."""


class RepositoryFull(RepositoryError):
    """The file system holding the repository ran out of space (ENOSPC / EDQUOT)."""


class RepositoryLocked(RepositoryError):
    """An exclusive operation (gc) or a conflicting writer holds the repository."""


class PointNotFound(RepositoryError):
    """No recovery point matches the id or prefix given."""


class AmbiguousPoint(RepositoryError):
    """An id prefix matches more than one recovery point."""


class LockLost(RepositoryError):
    """The lock a job holds was released or removed: nothing may be committed under it."""
