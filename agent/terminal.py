"""Progress on a terminal, drawn by tqdm on stderr; plain lines when stderr is not a terminal.

tqdm rather than a bar of our own: it handles terminal width, rates and ETAs, redraw throttling
and writing messages above a live bar, and it is small, pure Python, and without dependencies.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn, TextIO

from .engine.progress import Progress

if TYPE_CHECKING:
    from tqdm import tqdm


def _bar(desc: str, total: int, out: TextIO) -> tqdm[NoReturn]:
    from tqdm import tqdm  # only when a bar is drawn: importing tqdm costs 20 ms of every command

    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=out,
        mininterval=0.1,
        leave=True,
        dynamic_ncols=True,
    )


class TerminalProgress(Progress):
    """A live bar per disk when stderr is a terminal; otherwise only the lines that matter."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self._out = stream or sys.stderr
        self._live = self._out.isatty() and not quiet
        self._quiet = quiet
        self._bar: tqdm[NoReturn] | None = None
        self._open = 0  # disks started and not finished: a VM's disks are read together, under one bar

    def disk_started(self, vm: str, disk: str, total_bytes: int, mode: str, reason: str | None) -> None:
        if reason and not self._quiet:
            self._print(f"{vm} {disk}: full read: {reason}")
        self._open += 1
        if self._live:
            if self._bar is not None and self._open > 1:
                self._bar.total = (self._bar.total or 0) + total_bytes
                self._bar.set_description(f"{vm} {self._open} disks {mode}")
            else:
                self._close()
                self._bar = _bar(f"{vm} {disk} {mode}", total_bytes, self._out)

    def advance(self, nbytes: int) -> None:
        if self._bar is not None:
            self._bar.update(nbytes)

    def disk_finished(self, disk: str) -> None:
        self._open = max(0, self._open - 1)
        if self._open == 0:
            self._close()

    def warn(self, message: str) -> None:
        self._print(f"WARNING: {message}")

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._out)
        else:
            self._out.write(text + "\n")
            self._out.flush()


class ByteBar:
    """Bytes done of repository work (verify, repair, gc): a bar on a terminal, nothing elsewhere.

    The bar appears with the first bytes, so work that turns out to have nothing to do draws none.
    """

    def __init__(self, desc: str, total: int, out: TextIO | None) -> None:
        self._desc, self._total, self._out = desc, total, out
        self._bar: tqdm[NoReturn] | None = None

    def __call__(self, nbytes: int) -> None:
        if self._out is None:
            return
        if self._bar is None:
            self._bar = _bar(self._desc, self._total, self._out)
        self._bar.update(nbytes)

    def set_total(self, total: int) -> None:
        """For work whose size is known only once it is planned (gc's repacking)."""
        self._total = total
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def byte_progress(desc: str, total: int, quiet: bool = False, stream: TextIO | None = None) -> Iterator[ByteBar]:
    """A ``ByteBar``, drawn only when ``stream`` (stderr) is a terminal and not ``quiet``."""
    out = stream or sys.stderr
    bar = ByteBar(desc, total, None if quiet or not out.isatty() else out)
    try:
        yield bar
    finally:
        bar.close()


@contextmanager
def count_progress(desc: str, total: int, unit: str, quiet: bool = False) -> Iterator[Callable[[], None]]:
    """A callback called once per item done (points sized, packs written): a bar on a terminal."""
    out = sys.stderr
    if quiet or not out.isatty():
        yield lambda: None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=f" {unit}", file=out, mininterval=0.1, dynamic_ncols=True)

    def advance() -> None:
        bar.update(1)

    try:
        yield advance
    finally:
        bar.close()
