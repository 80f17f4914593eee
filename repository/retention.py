"""Which recovery points a retention policy keeps (restic's ``forget --keep-*`` semantics).

Points are judged per VM, newest first. ``last`` keeps the N newest. Each calendar rule keeps
the newest point of each of the N most recent hours/days/weeks/months/years that have one.
A point kept by any rule is kept; the reasons are reported. Calendar periods are taken in the
time zone given (the agent's local zone by default), weeks are ISO weeks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from .points import RecoveryPoint


@dataclass(frozen=True)
class RetentionPolicy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def empty(self) -> bool:
        return not any((self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly))


@dataclass
class Decision:
    point: RecoveryPoint
    keep: bool
    reasons: list[str] = field(default_factory=list)


_Bucket = Callable[[datetime], tuple[int, ...]]
_RULES: list[tuple[str, _Bucket]] = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
]


def apply_policy(points: list[RecoveryPoint], policy: RetentionPolicy, tz: tzinfo | None = None) -> list[Decision]:
    """Decisions for every point, grouped by VM, newest first within each VM."""
    if policy.empty():
        raise ValueError("an empty retention policy would forget every point; give at least one --keep-*")
    by_vm: dict[str, list[RecoveryPoint]] = {}
    for p in points:
        by_vm.setdefault(p.vm, []).append(p)
    decisions: list[Decision] = []
    for vm in sorted(by_vm):
        newest_first = sorted(by_vm[vm], key=lambda p: (p.time, p.id), reverse=True)
        group = [Decision(p, False) for p in newest_first]
        for i, d in enumerate(group[: policy.last]):
            d.keep = True
            d.reasons.append(f"last {i + 1}")
        for name, bucket in _RULES:
            wanted: int = getattr(policy, name)
            seen: set[tuple[int, ...]] = set()
            for d in group:
                if len(seen) >= wanted:
                    break
                key = bucket(d.point.time.astimezone(tz))
                if key not in seen:
                    seen.add(key)
                    d.keep = True
                    d.reasons.append(f"{name} {len(seen)}")
        decisions.extend(group)
    return decisions
