"""A VM's result as it travels from a worker to the agent: ``VmResult.to_json()`` and back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from vmkeep.repository.points import RecoveryPoint

from ..engine.jobs import BackupTask, VmResult, VmStatus


def result_from_json(doc: dict[str, Any]) -> VmResult:
    return VmResult(
        job=str(doc["job"]),
        vm=str(doc["vm"]),
        status=VmStatus(doc["status"]),
        started=datetime.fromisoformat(doc["started"]),
        duration=float(doc.get("duration") or 0.0),
        attempts=int(doc.get("attempts") or 1),
        point_id=doc.get("point_id"),
        kind=doc.get("kind"),
        reason=doc.get("reason"),
        read_bytes=int(doc.get("read_bytes") or 0),
        stored_bytes=int(doc.get("stored_bytes") or 0),
        new_bytes=int(doc.get("new_bytes") or 0),
        error=doc.get("error"),
        warnings=[str(w) for w in doc.get("warnings") or []],
    )


def failed(task: BackupTask, error: str, status: VmStatus = VmStatus.FAILED) -> VmResult:
    return VmResult(task.job, task.vm, status, datetime.now(UTC), error=error)


def result_of_point(task: BackupTask, point: RecoveryPoint, started: datetime) -> VmResult:
    """The result of a backup that committed ``point`` (found again after its worker was lost)."""
    reasons = [d.reason for d in point.disks if d.reason]
    return VmResult(
        task.job,
        task.vm,
        VmStatus.SUCCEEDED,
        started,
        duration=point.duration,
        point_id=point.id,
        kind=point.kind,
        reason="; ".join(dict.fromkeys(reasons)) or None,
        read_bytes=sum(d.read_bytes for d in point.disks),
        stored_bytes=sum(d.stored_bytes for d in point.disks),
        new_bytes=sum(d.new_bytes for d in point.disks),
        warnings=list(point.warnings),
    )
