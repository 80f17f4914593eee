"""How the engine reports progress. The CLI renders it; library callers may ignore it."""

from __future__ import annotations

import logging

log = logging.getLogger("vmkeep.agent.engine")


class Progress:
    """Receives progress events. The base class ignores them all."""

    def disk_started(self, vm: str, disk: str, total_bytes: int, mode: str, reason: str | None) -> None:
        """A disk's read begins: ``total_bytes`` will be read (``mode`` full or incremental).

        ``disk`` is the disk as people call it: its label ("Hard disk 1"), else "disk KEY".
        """

    def advance(self, nbytes: int) -> None:
        """``nbytes`` more were read (backup) or written (restore)."""

    def disk_finished(self, disk: str) -> None:
        """The disk is done."""

    def warn(self, message: str) -> None:
        """Something the administrator must see, such as a failed CBT sanity check (logged here)."""
        log.warning("%s", message)
