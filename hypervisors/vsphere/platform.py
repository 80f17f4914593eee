"""vCenter or ESXi as a platform: its inventory, backup sessions on its VMs, restore as a new VM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

from ..base import DiskImage
from ..exceptions import CleartextRefused
from ..platforms import Endpoint, Platform, PlatformKind, RestoredVm, RestoreTarget, SessionOptions, VmDisk, VmSummary
from ..tls import TlsPolicy, cleartext_problem
from .connection import ConnectionSettings, VSphereConnection, parse_server
from .exceptions import RestoreError
from .inventory import list_vms
from .restore import VsphereRestoreTarget, restore_vm
from .session import VSphereSession


class VspherePlatform(Platform):
    """One logged-in connection; ``close`` logs out when the platform opened it."""

    kind = PlatformKind.VSPHERE

    def __init__(self, conn: VSphereConnection, owns: bool = True) -> None:
        self.conn = conn
        self._owns = owns

    @classmethod
    def check_address(cls, address: str, tls: TlsPolicy | None) -> None:
        scheme, host, port = parse_server(address)
        problem = cleartext_problem(tls or TlsPolicy(), scheme, f"{scheme}://{host}:{port}", "vCenter")
        if problem:
            raise CleartextRefused(problem)

    @classmethod
    def connect(cls, endpoint: Endpoint) -> Self:
        tls = endpoint.tls or TlsPolicy()
        return cls(VSphereConnection(ConnectionSettings(endpoint.address, endpoint.user, endpoint.password, tls)))

    def list_vms(self) -> list[VmSummary]:
        return [
            VmSummary(
                name=v.name,
                power_state=v.power_state,
                tracking="on" if v.cbt_enabled else ("off" if v.cbt_supported else "unsupported"),
                snapshots=tuple(v.snapshots),
                disks=tuple(VmDisk(d.key, d.label, d.capacity) for d in v.disks),
                template=v.template,
                host=v.host,
                datastores=v.datastores,
                folder=v.folder,
                details=v.to_json(),
            )
            for v in list_vms(self.conn)
        ]

    def open_session(self, vm: str, options: SessionOptions) -> VSphereSession:
        return VSphereSession(self.conn, vm, quiesce=options.quiesce)

    def restore_to_host(
        self,
        hardware: dict[str, Any],
        disks: list[DiskImage],
        target: RestoreTarget,
        progress: Callable[[int], None] | None = None,
    ) -> RestoredVm:
        if not isinstance(target, VsphereRestoreTarget):
            raise RestoreError("a vSphere restore needs a datastore (--datastore)")
        return restore_vm(self.conn, hardware, disks, target, progress=progress)

    def close(self) -> None:
        if self._owns:
            self.conn.close()
