"""Resilient Change Tracking of one simulated VHDX: an epoch, a sequence number and a write log.

Ids look like Hyper-V's, ``rctX:<epoch GUID, with colons>:<sequence, 8 hex digits>``. Every
guest write is logged with the sequence number in force. A recovery checkpoint *freezes* a
sequence number (later writes get the next one); converting that checkpoint to a reference
point makes ``id(frozen)`` that disk's RCT id. The changes since an id are the writes logged
after it and up to the frozen sequence of the checkpoint asked about. Resetting tracking
starts a new epoch: every older id is refused, as Hyper-V refuses ids after its tracking data
was lost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

ERROR_VHD_INVALID_CHANGE_TRACKING_ID = 0xC03A0029
ERROR_VHD_CHANGE_TRACKING_DISABLED = 0xC03A002A
ERROR_VHD_MISSING_CHANGE_TRACKING_INFORMATION = 0xC03A0030


class RctRefused(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _epoch() -> str:
    return str(uuid.uuid4()).replace("-", ":")


@dataclass
class RctTracker:
    epoch: str = field(default_factory=_epoch)
    seq: int = 1
    enabled: bool = True
    log: list[tuple[int, int, int]] = field(default_factory=list)  # (seq, offset, length)

    def id_of(self, seq: int) -> str:
        return f"rctX:{self.epoch}:{seq:08x}"

    def record(self, offset: int, length: int) -> None:
        if self.enabled:
            self.log.append((self.seq, offset, length))

    def freeze(self) -> int:
        """The sequence a checkpoint taken now stands for; later writes come after it."""
        frozen = self.seq
        self.seq += 1
        return frozen

    def reset(self) -> None:
        """Tracking data lost: a new epoch, an empty log, every earlier id refused."""
        self.epoch = _epoch()
        self.log.clear()

    def parse(self, rct_id: str) -> int:
        """The sequence of an id of this epoch; RctRefused for any other."""
        if not self.enabled:
            raise RctRefused("change tracking is disabled for this virtual disk", ERROR_VHD_CHANGE_TRACKING_DISABLED)
        parts = rct_id.split(":")
        if len(parts) < 3 or parts[0] != "rctX" or ":".join(parts[1:-1]) != self.epoch:
            raise RctRefused("the change tracking identifier is not valid", ERROR_VHD_INVALID_CHANGE_TRACKING_ID)
        try:
            seq = int(parts[-1], 16)
        except ValueError:
            raise RctRefused(
                "the change tracking identifier is not valid", ERROR_VHD_INVALID_CHANGE_TRACKING_ID
            ) from None
        if seq >= self.seq:
            raise RctRefused("the change tracking identifier is not valid", ERROR_VHD_INVALID_CHANGE_TRACKING_ID)
        return seq

    def changes(self, since: int, upto: int) -> list[tuple[int, int]]:
        """Sorted, merged (offset, length) of the writes logged after ``since`` up to ``upto``."""
        spans = sorted((off, off + n) for s, off, n in self.log if since < s <= upto and n > 0)
        merged: list[list[int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        return [(a, b - a) for a, b in merged]
