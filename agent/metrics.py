"""The agent's Prometheus metrics and its /status document, served on an optional HTTP listener.

Off by default; when the job file's ``agent.listen`` (or ``--listen``) is set, the agent
serves ``/metrics`` (Prometheus text format, prometheus-client) and ``/status`` (JSON: jobs,
running VMs, next runs). Loopback is the default address; the listener has no authentication,
so expose it beyond the host only behind something that has.

Per VM: time of the last success, the last result, its duration, bytes read and stored. Per
job: runs and failed runs. Per repository: its size on disk. The per-VM gauges are seeded from
the history at start, so a restarted agent does not report every VM as never backed up.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from .engine.jobs import VmResult, VmStatus
from .history import RunStatus

log = logging.getLogger(__name__)


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        vm = ["job", "vm"]

        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        self.last_success = gauge("vmkeep_vm_last_success_timestamp_seconds", "End of the last successful backup", vm)
        self.last_ok = gauge("vmkeep_vm_last_backup_ok", "1 if the VM's last backup succeeded, else 0", vm)
        self.last_duration = gauge("vmkeep_vm_last_backup_duration_seconds", "Duration of the last backup", vm)
        self.last_read = gauge("vmkeep_vm_last_backup_read_bytes", "Bytes read by the last backup", vm)
        self.last_stored = gauge("vmkeep_vm_last_backup_stored_bytes", "Bytes the last backup stored", vm)
        self.backups = Counter("vmkeep_vm_backups", "VM backups by result", [*vm, "status"], registry=r)
        self.runs = Counter("vmkeep_job_runs", "Runs of each job", ["job"], registry=r)
        self.failures = Counter(
            "vmkeep_job_failures", "Runs of each job that did not fully succeed", ["job"], registry=r
        )
        self.repository_size = gauge("vmkeep_repository_size_bytes", "Size of the repository's files", ["repository"])
        self.next_run = gauge("vmkeep_job_next_run_timestamp_seconds", "When each job runs next", ["job"])

    def declare_jobs(self, jobs: list[str]) -> None:
        """Export zero counts for jobs that have not run yet (an absent series alerts nobody)."""
        for job in jobs:
            self.runs.labels(job)
            self.failures.labels(job)

    def seed(self, last_results: dict[str, dict[str, Any]]) -> None:
        """The per-VM gauges from the history's newest record of each VM."""
        for vm, row in last_results.items():
            ok = row["status"] in (VmStatus.SUCCEEDED, VmStatus.WARNING)
            labels = (row["job"], vm)
            self.last_ok.labels(*labels).set(1 if ok else 0)
            self.last_duration.labels(*labels).set(row["duration"])
            self.last_read.labels(*labels).set(row["read_bytes"])
            self.last_stored.labels(*labels).set(row["stored_bytes"])
            if ok:
                self.last_success.labels(*labels).set(datetime.fromisoformat(row["ended"]).timestamp())

    def vm_done(self, result: VmResult, ended: float) -> None:
        labels = (result.job, result.vm)
        self.backups.labels(*labels, str(result.status)).inc()
        self.last_ok.labels(*labels).set(1 if result.ok else 0)
        self.last_duration.labels(*labels).set(result.duration)
        self.last_read.labels(*labels).set(result.read_bytes)
        self.last_stored.labels(*labels).set(result.stored_bytes)
        if result.ok:
            self.last_success.labels(*labels).set(ended)

    def run_done(self, job: str, status: RunStatus) -> None:
        self.runs.labels(job).inc()
        if status != RunStatus.SUCCEEDED:
            self.failures.labels(job).inc()

    def measure_repository(self, name: str, path: Path) -> None:
        total = 0
        for folder, _, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(folder, f)).st_size
                except OSError:
                    continue
        self.repository_size.labels(name).set(total)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MonitoringServer:
    """/metrics and /status over HTTP, in a background thread."""

    def __init__(self, address: str, metrics: AgentMetrics, status: Callable[[], dict[str, Any]]) -> None:
        host, _, port = address.rpartition(":")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, metrics.render())
                elif self.path == "/status":
                    self._send(200, "application/json", json.dumps(status(), indent=2).encode() + b"\n")
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /status\n")

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        self._server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        self._server.daemon_threads = True
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="vmkeep-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
