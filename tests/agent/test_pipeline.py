"""The ordered, bounded parallel map under backup and restore."""

from __future__ import annotations

import threading
import time

import pytest

from vmkeep.agent.engine.pipeline import ordered_map


def test_results_come_in_input_order_even_when_work_finishes_out_of_order() -> None:
    def slow_for_evens(i: int) -> int:
        time.sleep(0.002 * (i % 2 == 0))
        return i * i

    assert list(ordered_map(slow_for_evens, range(200), workers=4, window=16)) == [i * i for i in range(200)]


def test_at_most_window_items_are_in_flight() -> None:
    lock = threading.Lock()
    submitted = 0
    consumed = 0
    peak = 0

    def items():  # type: ignore[no-untyped-def]
        nonlocal submitted, peak
        for i in range(500):
            with lock:
                submitted += 1
                peak = max(peak, submitted - consumed)
            yield i

    for _ in ordered_map(lambda i: i, items(), workers=3, window=8):
        with lock:
            consumed += 1
    assert peak <= 9  # the window plus the item being handed over


def test_an_error_in_a_worker_reaches_the_consumer_and_stops_the_work() -> None:
    calls = []

    def fail_at_10(i: int) -> int:
        calls.append(i)
        if i == 10:
            raise ValueError("boom")
        return i

    with pytest.raises(ValueError, match="boom"):
        list(ordered_map(fail_at_10, range(10_000), workers=2, window=4))
    assert len(calls) < 100
