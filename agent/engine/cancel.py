"""Cancellation: a signal asks the running job to stop; the engine stops at a safe point.

Raising from a signal handler can land anywhere, even inside ``Thread.start()``, so the
handler only sets a flag. The engine checks it between blocks and between steps, and cleans
up (snapshot removed, nothing committed) on the way out. A second signal forces the issue.
"""

from __future__ import annotations

import threading

from .exceptions import Interrupted

_requested = threading.Event()
_reason: list[str] = [""]


def request(reason: str) -> None:
    """Ask the running job to stop; raise at once if it was already asked."""
    if _requested.is_set():
        raise Interrupted(f"{reason} (second request: stopping at once)")
    _reason[0] = reason
    _requested.set()


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Raise Interrupted if a stop was requested."""
    if _requested.is_set():
        raise Interrupted(_reason[0])


def reset() -> None:
    _requested.clear()
