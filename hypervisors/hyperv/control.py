"""The agent's side of the templates: typed calls on a Hyper-V host, over any script runner.

A runner sends one script and returns its stdout (the WinRM client in production; the
simulated host's handler directly in unit tests). Every call renders a template with its
parameters as data, and turns the template's JSON answer into records or a
:class:`HostCallError` that carries the host's error code.
"""

from __future__ import annotations

import base64
import binascii
import threading
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Protocol

from ..base import Extent
from .exceptions import HostCallError, HypervVMNotFound, TemplateError
from .templates import Template, decode_answer, render


class ScriptRunner(Protocol):
    def run(self, script: str, stdin: bytes | None = None, *, idempotent: bool = False) -> bytes:
        """Run ``script`` in PowerShell on the host and return its stdout (``idempotent``: may be retried)."""


# Templates that may run twice without harm: the client may retry them after a lost connection.
IDEMPOTENT = frozenset(
    {
        Template.LIST_VMS,
        Template.CHECKPOINT_DISKS,
        Template.GET_CHANGES,
        Template.READ_DISK,
        Template.DESTROY_REFERENCE_POINT,
        Template.REMOVE_CHECKPOINT,
        Template.REMOVE_VM,
        Template.START_VM,  # starts only a VM that is not running
    }
)


class Consistency(IntEnum):
    """``Msvm_VirtualSystemSnapshotSettingData.ConsistencyLevel``."""

    APPLICATION = 1  # VSS in the guest (integration services); falls back to crash-consistent
    CRASH = 2


@dataclass(frozen=True)
class HostDisk:
    controller: str  # SCSI or IDE
    controller_number: int
    location: int
    path: str  # Windows path of the VHDX the VM uses now
    capacity: int
    vdisk_id: str
    format: str = "VHDX"

    @property
    def key(self) -> str:
        """Stable within the VM: where the disk is attached, e.g. ``scsi0-1``."""
        return f"{self.controller.lower()}{self.controller_number}-{self.location}"

    @property
    def label(self) -> str:
        return f"{self.controller} {self.controller_number}:{self.location}"


@dataclass(frozen=True)
class HostVm:
    name: str
    id: str
    state: str
    generation: int
    version: str
    cpu: int
    memory_mb: int
    disks: list[HostDisk] = field(default_factory=list)
    nics: list[dict[str, str]] = field(default_factory=list)  # name, switch
    checkpoints: list[dict[str, str]] = field(default_factory=list)  # id, name, type

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "state": self.state,
            "generation": self.generation,
            "version": self.version,
            "cpu": self.cpu,
            "memory_mb": self.memory_mb,
            "disks": [vars(d) | {"key": d.key} for d in self.disks],
            "nics": self.nics,
            "checkpoints": self.checkpoints,
        }


@dataclass(frozen=True)
class Inventory:
    host: str
    vhd_path: str  # the host's default folder for virtual hard disks
    vms: list[HostVm]


@dataclass(frozen=True)
class CheckpointTaken:
    snapshot: str  # InstanceID of the recovery checkpoint's Msvm_VirtualSystemSettingData
    name: str
    removed: list[str]  # leftover recovery checkpoints removed first


@dataclass(frozen=True)
class FrozenDisk:
    path: str  # the parent VHDX the checkpoint froze
    capacity: int
    vdisk_id: str


@dataclass(frozen=True)
class ChangesPage:
    processed: int
    extents: list[Extent]


@dataclass(frozen=True)
class ReferencePoint:
    id: str
    rct_ids: dict[str, str]  # virtual disk identifier -> RCT id


class HostControl:
    """Typed template calls; one at a time (the WinRM client is one session, not thread-safe)."""

    def __init__(self, runner: ScriptRunner, host: str) -> None:
        self.runner = runner
        self.host = host
        self._lock = threading.Lock()

    def call(self, template: Template, **params: Any) -> dict[str, Any]:
        script = render(template, params)
        with self._lock:
            stdout = self.runner.run(script, idempotent=template in IDEMPOTENT)
        answer: dict[str, Any] = decode_answer(template, stdout)
        if "error" in answer:
            code = answer.get("code")
            state = answer.get("state")
            raise HostCallError(
                f"{self.host}: {answer['error']}",
                int(code) if isinstance(code, int) else None,
                int(state) if isinstance(state, int) else None,
            )
        return answer

    def inventory(self, vm: str | None = None) -> Inventory:
        answer = self.call(Template.LIST_VMS, vm=vm or "")
        try:
            vms = [
                HostVm(
                    name=str(v["name"]),
                    id=str(v["id"]),
                    state=str(v["state"]),
                    generation=int(v["generation"]),
                    version=str(v.get("version", "")),
                    cpu=int(v["cpu"]),
                    memory_mb=int(v["memory_mb"]),
                    disks=[HostDisk(**{k: d[k] for k in HostDisk.__dataclass_fields__ if k in d}) for d in v["disks"]],
                    nics=[{"name": str(n["name"]), "switch": str(n.get("switch") or "")} for n in v["nics"]],
                    checkpoints=[{k: str(c[k]) for k in ("id", "name", "type")} for c in v["checkpoints"]],
                )
                for v in answer["vms"]
            ]
            return Inventory(str(answer.get("host") or self.host), str(answer.get("vhd_path") or ""), vms)
        except (KeyError, TypeError, ValueError) as exc:
            raise TemplateError(f"{self.host}: a malformed VM list ({exc!r})") from None

    def vm(self, name: str) -> HostVm:
        found = [v for v in self.inventory(name).vms if v.name == name]
        if not found:
            raise HypervVMNotFound(f"no VM named {name!r} on {self.host}")
        if len(found) > 1:
            raise HypervVMNotFound(f"{len(found)} VMs are named {name!r} on {self.host}; vmkeep needs one")
        return found[0]

    def begin_backup(self, vm: str, consistency: Consistency) -> CheckpointTaken:
        a = self.call(Template.BEGIN_BACKUP, vm=vm, consistency=int(consistency))
        return CheckpointTaken(str(a["snapshot"]), str(a.get("name", "")), [str(n) for n in a.get("removed", [])])

    def checkpoint_disks(self, snapshot: str) -> list[FrozenDisk]:
        a = self.call(Template.CHECKPOINT_DISKS, snapshot=snapshot)
        return [FrozenDisk(str(d["path"]), int(d["capacity"]), str(d["vdisk_id"])) for d in a["disks"]]

    def changes(self, snapshot: str, path: str, limit_id: str, offset: int, length: int) -> ChangesPage:
        a = self.call(
            Template.GET_CHANGES, snapshot=snapshot, path=path, limit_id=limit_id, offset=offset, length=length
        )
        offsets, lengths = list(a.get("offsets") or []), list(a.get("lengths") or [])
        if len(offsets) != len(lengths):
            raise TemplateError(
                f"{self.host}: GetVirtualDiskChanges answered {len(offsets)} offsets, {len(lengths)} lengths"
            )
        return ChangesPage(int(a["processed"]), [Extent(int(o), int(n)) for o, n in zip(offsets, lengths, strict=True)])

    def read_disk(self, path: str, offset: int, length: int) -> bytes:
        a = self.call(Template.READ_DISK, path=path, offset=offset, length=length)
        try:
            data = base64.b64decode(str(a["data"]), validate=True)
        except (KeyError, binascii.Error):
            raise TemplateError(f"{self.host}: read-disk answered no base64 data") from None
        if len(data) != int(a.get("length", -1)):
            raise TemplateError(f"{self.host}: read-disk answered {len(data)} bytes but said {a.get('length')}")
        return data

    def convert_checkpoint(self, snapshot: str) -> ReferencePoint:
        a = self.call(Template.CONVERT_CHECKPOINT, snapshot=snapshot)
        vdisks, rcts = list(a.get("vdisk_ids") or []), list(a.get("rct_ids") or [])
        if len(vdisks) != len(rcts):
            raise TemplateError(f"{self.host}: the reference point lists {len(vdisks)} disks but {len(rcts)} RCT ids")
        return ReferencePoint(
            str(a["reference_point"]), {str(v).upper(): str(r) for v, r in zip(vdisks, rcts, strict=True)}
        )

    def destroy_reference_point(self, reference_point: str) -> bool:
        """Destroy it; False if it was gone already."""
        return not self.call(Template.DESTROY_REFERENCE_POINT, reference_point=reference_point).get("gone")

    def remove_checkpoint(self, snapshot: str) -> bool:
        """Remove (merge) the recovery checkpoint; False if it was gone already."""
        return not self.call(Template.REMOVE_CHECKPOINT, snapshot=snapshot).get("gone")

    def create_vm(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.call(Template.CREATE_VM, **params)
