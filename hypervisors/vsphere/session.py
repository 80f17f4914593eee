"""A backup session on a vSphere VM: a snapshot that freezes its disks, read over HTTP.

Opening the session removes backup snapshots an interrupted run left behind, enables
changed block tracking where it is off (and says so), and takes the backup snapshot
(quiesced if the guest allows, else crash-consistent, and says so). Disks, their changeIds
and their files are read from the *snapshot's* configuration, whose disks are frozen.
``close`` removes the snapshot, whatever happened; a snapshot that cannot be removed is
reported and removed by the next run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyVmomi import vim, vmodl

from ..base import BackupSession, Changes, DiskInfo, Extent, FullRead
from .cbt import ALL_IN_USE, changed_extents
from .connection import VSphereConnection
from .exceptions import SnapshotError, TaskFailed, UnsupportedDisk, VSphereError
from .hardware import describe
from .inventory import find_vm, snapshot_names
from .tasks import fault_message, wait_for_task
from .transport import DatastoreFile, DiskTransport, HttpFlatTransport

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX = "vmkeep-backup"
READ_SIZE = 4 * 1024 * 1024
"""Bytes per Range GET of a backup: each request costs a round trip and per-request work on both
ends; 4 MiB halves the CPU the simulator and vmkeep spend per MiB against 1 MiB requests."""


class VSphereSession(BackupSession):
    read_size = READ_SIZE

    def __init__(
        self,
        conn: VSphereConnection,
        vm_name: str,
        transport: DiskTransport | None = None,
        quiesce: bool = True,
    ) -> None:
        super().__init__()
        self.conn = conn
        self.vm_name = vm_name
        self.transport = transport or HttpFlatTransport(conn)
        self.snapshot: Any = None
        self.snapshot_name = ""
        summary = find_vm(conn, vm_name)
        self.vm = summary.vm
        self.moref = summary.moref
        self.instance_uuid = summary.instance_uuid
        if summary.template:
            raise VSphereError(f"{vm_name} is a template; vmkeep backs up VMs")
        self._remove_leftovers()
        others = [n for n, _ in snapshot_names(self._snapshot_tree())]
        if others:
            raise UnsupportedDisk(
                f"{vm_name} has {len(others)} snapshot(s) ({', '.join(others)}): its disks are delta files, which "
                "the HTTP transport cannot read; delete or consolidate the snapshots first"
            )
        self.cbt_usable, self._cbt_reason = self._prepare_cbt(summary.cbt_supported, summary.cbt_enabled)
        try:
            self.snapshot, self.snapshot_name = self._take_snapshot(quiesce and summary.power_state == "poweredOn")
            self._disks, self._files = self._read_disks()
            self._hardware = describe(self.snapshot.config, self._network_names())
        except BaseException:
            self.close(committed=False)
            raise

    # -- BackupSession ----------------------------------------------------------------------

    def disks(self) -> list[DiskInfo]:
        return list(self._disks)

    def changes_since(self, disk: DiskInfo, token: str | None) -> Changes | FullRead:
        if not self.cbt_usable:
            return FullRead(self._cbt_reason)
        if not token:
            return FullRead("the previous recovery point holds no change id for this disk")
        return changed_extents(self.vm, self.snapshot, int(disk.key), disk.capacity, token)

    def allocated(self, disk: DiskInfo) -> list[Extent] | None:
        if not self.cbt_usable:
            return None
        answer = changed_extents(self.vm, self.snapshot, int(disk.key), disk.capacity, ALL_IN_USE)
        if isinstance(answer, FullRead):
            log.info("%s disk %s: no allocation map (%s); reading every block", self.vm_name, disk.key, answer.reason)
            return None
        return answer.extents

    def read(self, disk: DiskInfo, offset: int, length: int) -> bytes:
        return self.transport.read(self._files[disk.key], offset, length)

    def hardware(self) -> dict[str, Any]:
        return self._hardware

    def source_info(self) -> dict[str, Any]:
        return {
            "type": "vsphere",
            "server": self.conn.host,
            "vm_moref": self.moref,
            "instance_uuid": self.instance_uuid,
            "chain": self.instance_uuid,
            "snapshot": self.snapshot_name,
        }

    def close(self, committed: bool) -> None:
        """Remove the snapshot, committed or not: vSphere's changeIds need no step after the commit."""
        snapshot, self.snapshot = self.snapshot, None
        if snapshot is None:
            return
        problem = None
        try:
            wait_for_task(snapshot.RemoveSnapshot_Task(removeChildren=False), f"removing snapshot {self.snapshot_name}")
            log.info("%s: removed snapshot %s", self.vm_name, self.snapshot_name)
        except vmodl.fault.ManagedObjectNotFound:
            self._disappeared()
        except TaskFailed as exc:
            if isinstance(exc.fault, vmodl.fault.ManagedObjectNotFound):
                self._disappeared()
            else:
                problem = f"could not remove snapshot {self.snapshot_name} of {self.vm_name}: {exc}"
        except Exception as exc:
            problem = f"could not remove snapshot {self.snapshot_name} of {self.vm_name}: {exc}"
        if problem:
            self.close_warnings.append(problem)
            log.error("%s; the next backup of this VM removes it", problem)

    def _disappeared(self) -> None:
        log.warning("%s: the VM or its snapshot %s disappeared during the backup", self.vm_name, self.snapshot_name)

    # -- opening ----------------------------------------------------------------------------

    def _snapshot_tree(self) -> Any:
        snapshot = self.vm.snapshot
        return snapshot.rootSnapshotList if snapshot else None

    def _remove_leftovers(self) -> None:
        for name, snap in snapshot_names(self._snapshot_tree()):
            if name.startswith(SNAPSHOT_PREFIX):
                message = f"removing snapshot {name!r} left by an interrupted backup"
                log.warning("%s: %s", self.vm_name, message)
                self.warnings.append(message)
                try:
                    wait_for_task(snap.RemoveSnapshot_Task(removeChildren=False), f"removing snapshot {name}")
                except VSphereError as exc:
                    raise SnapshotError(
                        f"{self.vm_name}: cannot remove the leftover snapshot {name!r}: {exc}"
                    ) from None

    def _prepare_cbt(self, supported: bool, enabled: bool) -> tuple[bool, str]:
        """Whether changeIds of this session can be trusted, and if not, why."""
        if not supported:
            return False, "the VM does not support change tracking (virtual hardware older than version 7)"
        if enabled:
            return True, ""
        spec = vim.vm.ConfigSpec(changeTrackingEnabled=True)
        try:
            wait_for_task(self.vm.ReconfigVM_Task(spec=spec), f"enabling change tracking on {self.vm_name}")
        except VSphereError as exc:
            message = f"change tracking is off and could not be enabled ({exc})"
            log.warning("%s: %s", self.vm_name, message)
            self.warnings.append(message)
            return False, message
        message = "change tracking was off; vmkeep enabled it, and it takes effect with this backup's snapshot"
        log.warning("%s: %s", self.vm_name, message)
        self.warnings.append(message)
        return False, "change tracking was just enabled: this backup reads every disk in full"

    def _take_snapshot(self, quiesce: bool) -> tuple[Any, str]:
        name = f"{SNAPSHOT_PREFIX}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        description = "Taken by vmkeep for a backup; removed when the backup ends."
        attempts = [True, False] if quiesce else [False]
        for q in attempts:
            try:
                task = self.vm.CreateSnapshot_Task(name=name, description=description, memory=False, quiesce=q)
                return wait_for_task(task, f"snapshot of {self.vm_name}"), name
            except VSphereError as exc:
                if q:
                    message = f"a quiesced snapshot failed ({exc}); took a crash-consistent one instead"
                    log.warning("%s: %s", self.vm_name, message)
                    self.warnings.append(message)
                    continue
                raise SnapshotError(f"{self.vm_name}: {exc}") from None
            except vmodl.MethodFault as exc:
                raise SnapshotError(f"{self.vm_name}: snapshot failed: {fault_message(exc)}") from None
        raise AssertionError("unreachable")

    def _read_disks(self) -> tuple[list[DiskInfo], dict[str, DatastoreFile]]:
        datacenter = self._datacenter_path()
        disks: list[DiskInfo] = []
        files: dict[str, DatastoreFile] = {}
        for dev in self.snapshot.config.hardware.device:
            if not isinstance(dev, vim.vm.device.VirtualDisk):
                continue
            backing = dev.backing
            label = dev.deviceInfo.label if dev.deviceInfo else str(dev.key)
            if not isinstance(backing, vim.vm.device.VirtualDisk.FlatVer2BackingInfo):
                raise UnsupportedDisk(
                    f"{self.vm_name} {label}: {type(backing).__name__.rsplit('.', 1)[-1]} disks are not supported "
                    "by the HTTP transport (flat VMDKs only)"
                )
            if backing.parent is not None:
                raise UnsupportedDisk(f"{self.vm_name} {label}: the snapshot's disk is a delta, not a flat base disk")
            key = str(dev.key)
            files[key] = DatastoreFile.flat_of(backing.fileName, datacenter)
            disks.append(
                DiskInfo(
                    key=key,
                    capacity=int(dev.capacityInBytes or dev.capacityInKB * 1024),
                    label=label,
                    change_token=backing.changeId or None,
                    identity={"uuid": backing.uuid or "", "file": backing.fileName},
                )
            )
        return disks, files

    def _datacenter_path(self) -> str:
        obj = self.vm.parent
        while obj is not None and not isinstance(obj, vim.Datacenter):
            obj = obj.parent
        if obj is None:
            raise VSphereError(f"{self.vm_name} is in no datacenter")
        parts = [obj.name]
        folder = obj.parent
        while isinstance(folder, vim.Folder) and folder.parent is not None:  # nested datacenter folders
            parts.append(folder.name)
            folder = folder.parent
        return "/".join(reversed(parts))

    def _network_names(self) -> dict[str, str]:
        names = {}
        for net in self.vm.network or []:
            if isinstance(net, vim.dvs.DistributedVirtualPortgroup):
                names[net.key] = net.name
        return names
