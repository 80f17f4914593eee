"""The VM inventory, fetched in one property-collector round trip (not one call per VM)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim, vmodl

from ..exceptions import VMNotFound
from .connection import VSphereConnection

PROPERTIES = [
    "name",
    "runtime.powerState",
    "config.template",
    "config.instanceUuid",
    "config.changeTrackingEnabled",
    "capability.changeTrackingSupported",
    "config.hardware.device",
    "snapshot",
]


@dataclass(frozen=True)
class DiskSummary:
    key: str  # the device key, as a string like the key of a point's disk record
    label: str
    capacity: int
    file: str


@dataclass(frozen=True)
class VmSummary:
    name: str
    moref: str
    power_state: str
    template: bool
    instance_uuid: str
    cbt_enabled: bool
    cbt_supported: bool
    snapshots: list[str]
    disks: list[DiskSummary] = field(default_factory=list)
    vm: Any = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "moref": self.moref,
            "power_state": self.power_state,
            "template": self.template,
            "instance_uuid": self.instance_uuid,
            "cbt_enabled": self.cbt_enabled,
            "cbt_supported": self.cbt_supported,
            "snapshots": self.snapshots,
            "disks": [vars(d) for d in self.disks],
        }


def list_vms(conn: VSphereConnection) -> list[VmSummary]:
    """Every VM (and template) the user can see, sorted by name."""
    content = conn.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        return sorted((_summary(obj) for obj in _retrieve(content.propertyCollector, view)), key=lambda v: v.name)
    finally:
        view.DestroyView()


def find_vm(conn: VSphereConnection, name: str) -> VmSummary:
    matches = [v for v in list_vms(conn) if v.name == name]
    if not matches:
        raise VMNotFound(f"no VM named {name!r} on {conn.host}")
    if len(matches) > 1:
        raise VMNotFound(f"{len(matches)} VMs are named {name!r} on {conn.host}; vmkeep needs a unique name")
    return matches[0]


def snapshot_names(tree: Any) -> Iterator[tuple[str, Any]]:
    """(name, snapshot object) of every snapshot in a VM's snapshot tree, depth first."""
    stack = list(tree or [])
    while stack:
        node = stack.pop()
        yield node.name, node.snapshot
        stack.extend(node.childSnapshotList or [])


def _retrieve(collector: Any, view: Any) -> Iterator[Any]:
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[
            vmodl.query.PropertyCollector.ObjectSpec(
                obj=view,
                skip=True,
                selectSet=[
                    vmodl.query.PropertyCollector.TraversalSpec(
                        name="view", path="view", skip=False, type=vim.view.ContainerView
                    )
                ],
            )
        ],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=PROPERTIES)],
    )
    result = collector.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    while result is not None:
        yield from result.objects
        if not result.token:
            break
        result = collector.ContinueRetrievePropertiesEx(result.token)


def _summary(obj: Any) -> VmSummary:
    props = {p.name: p.val for p in obj.propSet}
    snapshot = props.get("snapshot")
    devices = props.get("config.hardware.device") or []
    disks = [
        DiskSummary(
            str(d.key),
            d.deviceInfo.label if d.deviceInfo else str(d.key),
            _capacity(d),
            getattr(d.backing, "fileName", ""),
        )
        for d in devices
        if isinstance(d, vim.vm.device.VirtualDisk)
    ]
    return VmSummary(
        name=props.get("name", ""),
        moref=obj.obj._moId,
        power_state=str(props.get("runtime.powerState", "unknown")),
        template=bool(props.get("config.template", False)),
        instance_uuid=props.get("config.instanceUuid") or "",
        cbt_enabled=bool(props.get("config.changeTrackingEnabled", False)),
        cbt_supported=bool(props.get("capability.changeTrackingSupported", False)),
        snapshots=[name for name, _ in snapshot_names(snapshot.rootSnapshotList if snapshot else None)],
        disks=disks,
        vm=obj.obj,
    )


def _capacity(disk: Any) -> int:
    return int(disk.capacityInBytes or disk.capacityInKB * 1024)
