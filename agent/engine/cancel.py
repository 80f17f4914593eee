"""Cancellation tokens: a signal or a caller asks work to stop; the engine stops at a safe point.

Tokens form a tree: the process's root token, one per job under it, one per VM under that.
Cancelling a token cancels every token below it, so SIGINT/SIGTERM (which cancel the root)
stop every running job, while a job or a single VM can be stopped alone. The engine checks its
token between blocks and between steps, and cleans up (snapshot removed, nothing committed)
on the way out.

Raising from a signal handler can land anywhere, even inside ``Thread.start()``, so the
handler only cancels the root token. A second signal forces the issue.
"""

from __future__ import annotations

import threading
import weakref

from .exceptions import Interrupted


class CancelToken:
    """Asks a piece of work to stop. Thread-safe; cancelling is one-way."""

    def __init__(self, parent: CancelToken | None = None, name: str = "") -> None:
        self.name = name
        self._cancelled = False
        self._reason = ""
        # Signal handlers cancel tokens on the main thread, between two bytecodes, possibly while
        # that thread holds this very lock (in wait() or child()). A plain Lock, or an Event (whose
        # lock is plain), would deadlock there; a reentrant lock lets the handler through.
        self._guard = threading.RLock()
        self._changed = threading.Condition(self._guard)
        self._children: weakref.WeakSet[CancelToken] = weakref.WeakSet()
        if parent is not None:
            with parent._guard:
                parent._children.add(self)
                inherited = parent._reason if parent.cancelled else None
            if inherited is not None:
                self.cancel(inherited)

    def child(self, name: str = "") -> CancelToken:
        """A token cancelled with this one (and alone, without cancelling this one)."""
        return CancelToken(self, name)

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def reason(self) -> str:
        return self._reason

    def cancel(self, reason: str) -> None:
        """Cancel this token and every token below it; a second call keeps the first reason."""
        with self._guard:
            if not self._cancelled:
                self._reason = reason
                self._cancelled = True
                self._changed.notify_all()
            children = list(self._children)
        for child in children:
            child.cancel(reason)

    def check(self) -> None:
        """Raise Interrupted if this token was cancelled."""
        if self._cancelled:
            raise Interrupted(self._reason)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True (early) if the token was cancelled meanwhile."""
        with self._changed:
            if not self._cancelled:
                self._changed.wait(seconds)
            return self._cancelled


_root = [CancelToken(name="process")]


def root() -> CancelToken:
    """The process's token: every job's token descends from it."""
    return _root[0]


def request(reason: str) -> None:
    """Ask all running work to stop (a signal); raise at once if it was already asked."""
    if _root[0].cancelled:
        raise Interrupted(f"{reason} (second request: stopping at once)")
    _root[0].cancel(reason)


def requested() -> bool:
    return _root[0].cancelled


def check() -> None:
    """Raise Interrupted if the process was asked to stop."""
    _root[0].check()


def reset() -> None:
    """A fresh root token (tokens taken from the old one keep their state)."""
    _root[0] = CancelToken(name="process")
