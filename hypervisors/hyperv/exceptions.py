"""Errors of the Hyper-V source. Each message is fit for a one-line CLI error."""

from __future__ import annotations

from ..exceptions import SourceError, SourceUnavailable, UntrustedCertificate, VMNotFound


class HypervError(SourceError):
    """The Hyper-V host refused or failed an operation."""


class ConnectionFailed(HypervError, SourceUnavailable):
    """The host (WinRM or SMB) cannot be reached, or the connection was lost and retries gave up."""


class AuthenticationFailed(HypervError, SourceUnavailable):
    """Wrong user name or password (WinRM or SMB)."""


class CommandFailed(HypervError):
    """A PowerShell script on the host ended with an error.

    ``stderr`` is PowerShell's error text, cleaned from CLIXML, with long base64 runs (a
    script's parameter literal) cut out; ``exit_code`` is the process's exit code.
    """

    def __init__(self, message: str, stderr: str, exit_code: int) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.exit_code = exit_code


class ShareNotFound(HypervError):
    """The SMB share does not exist on the host (or the user may not see it)."""


class RemoteFileNotFound(HypervError):
    """A file on the share does not exist."""


class AccessDenied(HypervError):
    """The host refused access to a share or a file."""


class HypervVMNotFound(HypervError, VMNotFound):
    """No VM of that name on the host."""


class TemplateError(HypervError):
    """A PowerShell template could not be rendered, or its answer is not what it should be."""


class HostCallError(HypervError):
    """A template ran and answered an error (a WMI call or a job failed). ``code`` is the host's code."""

    def __init__(self, message: str, code: int | None = None, state: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.state = state


class CheckpointError(HypervError):
    """The recovery checkpoint could not be taken, converted or removed."""


class RestoreError(HypervError):
    """A restore to a Hyper-V host failed (what was created has been removed)."""


__all__ = [
    "AccessDenied",
    "AuthenticationFailed",
    "CheckpointError",
    "CommandFailed",
    "ConnectionFailed",
    "HostCallError",
    "HypervError",
    "HypervVMNotFound",
    "RemoteFileNotFound",
    "RestoreError",
    "ShareNotFound",
    "TemplateError",
    "UntrustedCertificate",
    "VMNotFound",
]
