"""A vSphere session whose points carry the fleet's idempotency key for their task."""

from __future__ import annotations

from typing import Any

from vmkeep.hypervisors.vsphere.connection import VSphereConnection
from vmkeep.hypervisors.vsphere.session import VSphereSession


class FleetVSphereSession(VSphereSession):
    def __init__(self, conn: VSphereConnection, vm_name: str, *, quiesce: bool, fleet_task: str) -> None:
        self.fleet_task = fleet_task
        super().__init__(conn, vm_name, quiesce=quiesce)

    def source_info(self) -> dict[str, Any]:
        from .worker import FLEET_TASK_KEY

        return {**super().source_info(), FLEET_TASK_KEY: self.fleet_task}
