"""An ordered, bounded parallel map: the shape of both the backup and the restore pipeline.

zstandard, blake3, xxhash, AES-GCM and file/socket I/O all release the GIL, so plain
threads use every core. At most ``window`` items are in flight, which bounds memory to
``window`` blocks whatever the disk's size; results come back in input order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int) -> Generator[R, None, None]:
    """``map(fn, items)`` on ``workers`` threads, at most ``window`` calls ahead of the consumer."""
    window = max(window, workers)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vmkeep-worker")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(executor.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        executor.shutdown(wait=True, cancel_futures=True)
