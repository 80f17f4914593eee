"""Failure notices: a JSON document POSTed to the job's webhook URL.

A notice that cannot be delivered is logged and dropped; it never fails the job. The body
names the job, the run, and each VM that failed with its error; never a secret.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import requests

from .logs import event

if TYPE_CHECKING:
    from .run import RunOutcome

TIMEOUT = 10.0


def notice(outcome: RunOutcome) -> dict[str, Any]:
    return {
        "event": "vmkeep.job.failed" if outcome.status != "partial" else "vmkeep.job.partial",
        "time": datetime.now(UTC).isoformat(),
        "agent": socket.gethostname(),
        "job": outcome.job,
        "run_id": outcome.run_id,
        "trigger": str(outcome.trigger),
        "status": str(outcome.status),
        "error": outcome.error,
        "failed": [
            {"vm": r.vm, "status": str(r.status), "error": r.error, "attempts": r.attempts}
            for r in outcome.results
            if not r.ok
        ],
        "succeeded": [{"vm": r.vm, "point_id": r.point_id} for r in outcome.results if r.ok],
    }


def send_notice(url: str, outcome: RunOutcome) -> bool:
    """POST the notice; True if the receiver accepted it (2xx)."""
    try:
        with requests.Session() as session:
            session.trust_env = False  # no proxy or netrc surprises
            resp = session.post(url, json=notice(outcome), timeout=TIMEOUT)
        if 200 <= resp.status_code < 300:
            event(logging.INFO, "webhook-sent", job=outcome.job, run=outcome.run_id, status=resp.status_code)
            return True
        reason = f"HTTP {resp.status_code}"
    except requests.RequestException as exc:
        reason = str(exc)
    event(logging.WARNING, "webhook-failed", reason, job=outcome.job, run=outcome.run_id)
    return False
