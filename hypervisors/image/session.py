"""A raw disk image (file or block device) as a one-disk VM; changes come from hints, if given."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

from ..base import BackupSession, Changes, DiskInfo, Extent, FullRead
from .exceptions import ImageError
from .hints import load_hints

DISK_KEY = "disk0"


class ImageSession(BackupSession):
    """Backs up one image. Nothing is frozen: the caller must keep the image still meanwhile."""

    def __init__(self, path: Path, name: str | None = None, hints: Path | None = None) -> None:
        super().__init__()
        self.path = path
        self.vm_name = name or path.stem or path.name
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise ImageError(f"cannot open image {path}: {exc.strerror}") from None
        try:
            mode = os.fstat(self._fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise ImageError(f"{path} is neither a file nor a block device")
            capacity = os.lseek(self._fd, 0, os.SEEK_END)
            self._hints = load_hints(hints, capacity) if hints is not None else None
        except BaseException:
            os.close(self._fd)
            raise
        self._disk = DiskInfo(
            key=DISK_KEY,
            capacity=capacity,
            # No label: the image's path is in the point's source, and its restore is VM-disk0.img.
            identity={"path": str(path.resolve())},
        )

    def disks(self) -> list[DiskInfo]:
        return [self._disk]

    def changes_since(self, disk: DiskInfo, token: str | None) -> Changes | FullRead:
        if self._hints is None:
            return FullRead("no change hints given: reading the whole image")
        return Changes(self._hints)

    def allocated(self, disk: DiskInfo) -> list[Extent] | None:
        """The file's data extents (SEEK_DATA/SEEK_HOLE): a full read skips the holes of a sparse image.

        None where the file system or device cannot tell (then every block is read).
        """
        extents: list[Extent] = []
        pos = 0
        try:
            while pos < disk.capacity:
                try:
                    start = os.lseek(self._fd, pos, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # no data after pos
                        break
                    raise
                end = min(os.lseek(self._fd, start, os.SEEK_HOLE), disk.capacity)
                extents.append(Extent(start, end - start))
                pos = end
        except OSError:
            return None
        return extents

    def read(self, disk: DiskInfo, offset: int, length: int) -> bytes:
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise ImageError(f"reading {self.path} at {offset}: {exc.strerror}") from None

    def source_info(self) -> dict[str, Any]:
        path = str(self.path.resolve())
        return {"type": "image", "path": path, "chain": path}

    def close(self, committed: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
