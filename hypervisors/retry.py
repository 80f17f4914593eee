"""Bounded retries of transient network faults, the same for every platform's transport.

A retry is logged as one line an administrator can read ("WinRM http://hv1:5985/wsman:
connection reset; attempt 1 of 3 failed, retrying in 0.5 s"), never as tenacity's name for a
nested function. Only the exception type the caller names is retried; everything else, and the
last failure, is raised as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

T = TypeVar("T")


def retry_transient(
    fn: Callable[[], T],
    *,
    transient: type[BaseException],
    what: str,
    log: logging.Logger,
    attempts: int,
    wait: float = 0.5,
    max_wait: float = 8.0,
) -> T:
    """Call ``fn`` up to ``attempts`` times while it raises ``transient``, waiting exponentially between."""
    attempts = max(1, attempts)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "%s: %s; attempt %d of %d failed, retrying in %.1f s", what, error, state.attempt_number, attempts, pause
        )

    retrying = Retrying(
        retry=retry_if_exception_type(transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=wait, max=max_wait),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
