"""Changed Block Tracking: QueryChangedDiskAreas, paged, checked, and its faults as reasons.

One answer covers only ``[startOffset, startOffset + length)`` (ESXi returns at most about
2,000 extents per call), so the query loops until it reaches the disk's capacity, checking
that each page starts where the last one ended and stays inside the disk: a short loop is
how backup tools have silently lost data (Bareos PR 2152). Any fault from the query means
"take a full backup", and the fault is the reason given.
"""

from __future__ import annotations

import logging
from typing import Any

from pyVmomi import vim, vmodl

from ..base import Changes, Extent, FullRead, merge_extents
from .tasks import fault_message

log = logging.getLogger(__name__)

ALL_IN_USE = "*"


def changed_extents(vm: Any, snapshot: Any, device_key: int, capacity: int, change_id: str) -> Changes | FullRead:
    """Extents of the disk changed since ``change_id`` (``*``: all in-use areas), as of ``snapshot``."""
    extents: list[Extent] = []
    offset = 0
    calls = 0
    while offset < capacity:  # never ask at offset == capacity: ESXi answers InvalidArgument
        try:
            info = vm.QueryChangedDiskAreas(
                snapshot=snapshot, deviceKey=device_key, startOffset=offset, changeId=change_id
            )
        except vim.fault.FileFault as exc:
            return FullRead(f"vCenter refused change id {change_id!r} (CBT reset or disabled): {fault_message(exc)}")
        except (vmodl.fault.InvalidArgument, vim.fault.InvalidState, vmodl.fault.NotSupported) as exc:
            return FullRead(f"change tracking cannot answer for this disk: {fault_message(exc)}")
        except vmodl.MethodFault as exc:
            return FullRead(f"QueryChangedDiskAreas failed: {fault_message(exc)}")
        calls += 1
        start, length = int(info.startOffset), int(info.length)
        if start != offset or length <= 0 or start + length > capacity:
            return FullRead(
                f"change tracking answered an inconsistent page (asked from {offset}, got {start}+{length} "
                f"of a {capacity}-byte disk)"
            )
        for area in info.changedArea or []:
            a_start, a_len = int(area.start), int(area.length)
            if a_start < start or a_start + a_len > start + length:
                return FullRead(f"change tracking answered an extent outside its page ({a_start}+{a_len})")
            extents.append(Extent(a_start, a_len))
        offset = start + length
    log.debug("QueryChangedDiskAreas(%s, %s): %d extents in %d call(s)", device_key, change_id, len(extents), calls)
    return Changes(merge_extents(extents))
