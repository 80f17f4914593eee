"""Restoring a recovery point to a Hyper-V host as a new VM.

Each disk's content (a stream of every byte) is written to a sparse local raw file, converted
to a dynamic VHDX by ``qemu-img convert -O vhdx``, uploaded to the host (over SMB, never
overwriting a file) and, unless told not to, read back through the VHDX parser and compared
by SHA-256 with what was sent. The VM is then created over WinRM with the recorded
generation, CPU, memory and network adapters (switches mapped by ``--network OLD=NEW``), and
each VHDX attached at its recorded controller and location. An existing VM is never
overwritten; if anything fails, the VM and the uploaded files are removed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from ..base import DiskImage
from . import qemu
from .control import HostControl
from .exceptions import HypervError, RestoreError
from .storage import HostStorage
from .templates import Template

log = logging.getLogger(__name__)

READ_BACK_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class HypervRestoreSpec:
    """Hyper-V's part of a restore target."""

    folder: str | None = None  # where the VHDX files go on the host (default: its VHD folder\\NAME)
    network_map: dict[str, str] = field(default_factory=dict)  # recorded switch -> switch on the target
    staging: Path | None = None  # local folder for the raw and VHDX files being made (default: $TMPDIR)


@dataclass(frozen=True)
class RestoredDisk:
    key: str
    file: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "file": self.file, "size": self.size, "sha256": self.sha256}


def restore_vm(
    control: HostControl,
    storage: HostStorage,
    hardware: dict[str, Any],
    images: list[DiskImage],
    *,
    name: str,
    spec: HypervRestoreSpec,
    verify: bool = True,
    power_on: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[str, list[RestoredDisk]]:
    """Create VM ``name`` (and start it with ``power_on``); returns its id and the restored disks."""
    if hardware.get("platform") != "hyperv":
        raise RestoreError("the point's hardware was not recorded from Hyper-V; restore it with --to-dir")
    inventory = control.inventory()
    if any(v.name == name for v in inventory.vms):
        raise RestoreError(
            f"a VM named {name!r} exists already on {control.host}; vmkeep never overwrites a VM (use --name)"
        )
    folder = spec.folder or str(PureWindowsPath(inventory.vhd_path or "C:\\Hyper-V\\Virtual Hard Disks") / name)
    recorded = {str(d["key"]): d for d in hardware.get("disks", [])}
    missing = [img.key for img in images if img.key not in recorded]
    if missing:
        raise RestoreError(f"the recorded hardware has no disk with key(s) {', '.join(missing)}")
    nics = [
        {
            "name": str(n.get("name") or "Network Adapter"),
            "switch": spec.network_map.get(str(n.get("switch") or ""), str(n.get("switch") or "")),
        }
        for n in hardware.get("nics", [])
    ]
    uploaded: list[str] = []
    vm_id: str | None = None
    restored: list[RestoredDisk] = []
    try:
        with tempfile.TemporaryDirectory(prefix="vmkeep-restore-", dir=spec.staging) as tmp:
            for image in images:
                file = f"{name}-{image.key}.vhdx"
                path = str(PureWindowsPath(folder) / file)
                local = Path(tmp) / f"{image.key}.vhdx"
                digest = _stage(image, local, progress)
                storage.upload(local, path)
                uploaded.append(path)
                local.unlink()
                if verify:
                    _read_back(storage, path, image.capacity, digest)
                restored.append(RestoredDisk(image.key, path, image.capacity, digest))
        created = control.create_vm(
            {
                "name": name,
                "generation": int(hardware.get("generation", 2)),
                "cpu": int(hardware.get("cpu", 1)),
                "memory_mb": int(hardware.get("memory_mb", 1024)),
                "nics": nics,
            }
        )
        vm_id = str(created["id"])
        for disk in restored:
            rec = recorded[disk.key]
            control.call(
                Template.ATTACH_DISK,
                vm_id=vm_id,
                controller=str(rec["controller"]),
                controller_number=int(rec["controller_number"]),
                location=int(rec["location"]),
                path=disk.file,
            )
        if power_on:  # as for vSphere: a VM that cannot start is removed with the rest
            control.call(Template.START_VM, vm_id=vm_id)
        return vm_id, restored
    except BaseException as exc:
        log.error("restore of %s failed (%s); removing what was created", name, exc)
        _undo(control, storage, vm_id, uploaded)
        if isinstance(exc, HypervError) and not isinstance(exc, RestoreError):
            raise RestoreError(f"restoring {name} failed, and what was created is removed: {exc}") from None
        raise


def _stage(image: DiskImage, vhdx: Path, progress: Callable[[int], None] | None) -> str:
    """Write the image to a sparse raw file next to ``vhdx``, convert it to ``vhdx``; its SHA-256."""
    raw = vhdx.with_suffix(".raw")
    hasher = hashlib.sha256()
    size = 0
    try:
        with raw.open("wb") as f:
            for chunk in image.stream():
                hasher.update(chunk)
                if chunk.count(0) == len(chunk):
                    f.seek(len(chunk), os.SEEK_CUR)  # a hole: zeros cost nothing
                else:
                    f.write(chunk)
                size += len(chunk)
                if progress is not None:
                    progress(len(chunk))
            f.truncate(size)
        if size != image.capacity:
            raise RestoreError(f"disk {image.key}: the point gave {size} bytes for a {image.capacity}-byte disk")
        qemu.from_raw(raw, vhdx)
    finally:
        raw.unlink(missing_ok=True)
    return hasher.hexdigest()


def _read_back(storage: HostStorage, path: str, size: int, digest: str) -> None:
    """Read the uploaded VHDX's virtual disk back through the parser; it must hash as what was sent."""
    disk = storage.open_disk(path)
    try:
        hasher = hashlib.sha256()
        for offset in range(0, size, READ_BACK_CHUNK):
            hasher.update(disk.read(offset, min(READ_BACK_CHUNK, size - offset)))
    finally:
        disk.close()
    if hasher.hexdigest() != digest:
        raise RestoreError(f"{path}: what the host holds differs from what was uploaded")


def _undo(control: HostControl, storage: HostStorage, vm_id: str | None, uploaded: list[str]) -> None:
    if vm_id is not None:
        try:
            control.call(Template.REMOVE_VM, vm_id=vm_id)
        except Exception as exc:
            log.error("could not remove the half-restored VM %s: %s; remove it by hand", vm_id, exc)
    for path in uploaded:
        try:
            storage.remove(path)
        except Exception as exc:
            log.error("could not remove %s: %s; remove it by hand", path, exc)
