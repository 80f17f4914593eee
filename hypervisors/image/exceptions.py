"""Errors of the disk-image source."""

from __future__ import annotations

from ..exceptions import SourceError


class ImageError(SourceError):
    """The image file or block device cannot be opened or read."""


class HintsError(SourceError):
    """The change hints file is unreadable, malformed, or does not fit the image."""
