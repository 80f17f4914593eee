"""Errors of the vSphere source. Each message is fit for a one-line CLI error."""

from __future__ import annotations

from typing import Any

from ..exceptions import SourceError, SourceUnavailable, UntrustedCertificate, VMNotFound


class VSphereError(SourceError):
    """vCenter or ESXi refused or failed an operation."""


class TaskFailed(VSphereError):
    """A vSphere task ended in error; ``fault`` is the vim fault."""

    def __init__(self, message: str, fault: Any = None) -> None:
        super().__init__(message)
        self.fault = fault


class ConnectionFailed(SourceUnavailable):
    """vCenter/ESXi cannot be reached, or its TLS identity is not the expected one."""


class LoginFailed(SourceUnavailable):
    """Wrong user or password."""


class SnapshotError(VSphereError):
    """The backup snapshot could not be created (or removed)."""


class UnsupportedDisk(VSphereError):
    """A disk the HTTP transport cannot read (not a flat base disk, object-backed storage)."""


class TransportError(VSphereError):
    """Reading or writing disk data over the datastore HTTP endpoint failed."""


class RestoreError(VSphereError):
    """Restoring to a host failed (the half-created VM is removed)."""


__all__ = [
    "ConnectionFailed",
    "LoginFailed",
    "RestoreError",
    "SnapshotError",
    "TaskFailed",
    "TransportError",
    "UnsupportedDisk",
    "UntrustedCertificate",
    "VMNotFound",
    "VSphereError",
]
