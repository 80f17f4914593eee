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
    "runtime.host",
    "datastore",
    "parent",
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
    host: str = ""  # the moref of the host it runs on
    datastores: tuple[str, ...] = ()  # morefs of the datastores holding its files
    folder: str = ""  # its inventory folder, e.g. "/DC0/vm/prod" (filled by list_vms)
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
            "host": self.host,
            "datastores": list(self.datastores),
            "folder": self.folder,
        }


def list_vms(conn: VSphereConnection) -> list[VmSummary]:
    """Every VM (and template) the user can see, sorted by name."""
    content = conn.content
    containers = [vim.Folder, vim.Datacenter]  # for folder paths, in the same round trip
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine, *containers], True)
    try:
        objects = list(
            _retrieve(
                content.propertyCollector,
                view,
                {vim.VirtualMachine: PROPERTIES, **{t: ["name", "parent"] for t in containers}},
            )
        )
    finally:
        view.DestroyView()
    vms = [o for o in objects if isinstance(o.obj, vim.VirtualMachine)]
    folders = _folder_paths([o for o in objects if not isinstance(o.obj, vim.VirtualMachine)])
    return sorted((_summary(obj, folders) for obj in vms), key=lambda v: v.name)


def _folder_paths(objects: list[Any]) -> dict[str, str]:
    """Folder moref -> path like "/DC0/vm/prod" (datacenters and folders, the root folder left out)."""
    parents: dict[str, tuple[str, str | None]] = {}
    for obj in objects:
        props = {p.name: p.val for p in obj.propSet}
        parent = props.get("parent")
        parents[obj.obj._moId] = (props.get("name", ""), parent._moId if parent is not None else None)
    paths: dict[str, str] = {}
    for moref in parents:
        names: list[str] = []
        current: str | None = moref
        while current in parents:
            name, parent_id = parents[current]
            if parent_id is None:  # the root folder
                break
            names.append(name)
            current = parent_id
        paths[moref] = "/" + "/".join(reversed(names))
    return paths


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


def _retrieve(collector: Any, view: Any, properties: dict[Any, list[str]]) -> Iterator[Any]:
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
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=t, pathSet=p) for t, p in properties.items()],
    )
    result = collector.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    while result is not None:
        yield from result.objects
        if not result.token:
            break
        result = collector.ContinueRetrievePropertiesEx(result.token)


def _summary(obj: Any, folders: dict[str, str] | None = None) -> VmSummary:
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
        host=props["runtime.host"]._moId if props.get("runtime.host") is not None else "",
        datastores=tuple(ds._moId for ds in props.get("datastore") or []),
        folder=(folders or {}).get(props["parent"]._moId, "") if props.get("parent") is not None else "",
        vm=obj.obj,
    )


def _capacity(disk: Any) -> int:
    return int(disk.capacityInBytes or disk.capacityInKB * 1024)
