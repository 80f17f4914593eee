"""The agent's JSON log lines carry the traceback of a record logged with one."""

from __future__ import annotations

import json
import logging
import sys

from vmkeep.agent.daemon.logs import JsonFormatter


def test_a_json_line_keeps_the_traceback_of_what_was_logged_with_it() -> None:
    try:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")
    except AttributeError:
        record = logging.getLogger("celery.worker").makeRecord(
            "celery.worker", logging.CRITICAL, __file__, 1, "Unrecoverable error", (), sys.exc_info()
        )
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "Unrecoverable error"
    assert doc["traceback"].startswith("Traceback (most recent call last):")
    assert doc["traceback"].endswith("AttributeError: 'NoneType' object has no attribute 'hostname'")
    plain = logging.getLogger("x").makeRecord("x", logging.INFO, __file__, 1, "fine", (), None)
    assert "traceback" not in json.loads(JsonFormatter().format(plain))
