"""The agent's log: one event per line on stderr, as key=value text or as JSON.

Every event names what happened (``event=``) and, where it applies, the job, the VM and the
recovery point, so that journald users can grep it and log shippers can index it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from ..config.kinds import LogFormat
from ..engine.jobs import current_task

log = logging.getLogger("vmkeep.agent")

_ORDER = ("event", "job", "vm", "point")


def event(level: int, name: str, message: str = "", **fields: Any) -> None:
    """Log one event; ``fields`` with a None value are left out."""
    kept = {k: v for k, v in fields.items() if v is not None}
    log.log(level, message, extra={"vmkeep_fields": {"event": name, **kept}})


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\t\n'):
        return json.dumps(text)
    return text


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's event fields; a plain record logged during a task gets its job and VM."""
    fields: dict[str, Any] | None = getattr(record, "vmkeep_fields", None)
    if fields is not None:
        return fields
    task = current_task.get()
    return {"job": task.job, "vm": task.vm} if task is not None else {}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        ordered = [k for k in _ORDER if k in fields] + [k for k in fields if k not in _ORDER]
        parts = [record.levelname] + [f"{k}={_quote(fields[k])}" for k in ordered]
        if "event" not in fields:
            parts.append(f"logger={record.name}")
        message = record.getMessage()
        if message:
            parts.append(f"msg={_quote(message)}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        doc.update(_fields(record))
        doc["message"] = record.getMessage()
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure(fmt: LogFormat, level: int = logging.INFO) -> None:
    """Send every log record to stderr in ``fmt``, one line each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == LogFormat.JSON else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
