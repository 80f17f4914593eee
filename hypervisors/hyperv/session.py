"""A backup session on a Hyper-V VM: a recovery checkpoint, RCT changes, the frozen VHDX read over SMB.

Opening the session removes recovery checkpoints an interrupted run left behind, takes a
recovery checkpoint (application-consistent if the guest allows, else crash-consistent, and
says which), and lists the VHDX files it froze: the parents, which the running VM no longer
writes to. For each disk, the changed ranges since the RCT id kept in the previous point come
from ``GetVirtualDiskChanges`` on the frozen file, called again from where the host stopped
until its processed length covers the disk. Any refusal (the id unknown, tracking disabled or
reset) makes that disk a full read, with the host's reason. Bytes are read from the frozen
VHDX over SMB (parsed by dissect.hypervisor), or, when SMB cannot be reached, through the
WinRM output stream if what is left to read is small.

Committing follows the platform contract: ``prepare_commit`` converts the checkpoint into a
reference point and returns its RCT ids (the tokens the point records) and its id;
``commit_failed`` destroys that new reference point, so the previous one stays the base of the
chain; ``after_commit`` destroys the previous point's reference point; ``close`` removes the
checkpoint if it still exists.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..base import BackupSession, Changes, CommitState, DiskInfo, Extent, FullRead
from .control import Consistency, FrozenDisk, HostControl, HostDisk, HostVm
from .exceptions import CheckpointError, HostCallError, HypervError
from .storage import HostStorage, StorageUnreachable, VirtualDisk

if TYPE_CHECKING:
    from vmkeep.repository.points import RecoveryPoint

log = logging.getLogger(__name__)

# ERROR_VHD_INVALID_CHANGE_TRACKING_ID, ..._CHANGE_TRACKING_DISABLED, ..._MISSING_CHANGE_TRACKING_INFORMATION
RCT_REFUSALS = frozenset({0xC03A0029, 0xC03A002A, 0xC03A0030})
MAX_CHANGE_CALLS = 100_000  # GetVirtualDiskChanges calls per disk before the answer counts as broken
WINRM_READ_CHUNK = 1024 * 1024  # bytes per read-disk call on the WinRM fallback
DEFAULT_FALLBACK_LIMIT = 256 * 1024 * 1024  # most bytes per disk read through WinRM when SMB is unreachable


@dataclass(frozen=True)
class _Disk:
    info: DiskInfo
    frozen: FrozenDisk
    attached: HostDisk


class HypervSession(BackupSession):
    def __init__(
        self,
        control: HostControl,
        vm_name: str,
        storage: HostStorage,
        *,
        quiesce: bool = True,
        fallback_limit: int = DEFAULT_FALLBACK_LIMIT,
    ) -> None:
        super().__init__()
        self.control = control
        self.vm_name = vm_name
        self._storage = storage
        self._fallback_limit = fallback_limit
        self._snapshot: str | None = None
        self._new_reference_point: str | None = None
        self._open: dict[str, VirtualDisk] = {}
        self._fallback: dict[str, str] = {}  # disk key -> why SMB could not be used
        self._to_read: dict[str, int] = {}  # disk key -> bytes the plan will read
        self._lock = threading.Lock()
        self.vm: HostVm = control.vm(vm_name)
        self.checkpoint_name = ""
        self._take_checkpoint(quiesce and self.vm.state.lower() == "running")
        try:
            self._disks = self._frozen_disks()
        except BaseException:
            self.close(False)
            raise

    # -- BackupSession ----------------------------------------------------------------------

    def disks(self) -> list[DiskInfo]:
        return [d.info for d in self._disks.values()]

    def changes_since(self, disk: DiskInfo, token: str | None) -> Changes | FullRead:
        if not token:
            self._to_read[disk.key] = disk.capacity
            return FullRead("the previous recovery point holds no RCT id for this disk")
        assert self._snapshot is not None
        path = self._disks[disk.key].frozen.path
        extents: list[Extent] = []
        offset = 0
        calls = 0
        while offset < disk.capacity:
            calls += 1
            if calls > MAX_CHANGE_CALLS:
                return self._full(disk, f"GetVirtualDiskChanges made no headway after {MAX_CHANGE_CALLS} calls")
            try:
                page = self.control.changes(self._snapshot, path, token, offset, disk.capacity - offset)
            except HostCallError as exc:
                if exc.code in RCT_REFUSALS:
                    return self._full(disk, f"Hyper-V refused the RCT id ({_short(exc)})")
                return self._full(disk, f"GetVirtualDiskChanges failed ({_short(exc)})")
            end = offset + page.processed
            if page.processed <= 0 or end > disk.capacity:
                return self._full(disk, f"GetVirtualDiskChanges processed {page.processed} bytes from offset {offset}")
            for ext in page.extents:
                if ext.length < 0 or ext.offset < offset or ext.end > end:
                    return self._full(
                        disk,
                        f"GetVirtualDiskChanges answered a range [{ext.offset}, {ext.end}) outside [{offset}, {end})",
                    )
            extents.extend(page.extents)
            offset = end
        self._to_read[disk.key] = sum(e.length for e in extents)
        return Changes(extents)

    def allocated(self, disk: DiskInfo) -> list[Extent] | None:
        """The frozen VHDX's allocated blocks (its BAT), so a full read skips the rest; None if unknown."""
        reader = self._reader(disk)
        allocated = getattr(reader, "allocated", None)
        if allocated is None:
            return None
        try:
            extents: list[Extent] = allocated()
        except (HypervError, ValueError) as exc:
            log.info("%s %s: no allocation map (%s); reading every block", self.vm_name, disk.label, exc)
            return None
        return extents

    def read(self, disk: DiskInfo, offset: int, length: int) -> bytes:
        reader = self._reader(disk)
        if reader is None:
            return self._read_winrm(disk, offset, length)
        return reader.read(offset, length)

    def hardware(self) -> dict[str, Any]:
        vm = self.vm
        return {
            "platform": "hyperv",
            "generation": vm.generation,
            "version": vm.version,
            "cpu": vm.cpu,
            "memory_mb": vm.memory_mb,
            "disks": [
                {
                    "key": d.info.key,
                    "controller": d.attached.controller,
                    "controller_number": d.attached.controller_number,
                    "location": d.attached.location,
                    "capacity": d.info.capacity,
                    "file": d.frozen.path.rsplit("\\", 1)[-1],
                }
                for d in self._disks.values()
            ],
            "nics": [dict(n) for n in vm.nics],
        }

    def source_info(self) -> dict[str, Any]:
        return {
            "type": "hyperv",
            "server": self.control.host,
            "vm_id": self.vm.id,
            "chain": self.vm.id,
            "checkpoint": self.checkpoint_name,
        }

    def prepare_commit(self) -> CommitState:
        """Convert the checkpoint into a reference point: its RCT ids are the point's tokens."""
        if self._snapshot is None:
            raise CheckpointError(f"{self.vm_name}: the recovery checkpoint is gone; nothing to commit")
        try:
            reference = self.control.convert_checkpoint(self._snapshot)
        except HostCallError as exc:
            raise CheckpointError(
                f"{self.vm_name}: converting the checkpoint to a reference point failed: {_short(exc)}"
            ) from None
        self._snapshot = None  # merged into the VM's disks by the conversion
        self._new_reference_point = reference.id
        tokens: dict[str, str | None] = {}
        for key, disk in self._disks.items():
            token = reference.rct_ids.get(disk.frozen.vdisk_id.upper())
            if token is None:
                self.warnings.append(
                    f"{disk.info.label}: the reference point holds no RCT id; the next backup reads it in full"
                )
            tokens[key] = token
        return CommitState(tokens, {"reference_point": reference.id})

    def commit_failed(self) -> None:
        """The point was not written: the new reference point goes, the previous one stays the base."""
        reference, self._new_reference_point = self._new_reference_point, None
        if reference is None:
            return
        try:
            self.control.destroy_reference_point(reference)
        except HypervError as exc:
            self.close_warnings.append(f"could not destroy the new reference point {reference}: {_short(exc)}")

    def after_commit(self, point: RecoveryPoint, previous: RecoveryPoint | None) -> None:
        """The new point is durable: the previous point's reference point is no longer needed."""
        if previous is None:
            return
        old = previous.source.get("reference_point")
        if isinstance(old, str) and old and old != point.source.get("reference_point"):
            self.control.destroy_reference_point(old)
            log.info("%s: destroyed the previous reference point %s", self.vm_name, old)

    def close(self, committed: bool) -> None:
        with self._lock:
            opened, self._open = self._open, {}
        for reader in opened.values():
            try:
                reader.close()
            except Exception as exc:
                log.debug("closing a disk of %s: %s", self.vm_name, exc)
        snapshot, self._snapshot = self._snapshot, None
        if snapshot is None:
            return
        try:
            self.control.remove_checkpoint(snapshot)
            log.info("%s: removed the recovery checkpoint %s", self.vm_name, self.checkpoint_name)
        except Exception as exc:
            message = (
                f"could not remove the recovery checkpoint {self.checkpoint_name!r} of {self.vm_name}: {_short(exc)}"
            )
            self.close_warnings.append(message)
            log.error("%s; the next backup of this VM removes it", message)

    # -- opening ----------------------------------------------------------------------------

    def _take_checkpoint(self, quiesce: bool) -> None:
        levels = [Consistency.APPLICATION, Consistency.CRASH] if quiesce else [Consistency.CRASH]
        for level in levels:
            try:
                taken = self.control.begin_backup(self.vm_name, level)
            except HostCallError as exc:
                if level == Consistency.APPLICATION and exc.state is not None:
                    message = (
                        f"an application-consistent checkpoint failed ({_short(exc)}); took a crash-consistent one"
                    )
                    log.warning("%s: %s", self.vm_name, message)
                    self.warnings.append(message)
                    continue
                raise CheckpointError(f"{self.vm_name}: {_short(exc)}") from None
            self._snapshot, self.checkpoint_name = taken.snapshot, taken.name
            for name in taken.removed:
                message = f"removed the recovery checkpoint {name!r} left by an interrupted backup"
                log.warning("%s: %s", self.vm_name, message)
                self.warnings.append(message)
            return

    def _frozen_disks(self) -> dict[str, _Disk]:
        assert self._snapshot is not None
        attached = {d.path.lower(): d for d in self.vm.disks}
        by_id = {d.vdisk_id.upper(): d for d in self.vm.disks}
        disks: dict[str, _Disk] = {}
        for frozen in self.control.checkpoint_disks(self._snapshot):
            host_disk = (
                attached.get(frozen.path.lower())
                or by_id.get(frozen.vdisk_id.upper())
                or next((d for d in self.vm.disks if _parent_of(d.path) == frozen.path.lower()), None)
            )
            if host_disk is None:
                raise HypervError(f"{self.vm_name}: the checkpoint holds {frozen.path}, which the VM does not list")
            if host_disk.format.upper() != "VHDX":
                raise HypervError(f"{self.vm_name} {host_disk.label}: a {host_disk.format} disk; RCT needs VHDX")
            info = DiskInfo(
                key=host_disk.key,
                capacity=frozen.capacity,
                label=host_disk.label,
                change_token=None,  # known once the checkpoint is a reference point (prepare_commit)
                identity={"vdisk_id": frozen.vdisk_id.upper()},
            )
            disks[info.key] = _Disk(info, frozen, host_disk)
        return disks

    # -- reading ----------------------------------------------------------------------------

    def _full(self, disk: DiskInfo, reason: str) -> FullRead:
        log.warning("%s %s: %s; reading it in full", self.vm_name, disk.label, reason)
        self._to_read[disk.key] = disk.capacity
        return FullRead(reason)

    def _reader(self, disk: DiskInfo) -> VirtualDisk | None:
        """The disk opened over SMB, or None when the WinRM fallback reads it."""
        with self._lock:
            if disk.key in self._open:
                return self._open[disk.key]
            if disk.key in self._fallback:
                return None
            path = self._disks[disk.key].frozen.path
            try:
                reader = self._storage.open_disk(path)
            except StorageUnreachable as exc:
                planned = self._to_read.get(disk.key, disk.capacity)
                if planned > self._fallback_limit:
                    raise HypervError(
                        f"{self.vm_name} {disk.label}: SMB cannot reach {path} ({exc}), and {planned} bytes are "
                        f"more than the WinRM fallback reads ({self._fallback_limit})"
                    ) from None
                message = f"{disk.label}: SMB cannot reach the host ({exc}); read {planned} bytes through WinRM instead"
                log.warning("%s: %s", self.vm_name, message)
                self.warnings.append(message)
                self._fallback[disk.key] = str(exc)
                return None
            self._open[disk.key] = reader
            return reader

    def _read_winrm(self, disk: DiskInfo, offset: int, length: int) -> bytes:
        path = self._disks[disk.key].frozen.path
        parts = []
        for pos in range(offset, offset + length, WINRM_READ_CHUNK):
            n = min(WINRM_READ_CHUNK, offset + length - pos)
            parts.append(self.control.read_disk(path, pos, n))
        return b"".join(parts)


def _parent_of(path: str) -> str:
    """``...\\disk0.vhdx`` for a checkpoint's ``...\\disk0_<GUID>.avhdx`` (lower case); else the path."""
    lowered = path.lower()
    if lowered.endswith(".avhdx") and "_" in lowered.rsplit("\\", 1)[-1]:
        return lowered[: lowered.rindex("_")] + ".vhdx"
    return lowered


def _short(exc: BaseException) -> str:
    """An error's message without the host prefix the control layer adds."""
    return str(exc).split(": ", 1)[-1] if isinstance(exc, HostCallError) else str(exc)
