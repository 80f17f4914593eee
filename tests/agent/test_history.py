"""The agent's history database: what a VM's result keeps, and a database an older vmkeep made."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from vmkeep.agent.engine.jobs import VmResult, VmStatus
from vmkeep.agent.history import DB_NAME, SCHEMA_VERSION, History, Trigger

# vm_runs as the first schema (user_version 0) made it: no warnings column.
FIRST_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, job TEXT NOT NULL, trigger TEXT NOT NULL, scheduled TEXT,
    started TEXT NOT NULL, ended TEXT, status TEXT NOT NULL, error TEXT);
CREATE TABLE vm_runs (id INTEGER PRIMARY KEY, run_id INTEGER NOT NULL REFERENCES runs (id), job TEXT NOT NULL,
    vm TEXT NOT NULL, status TEXT NOT NULL, started TEXT NOT NULL, ended TEXT NOT NULL, duration REAL NOT NULL,
    attempts INTEGER NOT NULL, point_id TEXT, kind TEXT, reason TEXT, read_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL, new_bytes INTEGER NOT NULL, error TEXT);
INSERT INTO runs VALUES (1, 'nightly', 'schedule', NULL, '2026-11-01T01:00:00+00:00', '2026-11-01T01:05:00+00:00',
    'succeeded', NULL);
INSERT INTO vm_runs VALUES (1, 1, 'nightly', 'web01', 'succeeded', '2026-11-01T01:00:00+00:00',
    '2026-11-01T01:05:00+00:00', 300.0, 1, 'ab12', 'full', NULL, 10, 5, 5, NULL);
"""


def _result(vm: str, status: VmStatus, warnings: list[str], error: str | None = None) -> VmResult:
    return VmResult(
        "nightly", vm, status, datetime.now(UTC), point_id="cd34", kind="incremental", error=error, warnings=warnings
    )


def test_a_results_warnings_are_kept_and_read_back(tmp_path: Path) -> None:
    history = History(tmp_path)
    run = history.start_run("nightly", Trigger.MANUAL, None)
    history.record_vm(run, _result("web01", VmStatus.SUCCEEDED, ["tracking was reset: read in full"]))
    history.record_vm(run, _result("db01", VmStatus.SUCCEEDED, []))
    history.record_vm(run, _result("app01", VmStatus.WARNING, ["snapshot left behind"], "snapshot left behind"))
    rows = {r["vm"]: r for r in history.vm_runs(job="nightly")}
    assert rows["web01"]["warnings"] == ["tracking was reset: read in full"]
    assert rows["db01"]["warnings"] == []
    assert rows["app01"]["warnings"] == ["snapshot left behind"]
    assert history.last_vm_results()["web01"]["warnings"] == ["tracking was reset: read in full"]
    history.close()


def test_a_database_of_the_first_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(FIRST_SCHEMA)
    db.close()
    history = History(tmp_path)
    [old] = history.vm_runs()
    assert (old["vm"], old["point_id"], old["warnings"]) == ("web01", "ab12", [])
    run = history.start_run("nightly", Trigger.MANUAL, None)
    history.record_vm(run, _result("web01", VmStatus.SUCCEEDED, ["one"]))
    assert [r["warnings"] for r in history.vm_runs()] == [[], ["one"]]
    history.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
    History(tmp_path).close()  # opening an upgraded database again changes nothing
