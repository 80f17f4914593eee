"""Waiting for vSphere tasks, with their faults turned into one-line errors."""

from __future__ import annotations

import time
from typing import Any

from pyVmomi import vim, vmodl

from .exceptions import TaskFailed, VSphereError


def fault_message(fault: Any) -> str:
    """A readable one-line description of a vim fault."""
    text = getattr(fault, "msg", None) or ""
    for attr in ("faultMessage",):
        for message in getattr(fault, attr, None) or []:
            if getattr(message, "message", None):
                text = text or message.message
    return f"{type(fault).__name__.rsplit('.', 1)[-1]}: {text}" if text else type(fault).__name__.rsplit(".", 1)[-1]


def wait_for_task(task: Any, what: str, timeout: float = 3600.0) -> Any:
    """The task's result; a VSphereError naming ``what`` if it fails or takes longer than ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            info = task.info
        except vmodl.fault.ManagedObjectNotFound:
            raise VSphereError(f"{what}: the task disappeared") from None
        if info.state == vim.TaskInfo.State.success:
            return info.result
        if info.state == vim.TaskInfo.State.error:
            raise TaskFailed(f"{what} failed: {fault_message(info.error)}", info.error)
        if time.monotonic() > deadline:
            raise VSphereError(f"{what}: no answer after {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
