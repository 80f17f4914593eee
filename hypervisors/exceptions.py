"""Errors shared by every backup source. Each platform subclasses these in its own exceptions.py."""

from __future__ import annotations


class SourceError(Exception):
    """The hypervisor or image cannot be used as asked; the message is fit for a one-line error."""


class SourceUnavailable(SourceError):
    """The host cannot be reached, or refused the credentials."""


class VMNotFound(SourceError):
    """No VM of that name on the host."""
