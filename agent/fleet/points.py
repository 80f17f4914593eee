"""Work on recovery points a worker does for the fleet: read a point back in full, restore it to a folder.

A restore or a check near the data (or near the host it goes back to) runs on the proxy there:
``vmkeep fleet verify`` and ``vmkeep fleet restore`` send these to one worker's own queue.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vmkeep.repository.exceptions import RepositoryError
from vmkeep.repository.repo import Repository

from ..engine.exceptions import EngineError
from ..exceptions import AgentError
from .worker import WorkerContext

WORKERS = 4  # blocks fetched at once


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}"
    return str(exc)


def _refused(ctx: WorkerContext, payload: dict[str, Any]) -> str | None:
    theirs = str(payload.get("version"))
    if theirs == ctx.version:
        return None
    return (
        f"refused by worker {ctx.hostname}: it runs vmkeep {ctx.version} and the sender {theirs}; "
        "run the same vmkeep version on the agent and on every worker"
    )


def _repository(ctx: WorkerContext, name: str) -> Any:
    config = ctx.cfg.config
    if name not in config.repositories:
        raise AgentError(f"this worker's job file {ctx.cfg.path} has no repository {name!r}")
    return ctx.pool.get(name, config.repositories[name]).shared()


def verify_point(ctx: WorkerContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Read every block of the point (each checked against its id); the SHA-256 of each disk."""
    from ..engine.restore import iter_disk_stream

    answer: dict[str, Any] = {"point": payload["point"], "worker": ctx.hostname, "ok": False, "error": None}
    refused = _refused(ctx, payload)
    if refused:
        return answer | {"error": refused}
    try:
        repo: Repository
        with _repository(ctx, str(payload["repository"])) as repo:
            point = repo.find_point(str(payload["point"]))
            digests, total = {}, 0
            for disk in point.disks:
                digest = hashlib.sha256()
                for chunk in iter_disk_stream(repo, disk, WORKERS):
                    digest.update(chunk)
                    total += len(chunk)
                digests[disk.key] = digest.hexdigest()
    except (RepositoryError, EngineError, AgentError, OSError) as exc:
        return answer | {"error": _describe(exc)}
    return answer | {"point": point.id, "vm": point.vm, "ok": True, "bytes": total, "sha256": digests}


def restore_point(ctx: WorkerContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Restore the point into a folder of the worker's machine: one raw image per disk."""
    from ..engine.restore import restore_point_to_dir

    answer: dict[str, Any] = {"point": payload["point"], "worker": ctx.hostname, "ok": False, "error": None}
    refused = _refused(ctx, payload)
    if refused:
        return answer | {"error": refused}
    try:
        with _repository(ctx, str(payload["repository"])) as repo:
            point = repo.find_point(str(payload["point"]))
            restored = restore_point_to_dir(repo, point, Path(str(payload["directory"])), WORKERS)
    except (RepositoryError, EngineError, AgentError, OSError) as exc:
        return answer | {"error": _describe(exc)}
    files = [{"disk": d.key, "path": d.path, "size": d.size} for d in restored]
    return answer | {"point": point.id, "vm": point.vm, "ok": True, "files": files}
