"""Turning the job file's sources and repositories into connections and open repositories.

Secrets are read when needed, from the file, environment variable or keyring entry the job
file names; never from the file itself, never from a prompt (the agent has no terminal).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from vmkeep.repository.repo import Repository

from .. import secrets
from ..exceptions import ConfigError
from .kinds import SourceType
from .model import RepositoryConfig, SourceConfig

if TYPE_CHECKING:
    from vmkeep.hypervisors.platforms import Endpoint, PlatformKind


def source_password(name: str, source: SourceConfig) -> str:
    if source.password_path is not None:
        return secrets.read_secret_file(source.password_path, f"sources.{name} password").decode()
    if source.password_env:
        value = os.environ.get(source.password_env)
        if not value:
            raise ConfigError(f"sources.{name}: the environment variable {source.password_env} is not set")
        return value
    stored = secrets.keyring_password(source.user, source.url)
    if not stored:
        raise ConfigError(
            f"sources.{name}: the keyring holds no password for {source.user}@{source.url} "
            f"(vmkeep store-password --{'hyperv' if source.type is SourceType.HYPERV else 'vcenter'} {source.url} "
            f"--user {source.user})"
        )
    return stored


def source_kind(source: SourceConfig) -> PlatformKind:
    """The platform a source of the job file is on (its ``type``)."""
    from vmkeep.hypervisors.platforms import platform_kind

    return platform_kind(source.type)


def source_endpoint(name: str, source: SourceConfig) -> Endpoint:
    """Where the source is and how to log in, for ``open_platform`` (the password read now)."""
    from vmkeep.hypervisors.platforms import Endpoint
    from vmkeep.hypervisors.tls import TlsPolicy

    tls = TlsPolicy(ca_file=source.ca_path, thumbprint=source.thumbprint, allow_cleartext=source.allow_cleartext)
    endpoint = Endpoint(source.url, source.user, source_password(name, source), tls)
    if source.type is SourceType.HYPERV:
        from vmkeep.hypervisors.hyperv.platform import HypervEndpoint
        from vmkeep.hypervisors.hyperv.shares import ShareMap

        shares = ShareMap.parse(list(source.smb_shares))
        return HypervEndpoint(endpoint.address, endpoint.user, endpoint.password, tls, source.smb_port, shares)
    return endpoint


def repository_passphrase(name: str, repo: RepositoryConfig) -> bytes | None:
    if repo.passphrase_path is not None:
        return secrets.read_secret_file(repo.passphrase_path, f"repositories.{name} passphrase")
    if repo.passphrase_env:
        value = os.environ.get(repo.passphrase_env)
        if not value:
            raise ConfigError(f"repositories.{name}: the environment variable {repo.passphrase_env} is not set")
        return value.encode()
    return None


def open_repository(name: str, repo: RepositoryConfig) -> Repository:
    """The repository, unlocked with its passphrase (once: the key stays in memory)."""
    return Repository.open(repo.location, repository_passphrase(name, repo))
