"""Errors shared by every backup source. Each platform subclasses these in its own exceptions.py."""

from __future__ import annotations


class SourceError(Exception):
    """The hypervisor or image cannot be used as asked; the message is fit for a one-line error."""


class SourceUnavailable(SourceError):
    """The host cannot be reached, or refused the credentials."""


class VMNotFound(SourceError):
    """No VM of that name on the host."""


class UntrustedCertificate(SourceUnavailable):
    """The server's TLS certificate is not the trusted one; the message names the one presented."""

    def __init__(self, message: str, presented_sha256: str | None = None) -> None:
        super().__init__(message)
        self.presented_sha256 = presented_sha256


class CleartextRefused(SourceError):
    """A plain-text URL for a connection that carries secrets, or TLS options for one."""


class PlatformNotInstalled(SourceError):
    """The platform's module or one of its dependencies is not installed (a pip extra is missing)."""


class NoRestoreToHost(SourceError):
    """The platform cannot create VMs (a disk image): restore to a directory instead."""


class NeedsAttention(SourceError):
    """The point is committed, but a step after it left something to attend to (a snapshot not removed)."""
