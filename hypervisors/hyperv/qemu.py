"""VHDX files made, converted and written by Debian's qemu-utils (no hand-written VHDX writer).

Restore writes each disk as a VHDX with ``qemu-img convert -O vhdx``. The simulated host makes
its disks with ``qemu-img create`` and writes into them as a guest would with ``qemu-io``
(updating the block allocation table and payload blocks); ``qemu-img convert -O raw`` is the
independent reader the tests compare against.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .exceptions import HypervError

BLOCK_SIZE_OPTION = "subformat=dynamic,block_size=1M"


def _run(*argv: str) -> None:
    tool = shutil.which(argv[0])
    if tool is None:
        raise HypervError(f"{argv[0]} is missing: install Debian's qemu-utils")
    done = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, check=False)
    if done.returncode != 0 or "failed" in done.stdout.lower():
        raise HypervError(f"{argv[0]} {argv[1]} failed: {(done.stderr or done.stdout).strip()}")


def create(path: Path, size: int) -> None:
    """An empty dynamic VHDX of ``size`` bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run("qemu-img", "create", "-q", "-f", "vhdx", "-o", BLOCK_SIZE_OPTION, str(path), str(size))


def from_raw(raw: Path, path: Path) -> None:
    """A dynamic VHDX holding the raw image ``raw`` (what restore uploads)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run("qemu-img", "convert", "-q", "-f", "raw", "-O", "vhdx", "-o", BLOCK_SIZE_OPTION, str(raw), str(path))


def write(path: Path, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` into the VHDX, as the guest would."""
    with tempfile.NamedTemporaryFile(prefix="vmkeep-guest-", suffix=".bin") as src:
        src.write(data)
        src.flush()
        _run("qemu-io", "-f", "vhdx", "-c", f"write -s {src.name} {offset} {len(data)}", str(path))


def to_raw(path: Path, raw: Path) -> None:
    """The VHDX's virtual disk as a raw file: the independent reader the tests trust."""
    _run("qemu-img", "convert", "-q", "-f", "vhdx", "-O", "raw", str(path), str(raw))


def read_all(path: Path) -> bytes:
    """Every byte of the VHDX's virtual disk (through ``qemu-img convert``; for small test disks)."""
    with tempfile.TemporaryDirectory(prefix="vmkeep-vhdx-") as tmp:
        raw = Path(tmp) / "disk.raw"
        to_raw(path, raw)
        return raw.read_bytes()


def copy(src: Path, dst: Path) -> None:
    """A full copy of a VHDX (the simulator's stand-in for a differencing AVHDX)."""
    tmp = dst.with_name(dst.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
