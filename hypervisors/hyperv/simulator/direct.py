"""Talking to the simulated host without a network: for unit tests of templates and the model.

End-to-end tests go through WinRM and SMB; these stand-ins call the handler and read the
VHDX files in place, so a test of the host model needs neither server.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...base import Extent
from ..exceptions import HypervError
from ..vhdxmap import allocated_extents
from .host import SimHost


class DirectRunner:
    """A :class:`~vmkeep.hypervisors.hyperv.control.ScriptRunner` that calls ``SimHost.handle``."""

    def __init__(self, host: SimHost) -> None:
        self.host = host

    def run(self, script: str, stdin: bytes | None = None, *, idempotent: bool = False) -> bytes:
        result = self.host.handle(script, stdin or b"")
        if result.exit_code != 0:
            raise HypervError(f"the host refused the script: {result.stderr.decode(errors='replace').strip()}")
        return result.stdout


class LocalVhdx:
    """A VHDX of the simulated host read in place with dissect.hypervisor."""

    def __init__(self, path: Path) -> None:
        from dissect.hypervisor.disk.vhdx import VHDX

        self._file = path.open("rb")
        self._stream: Any = VHDX(self._file)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self._stream.readoffset(offset, length))

    def allocated(self) -> list[Extent]:
        return allocated_extents(self._stream)

    def close(self) -> None:
        self._file.close()


class LocalStorage:
    """:class:`~vmkeep.hypervisors.hyperv.storage.HostStorage` on the simulated host's files, in place."""

    def __init__(self, host: SimHost) -> None:
        self.host = host

    def open_disk(self, windows_path: str) -> LocalVhdx:
        return LocalVhdx(self.host.local_path(windows_path))

    def upload(self, local: Path, windows_path: str, progress: Callable[[int], None] | None = None) -> None:
        target = self.host.local_path(windows_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with local.open("rb") as src, target.open("xb") as dst:
            shutil.copyfileobj(src, dst)

    def remove(self, windows_path: str) -> None:
        self.host.local_path(windows_path).unlink(missing_ok=True)
