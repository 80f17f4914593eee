"""A raw disk image (file or block device) as a platform of one VM. It has no host to restore to."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from ..base import DiskImage
from ..exceptions import NoRestoreToHost
from ..platforms import Endpoint, Platform, PlatformKind, RestoredVm, RestoreTarget, SessionOptions, VmDisk, VmSummary
from .exceptions import ImageError
from .session import DISK_KEY, ImageSession


class ImagePlatform(Platform):
    """``Endpoint.address`` is the image's path; its one VM is named after the file."""

    kind = PlatformKind.IMAGE

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def connect(cls, endpoint: Endpoint) -> Self:
        return cls(Path(endpoint.address))

    @property
    def vm_name(self) -> str:
        """The name a backup records when none is given: the file's name without its extension."""
        return self.path.stem or self.path.name

    def list_vms(self) -> list[VmSummary]:
        try:
            with open(self.path, "rb") as fh:
                capacity = fh.seek(0, os.SEEK_END)
        except OSError as exc:
            raise ImageError(f"cannot open image {self.path}: {exc.strerror}") from None
        return [VmSummary(self.vm_name, disks=(VmDisk(DISK_KEY, "", capacity),), details={"path": str(self.path)})]

    def open_session(self, vm: str, options: SessionOptions) -> ImageSession:
        return ImageSession(self.path, vm or None, options.change_hints)

    def restore_to_host(
        self,
        hardware: dict[str, Any],
        disks: list[DiskImage],
        target: RestoreTarget,
        progress: Callable[[int], None] | None = None,
    ) -> RestoredVm:
        raise NoRestoreToHost("a disk image has no host to restore to: restore it with --to-dir")
