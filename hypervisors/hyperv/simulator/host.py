"""The simulated Hyper-V host: VMs with real VHDX disks, RCT, recovery checkpoints, reference points.

It answers the agent's PowerShell templates as a Windows host would, without PowerShell:
:meth:`SimHost.handle` reads a script's header (``# vmkeep-template: NAME/VERSION``), puts the
placeholder back in place of its one base64 JSON literal, and checks the text against the
SHA-256 pinned *literally* below for that name and version. A template edited without a new
version is refused, like an unknown one. The parameters are then decoded as data and the
template's WMI calls are carried out on the model, answering the JSON the template would
print.

The model:

- a VM's disks are real VHDX files under the storage directory (the host's ``C:`` drive,
  shared over SMB as ``C$`` by the Samba fixture); guest writes go through ``qemu-io``;
- each disk has an :class:`~.rct.RctTracker`;
- a recovery checkpoint freezes the parent VHDX: from then on guest writes go to a full copy
  next to it (``NAME.avhdx``; qemu cannot make differencing VHDX), which replaces the parent
  when the checkpoint is converted or destroyed (the merge);
- converting a checkpoint makes a reference point holding each disk's RCT id; changes since
  an id are answered only while a reference point of the VM holds that id.

Faults are injected through the test API (documented in docs/HYPERV.md): refused or reset
RCT ids, disabled tracking, disks added or replaced, leftover checkpoints, failed jobs, partial
``ProcessedByteLength``, ranges coarser than the writes, and hooks that run after a template
(to write as the guest between two calls).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PureWindowsPath
from typing import Any

from .. import qemu
from .rct import RctRefused, RctTracker
from .wsman import CommandResult

# SHA-256 of each template's text (placeholder in place), per name and version. Written here
# literally, never computed from the agent's files: an edited template must get a new version.
PINNED: dict[tuple[str, int], str] = {
    ("list-vms", 1): "41016fa6f0015a6168a9e3cf6ee2f63815a7e2425370aff08f35f6c5477db3e9",
    ("begin-backup", 1): "d935278c8ad8d7ece8045179aafddad7611243fc40555fc72589e3f0799f9e13",
    ("checkpoint-disks", 1): "2bf54077f1d7e8111e2be6a116cfe2ab499a2d13d4410ce36c7d3f61e418f4f6",
    ("get-changes", 1): "b4cbdfc9873c693f7348ce12118ab7bfb9effff477921f708dccb4d939a3aea4",
    ("read-disk", 1): "8c4dedd14851bb2d57c81fe4f205106e0aed65cb917d95592e330c61d4d422b5",
    ("convert-checkpoint", 1): "8ccb3fd652d28a6951851acb83877c0fed26d49e201a82e3b1fad5f7b0e03368",
    ("destroy-reference-point", 1): "2db3aeff1e80d965fd751feb5cf66d061d1b55c27521db84937ae986257e0556",
    ("remove-checkpoint", 1): "f578b527430b9c39ba94f6533556dc044cfcd359db6b37255799093a8ec6f06f",
    ("attach-disk", 1): "951bf404b9280fb5806b127b5e562125bfadf43d8d9b1efc51e29a28363d2fb2",
    ("remove-vm", 1): "ef726f4db06e752e28d531155bea1cd0ef04d025142ba005df62a25c5b7b0b42",
    ("create-vm", 1): "7d5aeca84e41a5ce243b695f04162c9c1afb72021b89f4500cb447d4237afc62",
    ("start-vm", 1): "47d7b8d932903652b105640b417ddd7c0a2ccfa9a58d649e04aa8d5aac772fe5",
}

PARAMS_LITERAL = re.compile(r"FromBase64String\('([A-Za-z0-9+/=]*)'\)")
PLACEHOLDER = "FromBase64String('{{PARAMS}}')"
DRIVE = "C:"
VM_ROOT = r"C:\Hyper-V"
RECOVERY = "Recovery"
STANDARD = "Standard"
JOB_COMPLETED = 7
JOB_EXCEPTION = 10
ERROR_PRIVILEGE_NOT_HELD = 0x8007052F  # "a required privilege is not held by the client" (KB 2779204)


class WmiMethod(StrEnum):
    """WMI methods whose next call a test can make fail (:meth:`SimHost.fail_next`)."""

    CREATE_SNAPSHOT = "CreateSnapshot"
    DESTROY_SNAPSHOT = "DestroySnapshot"
    GET_VIRTUAL_DISK_CHANGES = "GetVirtualDiskChanges"
    CONVERT_TO_REFERENCE_POINT = "ConvertToReferencePoint"
    DESTROY_REFERENCE_POINT = "DestroyReferencePoint"
    DEFINE_SYSTEM = "DefineSystem"  # New-VM
    ADD_DISK = "AddResourceSettings"  # Add-VMHardDiskDrive
    REQUEST_STATE_CHANGE = "RequestStateChange"  # Start-VM


class SimFault(Exception):
    """A WMI call failed: the template answers ``{"error": message, "code": code, "state": state}``."""

    def __init__(self, message: str, code: int, state: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.state = state


@dataclass
class SimDisk:
    controller: str  # SCSI or IDE
    controller_number: int
    location: int
    path: str  # the VHDX (Windows path)
    capacity: int
    vdisk_id: str
    rct: RctTracker = field(default_factory=RctTracker)
    child: str | None = None  # the AVHDX the guest writes to while a checkpoint holds the parent


@dataclass
class SimCheckpoint:
    instance_id: str
    name: str
    type: str  # Recovery or Standard
    frozen: dict[str, int]  # vdisk_id -> RCT sequence frozen
    paths: dict[str, str]  # vdisk_id -> the frozen VHDX (Windows path)


@dataclass
class SimReferencePoint:
    instance_id: str
    rct_ids: dict[str, str]  # vdisk_id -> RCT id


@dataclass
class SimVm:
    name: str
    id: str
    generation: int = 2
    cpu: int = 2
    memory_mb: int = 1024
    version: str = "9.0"
    state: str = "Running"
    disks: list[SimDisk] = field(default_factory=list)
    nics: list[dict[str, str]] = field(default_factory=list)  # name, switch
    checkpoints: list[SimCheckpoint] = field(default_factory=list)
    reference_points: list[SimReferencePoint] = field(default_factory=list)


@dataclass
class CallRecord:
    template: str
    version: int
    params: dict[str, Any]
    answer: dict[str, Any]


class SimHost:
    """A Hyper-V host in a directory. ``handle`` is the WinRM server's command handler."""

    def __init__(self, storage: Path, name: str = "HV01", switches: tuple[str, ...] = ("External", "Internal")) -> None:
        self.storage = storage
        self.name = name
        self.switches = list(switches)
        self.vms: dict[str, SimVm] = {}
        self.calls: list[CallRecord] = []
        self._lock = threading.RLock()
        self._failures: dict[WmiMethod, list[SimFault]] = {}
        self._hooks: dict[str, list[Callable[[SimHost], None]]] = {}
        self.max_processed: int | None = None  # GetVirtualDiskChanges covers at most this many bytes per call
        self.range_granularity: int | None = None  # changed ranges widened to this grid
        storage.mkdir(parents=True, exist_ok=True)

    # -- paths ------------------------------------------------------------------------------

    def local_path(self, windows_path: str) -> Path:
        """The file under the storage directory behind a ``C:\\...`` path of the host."""
        p = PureWindowsPath(windows_path)
        if p.drive.upper() != DRIVE or not p.root:
            raise SimFault(f"the system cannot find the path specified: {windows_path}", 0x80070003)
        parts = p.parts[1:]
        if any(part in ("..", ".") for part in parts):
            raise SimFault(f"the path is not valid: {windows_path}", 0x800700A1)
        return self.storage.joinpath(*parts)

    # -- the test API: VMs and the guest ----------------------------------------------------

    def create_vm(
        self,
        name: str,
        disk_sizes: tuple[int, ...] = (64 * 1024 * 1024,),
        *,
        generation: int = 2,
        cpu: int = 2,
        memory_mb: int = 1024,
        switches: tuple[str, ...] = ("External",),
    ) -> SimVm:
        """A running VM with empty dynamic VHDX disks on SCSI 0 (generation 2) or IDE 0 (generation 1)."""
        with self._lock:
            if name in self.vms:
                raise ValueError(f"a VM named {name!r} exists already")
            vm = SimVm(name, str(uuid.uuid4()), generation, cpu, memory_mb)
            vm.nics = [{"name": "Network Adapter", "switch": s} for s in switches]
            self.vms[name] = vm
            for size in disk_sizes:
                self.add_disk(name, size)
            return vm

    def add_disk(self, vm_name: str, size: int) -> SimDisk:
        """Attach a new empty disk at the next free location (a 'disk added' change)."""
        with self._lock:
            vm = self.vms[vm_name]
            controller = "SCSI" if vm.generation == 2 else "IDE"
            location = max((d.location for d in vm.disks), default=-1) + 1
            path = f"{VM_ROOT}\\{vm.name}\\disk{len(vm.disks)}-{uuid.uuid4().hex[:8]}.vhdx"
            qemu.create(self.local_path(path), size)
            disk = SimDisk(controller, 0, location, path, size, str(uuid.uuid4()).upper())
            vm.disks.append(disk)
            return disk

    def replace_disk(self, vm_name: str, index: int = 0) -> SimDisk:
        """Swap disk ``index`` for a new VHDX with the same content and a new identity (a 'disk replaced')."""
        with self._lock:
            vm = self.vms[vm_name]
            old = vm.disks[index]
            path = f"{VM_ROOT}\\{vm.name}\\replaced{index}-{uuid.uuid4().hex[:8]}.vhdx"
            qemu.copy(self.local_path(old.child or old.path), self.local_path(path))
            new = SimDisk(
                old.controller, old.controller_number, old.location, path, old.capacity, str(uuid.uuid4()).upper()
            )
            vm.disks[index] = new
            return new

    def guest_write(self, vm_name: str, offset: int, data: bytes, disk: int = 0) -> None:
        """Write ``data`` at ``offset`` of the VM's disk as its guest would (into the AVHDX during a checkpoint)."""
        with self._lock:
            d = self.vms[vm_name].disks[disk]
            if offset < 0 or offset + len(data) > d.capacity:
                raise ValueError("a guest write beyond the disk")
            qemu.write(self.local_path(d.child or d.path), offset, data)
            d.rct.record(offset, len(data))

    def load_raw(self, vm_name: str, raw: Path, disk: int = 0) -> None:
        """Fill a disk from a raw image of its size (made into VHDX by qemu-img), as one big guest write."""
        with self._lock:
            d = self.vms[vm_name].disks[disk]
            if raw.stat().st_size != d.capacity or d.child is not None:
                raise ValueError("the raw image must be the disk's size, and the disk free of checkpoints")
            qemu.from_raw(raw, self.local_path(d.path))
            d.rct.record(0, d.capacity)

    def guest_view(self, vm_name: str, disk: int = 0) -> bytes:
        """The disk as the guest sees it now."""
        with self._lock:
            d = self.vms[vm_name].disks[disk]
            return qemu.read_all(self.local_path(d.child or d.path))

    def disk_file(self, vm_name: str, disk: int = 0) -> Path:
        """The disk's base VHDX (frozen while a checkpoint exists)."""
        return self.local_path(self.vms[vm_name].disks[disk].path)

    def checkpoints(self, vm_name: str) -> list[SimCheckpoint]:
        return list(self.vms[vm_name].checkpoints)

    def reference_points(self, vm_name: str) -> list[SimReferencePoint]:
        return list(self.vms[vm_name].reference_points)

    def calls_of(self, template: str) -> list[CallRecord]:
        return [c for c in self.calls if c.template == template]

    # -- the test API: faults ---------------------------------------------------------------

    def reset_tracking(self, vm_name: str, disk: int = 0) -> None:
        """Tracking data lost (a new epoch): every earlier RCT id of the disk is refused."""
        with self._lock:
            self.vms[vm_name].disks[disk].rct.reset()

    def set_tracking(self, vm_name: str, enabled: bool, disk: int = 0) -> None:
        """Disable (or enable again) change tracking of a disk: queries fail with ..._DISABLED."""
        with self._lock:
            rct = self.vms[vm_name].disks[disk].rct
            if enabled and not rct.enabled:
                rct.reset()  # what was written meanwhile was not tracked
            rct.enabled = enabled

    def leave_checkpoint(self, vm_name: str, kind: str = RECOVERY, name: str | None = None) -> SimCheckpoint:
        """A checkpoint as an interrupted backup (Recovery) or an administrator (Standard) leaves one."""
        with self._lock:
            return self._create_checkpoint(self.vms[vm_name], kind, name)

    def fail_next(
        self,
        method: WmiMethod,
        message: str = "the operation failed",
        code: int = 32768,
        state: int = JOB_EXCEPTION,
    ) -> None:
        """The next call of ``method`` fails with a job in ``state`` (10: exception) and ``code``."""
        with self._lock:
            self._failures.setdefault(method, []).append(SimFault(message, code, state))

    def after(self, template: str, hook: Callable[[SimHost], None]) -> None:
        """Run ``hook(host)`` once, right after the next answer to ``template`` (e.g. guest writes)."""
        with self._lock:
            self._hooks.setdefault(template, []).append(hook)

    # -- the WinRM handler ------------------------------------------------------------------

    def handle(self, script: str, stdin: bytes = b"") -> CommandResult:
        """Run one script sent by the agent: a pinned template, or a refusal on stderr."""
        try:
            name, version, params = recognise(script)
        except SimFault as exc:
            return CommandResult(b"", f"{exc}\r\n".encode(), 1)
        method = getattr(self, f"_t_{name.replace('-', '_')}_v{version}")
        with self._lock:
            try:
                answer: dict[str, Any] = method(params)
            except SimFault as exc:
                answer = {"error": str(exc), "code": exc.code}
                if exc.state is not None:
                    answer["state"] = exc.state
            self.calls.append(CallRecord(name, version, params, answer))
            hooks = self._hooks.pop(name, [])
        for hook in hooks:
            hook(self)
        return CommandResult(json.dumps(answer, separators=(",", ":")).encode(), b"", 0)

    # -- templates --------------------------------------------------------------------------

    def _t_list_vms_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        vms = []
        for vm in self.vms.values():
            if p.get("vm") and vm.name != p["vm"]:
                continue
            vms.append(
                {
                    "name": vm.name,
                    "id": vm.id,
                    "state": vm.state,
                    "generation": vm.generation,
                    "version": vm.version,
                    "cpu": vm.cpu,
                    "memory_mb": vm.memory_mb,
                    "disks": [self._describe_disk(d, d.child or d.path) for d in vm.disks],
                    "nics": [dict(n) for n in vm.nics],
                    "checkpoints": [
                        {"id": c.instance_id.split(":", 1)[-1], "name": c.name, "type": c.type} for c in vm.checkpoints
                    ],
                }
            )
        return {"host": self.name, "vhd_path": f"{VM_ROOT}\\Virtual Hard Disks", "vms": vms}

    def _t_begin_backup_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        vm = self._find_vm(str(p["vm"]))
        removed = []
        for cp in list(vm.checkpoints):
            if cp.type != RECOVERY:
                raise SimFault(f"{vm.name} has a checkpoint of its own ({cp.name})", 3)
            self._fail_if_asked(WmiMethod.DESTROY_SNAPSHOT)
            self._destroy_checkpoint(vm, cp)
            removed.append(cp.name)
        if p.get("consistency") not in (1, 2):
            raise SimFault("SnapshotSettings: ConsistencyLevel must be 1 or 2", 0x80041008)
        self._fail_if_asked(WmiMethod.CREATE_SNAPSHOT)
        cp = self._create_checkpoint(vm, RECOVERY, None)
        return {"snapshot": cp.instance_id, "name": cp.name, "removed": removed}

    def _t_checkpoint_disks_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        vm, cp = self._find_checkpoint(str(p["snapshot"]))
        disks = [self._describe_disk(d, cp.paths[d.vdisk_id]) for d in vm.disks if d.vdisk_id in cp.paths]
        return {"disks": [{k: d[k] for k in ("path", "capacity", "vdisk_id")} for d in disks]}

    def _t_get_changes_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        vm, cp = self._find_checkpoint(str(p["snapshot"]))
        path = str(p["path"])
        disk = next((d for d in vm.disks if cp.paths.get(d.vdisk_id, "").lower() == path.lower()), None)
        if disk is None:
            raise SimFault(f"{path} is not a disk of the checkpoint", 0x80070002)
        offset, length = int(p["offset"]), int(p["length"])
        if offset < 0 or length < 0 or offset + length > disk.capacity:
            raise SimFault("ByteOffset and ByteLength exceed the virtual disk", 0x80070057)
        self._fail_if_asked(WmiMethod.GET_VIRTUAL_DISK_CHANGES)
        limit_id = str(p["limit_id"])
        try:
            since = disk.rct.parse(limit_id)
        except RctRefused as exc:
            raise SimFault(f"GetVirtualDiskChanges failed: {exc}", exc.code, JOB_EXCEPTION) from None
        if not any(rp.rct_ids.get(disk.vdisk_id) == limit_id for rp in vm.reference_points):
            raise SimFault(
                "GetVirtualDiskChanges failed: no reference point holds this change tracking identifier",
                0xC03A0029,
                JOB_EXCEPTION,
            )
        processed = length if self.max_processed is None else min(length, self.max_processed)
        end = offset + processed
        offsets: list[int] = []
        lengths: list[int] = []
        for written, count in disk.rct.changes(since, cp.frozen[disk.vdisk_id]):
            start, stop = written, written + count
            if self.range_granularity:
                g = self.range_granularity
                start, stop = start // g * g, min(disk.capacity, -(-stop // g) * g)
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                if offsets and lo <= offsets[-1] + lengths[-1]:
                    lengths[-1] = max(offsets[-1] + lengths[-1], hi) - offsets[-1]
                else:
                    offsets.append(lo)
                    lengths.append(hi - lo)
        return {"processed": processed, "offsets": offsets, "lengths": lengths}

    def _t_read_disk_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        from dissect.hypervisor.disk.vhdx import VHDX

        local = self.local_path(str(p["path"]))
        if not local.is_file():
            raise SimFault(f"the system cannot find the file specified: {p['path']}", 0x80070002)
        offset, length = int(p["offset"]), int(p["length"])
        with local.open("rb") as f:
            disk = VHDX(f)
            if offset < 0 or offset > disk.size:
                raise SimFault("the offset is beyond the disk", 0x80070057)
            data = bytes(disk.readoffset(offset, max(0, min(length, disk.size - offset))))
        return {"length": len(data), "data": base64.b64encode(data).decode("ascii")}

    def _t_convert_checkpoint_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        vm, cp = self._find_checkpoint(str(p["snapshot"]))
        if cp.type != RECOVERY:
            raise SimFault("only recovery checkpoints can be converted to reference points", 32773, JOB_EXCEPTION)
        self._fail_if_asked(WmiMethod.CONVERT_TO_REFERENCE_POINT)
        rp = SimReferencePoint(f"Microsoft:{uuid.uuid4()}", {})
        for d in vm.disks:
            if d.vdisk_id in cp.frozen and d.rct.enabled:
                rp.rct_ids[d.vdisk_id] = d.rct.id_of(cp.frozen[d.vdisk_id])
        self._merge(vm, cp)
        vm.reference_points.append(rp)
        return {
            "reference_point": rp.instance_id,
            "vdisk_ids": list(rp.rct_ids),
            "rct_ids": list(rp.rct_ids.values()),
        }

    def _t_destroy_reference_point_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        wanted = str(p["reference_point"])
        for vm in self.vms.values():
            for rp in vm.reference_points:
                if rp.instance_id == wanted:
                    self._fail_if_asked(WmiMethod.DESTROY_REFERENCE_POINT)
                    vm.reference_points.remove(rp)
                    return {"gone": False}
        return {"gone": True}

    def _t_remove_checkpoint_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        try:
            vm, cp = self._find_checkpoint(str(p["snapshot"]))
        except SimFault:
            return {"gone": True}
        self._fail_if_asked(WmiMethod.DESTROY_SNAPSHOT)
        self._destroy_checkpoint(vm, cp)
        return {"gone": False}

    def _t_create_vm_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        name = str(p["name"])
        if name in self.vms:
            raise SimFault(f"a VM named {name} exists already", 5)
        self._fail_if_asked(WmiMethod.DEFINE_SYSTEM)
        generation = int(p["generation"])
        if generation not in (1, 2):
            raise SimFault("Generation must be 1 or 2", 0x80070057)
        vm = SimVm(name, str(uuid.uuid4()), generation, int(p["cpu"]), int(p["memory_mb"]), state="Off")
        for nic in p.get("nics", []):
            if nic.get("switch") and nic["switch"] not in self.switches:
                raise SimFault(
                    f"creating {name} failed and it was removed: no virtual switch named {nic['switch']!r}", 6
                )
            vm.nics.append({"name": str(nic["name"]), "switch": str(nic.get("switch") or "")})
        self.vms[name] = vm
        return {"name": name, "id": vm.id}

    def _t_attach_disk_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        vm = next((v for v in self.vms.values() if v.id == str(p["vm_id"])), None)
        if vm is None:
            raise SimFault(f"no VM with id {p['vm_id']}", 0x80070490)
        self._fail_if_asked(WmiMethod.ADD_DISK)
        controller, number, location = str(p["controller"]), int(p["controller_number"]), int(p["location"])
        if vm.generation == 2 and controller != "SCSI":
            raise SimFault("generation 2 VMs have no IDE controller", 0x80070057)
        if any((d.controller, d.controller_number, d.location) == (controller, number, location) for d in vm.disks):
            raise SimFault(f"{controller} {number}:{location} is in use", 0x800700AA)
        path = str(p["path"])
        local = self.local_path(path)
        if not local.is_file():
            raise SimFault(f"the system cannot find the file specified: {path}", 0x80070002)
        vm.disks.append(SimDisk(controller, number, location, path, _vhdx_size(local), str(uuid.uuid4()).upper()))
        return {"attached": path}

    def _t_start_vm_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        vm = next((v for v in self.vms.values() if v.id == str(p["vm_id"])), None)
        if vm is None:
            raise SimFault(f"no VM with id {p['vm_id']}", 0x80070490)
        if vm.state != "Running":
            self._fail_if_asked(WmiMethod.REQUEST_STATE_CHANGE)
            vm.state = "Running"
        return {"state": vm.state}

    def _t_remove_vm_v1(self, p: dict[str, Any]) -> dict[str, Any]:
        vm = next((v for v in self.vms.values() if v.id == str(p["vm_id"])), None)
        if vm is None:
            return {"gone": True}
        del self.vms[vm.name]
        return {"gone": False}

    # -- the model --------------------------------------------------------------------------

    def _describe_disk(self, d: SimDisk, path: str) -> dict[str, Any]:
        return {
            "controller": d.controller,
            "controller_number": d.controller_number,
            "location": d.location,
            "path": path,
            "capacity": d.capacity,
            "vdisk_id": d.vdisk_id,
            "format": "VHDX",
        }

    def _find_vm(self, name: str) -> SimVm:
        vm = self.vms.get(name)
        if vm is None:
            raise SimFault(f"found 0 VMs named {name}", 2)
        return vm

    def _find_checkpoint(self, instance_id: str) -> tuple[SimVm, SimCheckpoint]:
        for vm in self.vms.values():
            for cp in vm.checkpoints:
                if cp.instance_id == instance_id:
                    return vm, cp
        raise SimFault(f"the recovery checkpoint {instance_id} is gone", 4)

    def _fail_if_asked(self, method: WmiMethod) -> None:
        queue = self._failures.get(method)
        if queue:
            fault = queue.pop(0)
            raise SimFault(f"{method.value} failed: {fault}", fault.code, fault.state)

    def _create_checkpoint(self, vm: SimVm, kind: str, name: str | None) -> SimCheckpoint:
        if any(d.child for d in vm.disks):
            raise SimFault(f"{vm.name} already has a checkpoint; the simulator holds one at a time", 32773)
        cp = SimCheckpoint(
            f"Microsoft:{str(uuid.uuid4()).upper()}",
            name or f"{vm.name} - Backup - {len(self.calls)}",
            kind,
            {},
            {},
        )
        for d in vm.disks:
            child = d.path[: -len(".vhdx")] + f"_{uuid.uuid4().hex[:8]}.avhdx"
            qemu.copy(self.local_path(d.path), self.local_path(child))
            d.child = child
            cp.frozen[d.vdisk_id] = d.rct.freeze()
            cp.paths[d.vdisk_id] = d.path
        vm.checkpoints.append(cp)
        return cp

    def _merge(self, vm: SimVm, cp: SimCheckpoint) -> None:
        """The AVHDX merges into its parent: the parent takes the child's content."""
        for d in vm.disks:
            if d.child is not None:
                self.local_path(d.child).replace(self.local_path(d.path))
                d.child = None
        vm.checkpoints.remove(cp)

    def _destroy_checkpoint(self, vm: SimVm, cp: SimCheckpoint) -> None:
        self._merge(vm, cp)


def recognise(script: str) -> tuple[str, int, dict[str, Any]]:
    """(name, version, params) of a pinned template; SimFault (as PowerShell's error text) otherwise."""
    first = script.split("\n", 1)[0].rstrip("\r")
    header = "# vmkeep-template: "
    if not first.startswith(header):
        raise SimFault("refused: not a vmkeep template (no '# vmkeep-template:' first line)", 1)
    name, _, ver = first[len(header) :].partition("/")
    if not ver.isdigit() or (name, int(ver)) not in PINNED:
        raise SimFault(f"refused: unknown template {first[len(header) :]!r}", 1)
    version = int(ver)
    literals = PARAMS_LITERAL.findall(script)
    if len(literals) != 1:
        raise SimFault(f"refused: template {name}/{version} must carry exactly one parameter literal", 1)
    text = PARAMS_LITERAL.sub(lambda m: PLACEHOLDER, script)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != PINNED[(name, version)]:
        raise SimFault(f"refused: template {name}/{version}: text does not match the pinned version ({digest})", 1)
    try:
        params = json.loads(base64.b64decode(literals[0], validate=True))
    except (binascii.Error, ValueError):
        raise SimFault(f"refused: template {name}/{version}: its parameters are not base64 JSON", 1) from None
    if not isinstance(params, dict):
        raise SimFault(f"refused: template {name}/{version}: its parameters are not a JSON object", 1)
    return name, version, params


def _vhdx_size(path: Path) -> int:
    from dissect.hypervisor.disk.vhdx import VHDX

    try:
        with path.open("rb") as f:
            return int(VHDX(f).size)
    except Exception as exc:
        raise SimFault(f"{path.name} is not a virtual hard disk: {exc}", 0xC03A0005) from None
