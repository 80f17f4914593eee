"""Restoring a recovery point to vCenter or ESXi as a new VM.

The VM is created with the recorded hardware and new, empty disks (``CreateVM_Task``), then
each disk's raw extent is uploaded with a PUT to ``/folder``, and read back to check that the
host holds exactly what was sent: the upload notes a BLAKE3 digest of every 8 MiB of the
stream, and the read-back fetches those pieces with parallel Range GETs and compares each (the
SHA-256 of the whole stream is what the result reports). An existing VM is never overwritten.
If anything fails after the VM was created, the half-restored VM is destroyed.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import blake3
from pyVmomi import vim

from ..base import DiskImage
from ..platforms import RestoredVm, RestoreTarget
from .connection import VSphereConnection
from .exceptions import RestoreError, VSphereError
from .hardware import CONTROLLER_TYPES, create_spec
from .inventory import list_vms
from .tasks import wait_for_task
from .transport import DatastoreFile, DiskTransport, HttpFlatTransport

log = logging.getLogger(__name__)

READ_BACK_CHUNK = 8 * 1024 * 1024
READ_BACK_THREADS = 4  # Range GETs at once when reading a disk back (as many as bench/vsphere.py's curl)


@dataclass(frozen=True)
class VsphereRestoreTarget(RestoreTarget):
    datastore: str
    folder: str | None = None  # VM folder path below the datacenter's VM folder, "a/b"
    esx_host: str | None = None  # host to register on (default: one that sees the datastore)
    network_map: dict[str, str] = field(default_factory=dict)  # recorded network name -> target name


def restore_vm(
    conn: VSphereConnection,
    hardware: dict[str, Any],
    images: list[DiskImage],
    target: VsphereRestoreTarget,
    *,
    transport: DiskTransport | None = None,
    progress: Callable[[int], None] | None = None,
) -> RestoredVm:
    transport = transport or HttpFlatTransport(conn)
    if any(v.name == target.name for v in list_vms(conn)):
        raise RestoreError(f"a VM named {target.name!r} exists already; vmkeep never overwrites a VM (use --name)")
    datacenter, datastore = _find_datastore(conn, target.datastore)
    host, pool = _placement(datacenter, datastore, target.esx_host)
    folder = _find_folder(datacenter, target.folder)
    networks = _networks(datacenter)
    recorded = dict(hardware)
    sizes = {img.key: img.capacity for img in images}
    recorded["disks"] = [dict(d, capacity=sizes.get(str(d["key"]), d["capacity"])) for d in hardware.get("disks", [])]
    missing = set(sizes) - {str(d["key"]) for d in recorded["disks"]}
    if missing:
        raise RestoreError(f"the recorded hardware has no disk with key(s) {', '.join(sorted(missing))}")
    spec = create_spec(recorded, target.name, target.datastore, networks, target.network_map)
    try:
        vm = wait_for_task(folder.CreateVM_Task(config=spec, pool=pool, host=host), f"creating VM {target.name}")
    except VSphereError as exc:
        raise RestoreError(str(exc)) from None
    try:
        files = _new_disk_files(vm, recorded, datacenter_path(datacenter))
        restored = []
        for image in images:
            file = files[image.key]
            digest, pieces = _upload(transport, file, image, progress)
            if target.verify:
                _read_back(transport, file, image.capacity, pieces)
            restored.append({"key": image.key, "file": str(file), "size": image.capacity, "sha256": digest})
        if target.power_on:
            wait_for_task(vm.PowerOnVM_Task(), f"powering on {target.name}")
        return RestoredVm(target.name, vm._moId, restored, target.power_on, id_name="moref")
    except BaseException as exc:
        log.error("restore of %s failed (%s); removing the half-restored VM", target.name, exc)
        _destroy(vm, target.name)
        if isinstance(exc, VSphereError) and not isinstance(exc, RestoreError):
            raise RestoreError(str(exc)) from None
        raise


def datacenter_path(datacenter: Any) -> str:
    parts = [datacenter.name]
    folder = datacenter.parent
    while isinstance(folder, vim.Folder) and folder.parent is not None:
        parts.append(folder.name)
        folder = folder.parent
    return "/".join(reversed(parts))


def _datacenters(conn: VSphereConnection) -> list[Any]:
    content = conn.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datacenter], True)
    try:
        return list(view.view)
    finally:
        view.DestroyView()


def _find_datastore(conn: VSphereConnection, name: str) -> tuple[Any, Any]:
    known = []
    for dc in _datacenters(conn):
        for ds in dc.datastore:
            if ds.name == name:
                return dc, ds
            known.append(ds.name)
    raise RestoreError(f"no datastore named {name!r} (datastores: {', '.join(sorted(known)) or 'none'})")


def _placement(datacenter: Any, datastore: Any, host_name: str | None) -> tuple[Any, Any]:
    # Hosts that mount the datastore, by either side of the relation (simulators fill in only one).
    hosts = [mount.key for mount in datastore.host or []]
    known = {h._moId for h in hosts}
    for host in _hosts(datacenter):
        if host._moId not in known and any(ds._moId == datastore._moId for ds in host.datastore or []):
            hosts.append(host)
    if host_name is not None:
        hosts = [h for h in hosts if h.name == host_name]
        if not hosts:
            raise RestoreError(f"no host named {host_name!r} sees datastore {datastore.name!r}")
    hosts = [h for h in hosts if h.runtime.connectionState == "connected" and not h.runtime.inMaintenanceMode]
    if not hosts:
        raise RestoreError(f"no connected host outside maintenance mode sees datastore {datastore.name!r}")
    host = hosts[0]
    return host, host.parent.resourcePool


def _hosts(datacenter: Any) -> list[Any]:
    """Every host of the datacenter, in clusters and standalone, through nested folders."""
    hosts: list[Any] = []
    stack: list[Any] = [datacenter.hostFolder]
    while stack:
        obj = stack.pop()
        if isinstance(obj, vim.Folder):
            stack.extend(obj.childEntity)
        elif isinstance(obj, vim.ComputeResource):
            hosts.extend(obj.host)
    return hosts


def _find_folder(datacenter: Any, path: str | None) -> Any:
    folder = datacenter.vmFolder
    for part in (path or "").strip("/").split("/"):
        if not part:
            continue
        child = next((c for c in folder.childEntity if isinstance(c, vim.Folder) and c.name == part), None)
        if child is None:
            raise RestoreError(f"no VM folder {path!r} in datacenter {datacenter.name!r}")
        folder = child
    return folder


def _networks(datacenter: Any) -> dict[str, Any]:
    return {net.name: net for net in datacenter.network}


def _new_disk_files(vm: Any, recorded: dict[str, Any], datacenter: str) -> dict[str, DatastoreFile]:
    """Recorded disk key -> the new VM's disk file, matched by controller (type, bus) and unit."""
    devices = vm.config.hardware.device
    old_controllers = {c["key"]: (c["type"], c["bus"]) for c in recorded.get("controllers", [])}
    new_controllers = {}
    for dev in devices:
        for kind, cls in CONTROLLER_TYPES.items():
            if type(dev) is cls:
                new_controllers[(kind, dev.busNumber)] = dev.key
    files: dict[str, DatastoreFile] = {}
    for disk in recorded["disks"]:
        controller = new_controllers.get(old_controllers[disk["controller_key"]])
        match = next(
            (
                d
                for d in devices
                if isinstance(d, vim.vm.device.VirtualDisk)
                and d.controllerKey == controller
                and d.unitNumber == disk["unit"]
            ),
            None,
        )
        if match is None:
            raise RestoreError(f"the new VM lacks the disk for recorded disk {disk['key']}")
        files[str(disk["key"])] = DatastoreFile.flat_of(getattr(match.backing, "fileName", ""), datacenter)
    return files


def _upload(
    transport: DiskTransport, file: DatastoreFile, image: DiskImage, progress: Callable[[int], None] | None
) -> tuple[str, list[bytes]]:
    """Upload the image; the SHA-256 of what was sent, and the digests of its read-back pieces."""
    digests: list[tuple[str, list[bytes]]] = []

    def chunks() -> Iterator[bytes]:  # called again for each attempt
        hasher = hashlib.sha256()
        pieces = _PieceDigests()
        for chunk in image.stream():
            hasher.update(chunk)
            pieces.update(chunk)
            if progress is not None:
                progress(len(chunk))
            yield chunk
        digests.append((hasher.hexdigest(), pieces.finish()))

    transport.write(file, image.capacity, chunks)
    return digests[-1]


class _PieceDigests:
    """BLAKE3 of each ``READ_BACK_CHUNK`` bytes of a stream, whatever the sizes it comes in."""

    def __init__(self) -> None:
        self._digests: list[bytes] = []
        self._hasher = blake3.blake3()
        self._filled = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), READ_BACK_CHUNK - self._filled)
            self._hasher.update(view[:n])
            self._filled += n
            view = view[n:]
            if self._filled == READ_BACK_CHUNK:
                self._digests.append(self._hasher.digest())
                self._hasher, self._filled = blake3.blake3(), 0

    def finish(self) -> list[bytes]:
        if self._filled:
            self._digests.append(self._hasher.digest())
        return self._digests


def _read_back(transport: DiskTransport, file: DatastoreFile, size: int, pieces: list[bytes]) -> None:
    """Read the uploaded file back in pieces, several at once, and compare each with what was sent."""
    offsets = range(0, size, READ_BACK_CHUNK)
    if len(pieces) != len(offsets):
        raise RestoreError(f"{file}: {len(pieces)} pieces were uploaded, {len(offsets)} expected")

    def same(offset: int) -> bool:
        length = min(READ_BACK_CHUNK, size - offset)
        data = transport.read(file, offset, length)
        return len(data) == length and blake3.blake3(data).digest() == pieces[offset // READ_BACK_CHUNK]

    pool = ThreadPoolExecutor(READ_BACK_THREADS, thread_name_prefix="vmkeep-read-back")
    pending: deque[tuple[int, Future[bool]]] = deque()  # a window, not every piece of a 1 TiB disk at once

    def check_oldest() -> None:
        offset, future = pending.popleft()
        if not future.result():
            raise RestoreError(f"{file}: what the host holds differs from what was uploaded (from offset {offset} on)")

    try:
        for offset in offsets:
            pending.append((offset, pool.submit(same, offset)))
            if len(pending) >= 2 * READ_BACK_THREADS:
                check_oldest()
        while pending:
            check_oldest()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _destroy(vm: Any, name: str) -> None:
    try:
        if vm.runtime.powerState == "poweredOn":
            wait_for_task(vm.PowerOffVM_Task(), f"powering off {name}")
        wait_for_task(vm.Destroy_Task(), f"removing {name}")
    except Exception as exc:
        log.error("could not remove the half-restored VM %s: %s; remove it by hand", name, exc)
