"""Progress on a terminal: one line per disk, redrawn at most ten times a second, on stderr."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .engine.progress import Progress
from .output import human_duration, human_size


class TerminalProgress(Progress):
    """Draws a live line when stderr is a terminal; otherwise prints one line per disk."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self._out = stream or sys.stderr
        self._live = self._out.isatty()
        self._quiet = quiet
        self._label = ""
        self._total = 0
        self._done = 0
        self._start = 0.0
        self._drawn = 0.0

    def disk_started(self, vm: str, disk: str, total_bytes: int, mode: str, reason: str | None) -> None:
        self._label = f"{vm} {disk} {mode}"
        self._total, self._done, self._start, self._drawn = total_bytes, 0, time.monotonic(), 0.0
        if reason and not self._quiet:
            self._print(f"{vm} {disk}: full read: {reason}")

    def advance(self, nbytes: int) -> None:
        self._done += nbytes
        now = time.monotonic()
        if self._live and not self._quiet and now - self._drawn >= 0.1:
            self._drawn = now
            self._draw(now)

    def disk_finished(self, disk: str) -> None:
        if self._live and not self._quiet:
            self._draw(time.monotonic())
            self._out.write("\n")
            self._out.flush()

    def warn(self, message: str) -> None:
        self._print(f"WARNING: {message}")

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        speed = self._done / elapsed
        pct = 100.0 * self._done / self._total if self._total else 100.0
        eta = (self._total - self._done) / speed if speed > 0 else 0.0
        self._out.write(
            f"\r\033[K{self._label}: {pct:5.1f}%  {human_size(self._done)} / {human_size(self._total)}"
            f"  {speed / 1e6:.0f} MB/s  ETA {human_duration(eta)}"
        )
        self._out.flush()

    def _print(self, text: str) -> None:
        if self._live:
            self._out.write("\r\033[K")
        self._out.write(text + "\n")
        self._out.flush()
