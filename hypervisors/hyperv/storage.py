"""The host's files as the agent sees them: frozen VHDX files to read, restored ones to upload.

Production goes over SMB (smb.py: smbprotocol, the VHDX parsed by dissect.hypervisor); tests of
the host model use the simulator's files in place (simulator/direct.py). Both implement
:class:`HostStorage`, and paths are always the host's own Windows paths.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .exceptions import HypervError


class VirtualDisk(Protocol):
    """A VHDX's virtual disk, readable at any offset."""

    def read(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class StorageUnreachable(HypervError):
    """The host's storage cannot be reached (the WinRM fallback may take over for small reads)."""


class HostStorage(Protocol):
    def open_disk(self, windows_path: str) -> VirtualDisk:
        """The VHDX's virtual disk; StorageUnreachable if the share cannot be reached."""

    def upload(self, local: Path, windows_path: str, progress: Callable[[int], None] | None = None) -> None:
        """Copy a local file to the host; refuses to overwrite a file that exists."""

    def remove(self, windows_path: str) -> None:
        """Delete a file on the host (a half-restored disk); no error if it is gone."""
