"""Errors of the Hyper-V source; each message is fit for a one-line error."""

from __future__ import annotations

from ..exceptions import SourceError, SourceUnavailable, VMNotFound


class HypervError(SourceError):
    """The Hyper-V host refused or failed something vmkeep asked."""


class HypervUnavailable(SourceUnavailable):
    """The host cannot be reached, or refused the credentials."""


class HypervVMNotFound(VMNotFound):
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
