"""What the agent did: every run of every job and every VM in it, in a local SQLite database.

The history is a cache and a log: the repository stays the truth (a lost database loses no
backup, and the points themselves record what each backup read and why). The agent writes it;
``vmkeep history`` and ``vmkeep jobs`` read it, also while the agent runs (WAL mode).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from .engine.jobs import VmResult

DB_NAME = "history.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    job TEXT NOT NULL,
    trigger TEXT NOT NULL,
    scheduled TEXT,
    started TEXT NOT NULL,
    ended TEXT,
    status TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS runs_job ON runs (job, started);
CREATE TABLE IF NOT EXISTS vm_runs (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id),
    job TEXT NOT NULL,
    vm TEXT NOT NULL,
    status TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT NOT NULL,
    duration REAL NOT NULL,
    attempts INTEGER NOT NULL,
    point_id TEXT,
    kind TEXT,
    reason TEXT,
    read_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    error TEXT,
    warnings TEXT  -- a JSON array of the result's warnings; NULL when there were none
);
CREATE INDEX IF NOT EXISTS vm_runs_vm ON vm_runs (vm, started);
"""
SCHEMA_VERSION = 1  # PRAGMA user_version; version 0, the first, had no vm_runs.warnings


class Trigger(StrEnum):
    SCHEDULE = "schedule"
    MISSED = "missed"  # a slot passed while the agent was down: run once at start
    MANUAL = "manual"  # vmkeep jobs run


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some VMs failed
    FAILED = "failed"  # no VM succeeded, or the job could not start (repository missing or locked...)
    INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class RunRecord:
    id: int
    job: str
    trigger: str
    scheduled: datetime | None
    started: datetime
    ended: datetime | None
    status: str
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "job": self.job,
            "trigger": self.trigger,
            "scheduled": self.scheduled.isoformat() if self.scheduled else None,
            "started": self.started.isoformat(),
            "ended": self.ended.isoformat() if self.ended else None,
            "status": self.status,
            "error": self.error,
        }


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _now() -> str:
    return datetime.now(UTC).isoformat()


class History:
    """The history database of one state directory. Thread-safe."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._guard = threading.Lock()
        with self._guard:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            self._upgrade()

    def _upgrade(self) -> None:
        """Bring a database an older vmkeep made up to SCHEMA_VERSION (it was made by CREATE ... IF NOT EXISTS)."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version >= SCHEMA_VERSION:
            return
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(vm_runs)")}
        if "warnings" not in columns:
            self._db.execute("ALTER TABLE vm_runs ADD COLUMN warnings TEXT")
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @classmethod
    def open_existing(cls, state_dir: Path) -> History | None:
        return cls(state_dir) if (state_dir / DB_NAME).exists() else None

    def close(self) -> None:
        with self._guard:
            self._db.close()

    # -- writing ----------------------------------------------------------------------------

    def start_run(self, job: str, trigger: Trigger, scheduled: datetime | None) -> int:
        with self._guard:
            cur = self._db.execute(
                "INSERT INTO runs (job, trigger, scheduled, started, status) VALUES (?, ?, ?, ?, ?)",
                (job, str(trigger), scheduled.isoformat() if scheduled else None, _now(), str(RunStatus.RUNNING)),
            )
            return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, status: RunStatus, error: str | None = None) -> None:
        with self._guard:
            self._db.execute(
                "UPDATE runs SET ended = ?, status = ?, error = ? WHERE id = ?", (_now(), str(status), error, run_id)
            )

    def record_vm(self, run_id: int, result: VmResult) -> None:
        ended = datetime.now(UTC)
        with self._guard:
            self._db.execute(
                "INSERT INTO vm_runs (run_id, job, vm, status, started, ended, duration, attempts, point_id, kind, "
                "reason, read_bytes, stored_bytes, new_bytes, error, warnings) VALUES (" + ", ".join("?" * 16) + ")",
                (
                    run_id,
                    result.job,
                    result.vm,
                    str(result.status),
                    result.started.isoformat(),
                    ended.isoformat(),
                    result.duration,
                    result.attempts,
                    result.point_id,
                    result.kind,
                    result.reason,
                    result.read_bytes,
                    result.stored_bytes,
                    result.new_bytes,
                    result.error,
                    json.dumps(result.warnings) if result.warnings else None,
                ),
            )

    def close_unfinished(self) -> int:
        """Mark runs a dead agent left 'running' as interrupted; how many there were."""
        with self._guard:
            cur = self._db.execute(
                "UPDATE runs SET status = ?, ended = ?, error = ? WHERE status = ?",
                (str(RunStatus.INTERRUPTED), _now(), "the agent stopped during the run", str(RunStatus.RUNNING)),
            )
            return cur.rowcount

    # -- reading ----------------------------------------------------------------------------

    def last_scheduled(self, job: str) -> datetime | None:
        """The newest schedule slot a run of ``job`` was started for (schedule or missed)."""
        with self._guard:
            row = self._db.execute(
                "SELECT MAX(scheduled) AS s FROM runs WHERE job = ? AND scheduled IS NOT NULL", (job,)
            ).fetchone()
        return _time(row["s"])

    def last_run(self, job: str) -> RunRecord | None:
        runs = self.runs(job=job, limit=1)
        return runs[0] if runs else None

    def runs(self, job: str | None = None, since: datetime | None = None, limit: int | None = None) -> list[RunRecord]:
        query = "SELECT * FROM runs WHERE 1 = 1"
        params: list[str] = []
        if job:
            query, params = query + " AND job = ?", [*params, job]
        if since:
            query, params = query + " AND started >= ?", [*params, since.astimezone(UTC).isoformat()]
        query += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        with self._guard:
            rows = self._db.execute(query, params).fetchall()
        return [
            RunRecord(
                r["id"],
                r["job"],
                r["trigger"],
                _time(r["scheduled"]),
                datetime.fromisoformat(r["started"]),
                _time(r["ended"]),
                r["status"],
                r["error"],
            )
            for r in rows
        ]

    def vm_runs(
        self, job: str | None = None, vm: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """Every VM of every run, oldest first, with its run's trigger and slot.

        A run that failed before any VM (its repository missing or locked, its source down) is
        one row with no VM and the run's error.
        """
        query = (
            "SELECT r.id AS run_id, r.job AS job, r.trigger AS trigger, r.scheduled AS scheduled, "
            "r.started AS run_started, v.vm AS vm, "
            "COALESCE(v.status, r.status) AS status, COALESCE(v.started, r.started) AS started, "
            "COALESCE(v.ended, r.ended) AS ended, COALESCE(v.duration, 0) AS duration, "
            "COALESCE(v.attempts, 0) AS attempts, v.point_id AS point_id, v.kind AS kind, v.reason AS reason, "
            "COALESCE(v.read_bytes, 0) AS read_bytes, COALESCE(v.stored_bytes, 0) AS stored_bytes, "
            "COALESCE(v.new_bytes, 0) AS new_bytes, COALESCE(v.error, r.error) AS error, v.warnings AS warnings "
            "FROM runs r LEFT JOIN vm_runs v ON v.run_id = r.id WHERE (v.id IS NOT NULL OR r.status != 'running')"
        )
        params: list[str] = []
        if job:
            query, params = query + " AND r.job = ?", [*params, job]
        if vm:
            query, params = query + " AND v.vm = ?", [*params, vm]
        if since:
            query, params = (
                query + " AND COALESCE(v.started, r.started) >= ?",
                [*params, since.astimezone(UTC).isoformat()],
            )
        with self._guard:
            rows = self._db.execute(query + " ORDER BY r.id, v.id", params).fetchall()
        return [_with_warnings(dict(r)) for r in rows]

    def last_vm_results(self) -> dict[str, dict[str, Any]]:
        """The newest record of each VM."""
        with self._guard:
            rows = self._db.execute(
                "SELECT * FROM vm_runs WHERE id IN (SELECT MAX(id) FROM vm_runs GROUP BY vm)"
            ).fetchall()
        return {r["vm"]: _with_warnings(dict(r)) for r in rows}


def _with_warnings(row: dict[str, Any]) -> dict[str, Any]:
    """The row with ``warnings`` as a list (stored as JSON, NULL for none)."""
    row["warnings"] = json.loads(row["warnings"]) if row.get("warnings") else []
    return row
