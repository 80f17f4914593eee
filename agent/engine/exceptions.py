"""Errors of the backup and restore engine."""

from __future__ import annotations


class EngineError(Exception):
    """A backup or restore cannot go on; the message is fit for a one-line error."""


class ShortRead(EngineError):
    """The source returned fewer bytes than the disk's capacity promised."""


class RestoreTargetError(EngineError):
    """The restore target exists already or cannot be written."""


class Interrupted(EngineError):
    """SIGINT or SIGTERM arrived; the job was cleaned up and nothing was committed."""
