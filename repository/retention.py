"""Which recovery points to forget: a retention policy (restic's ``--keep-*``), or points chosen by id.

Points are judged per chain (``ChainKey``: VM name, kind of source, the source's chain id), the
same key a backup uses to find the base of its incremental: two VMs called web01 on two vCenters
are judged apart, so a policy never lets one VM's points crowd out the other's. Within a chain,
newest first, ``last`` keeps the N newest, and each calendar rule keeps the newest point of each
of the N most recent hours/days/weeks/months/years that have one. A point kept by any rule is
kept; the reasons are reported. Calendar periods are taken in the time zone given (the agent's
local zone by default), weeks are ISO weeks.

Every rule with N >= 1 keeps the newest point of every chain, and an empty policy is refused, so
a policy always keeps at least one point per chain. Forgetting points by id can empty a chain;
``ChainDecisions.keeps_none`` says so, and the CLI warns (the next backup of that VM is a full
read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from .points import ChainKey, RecoveryPoint


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


@dataclass(frozen=True)
class ChainDecisions:
    """The decisions for every point of one chain, newest first."""

    chain: ChainKey
    decisions: tuple[Decision, ...]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    @property
    def removed(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def keeps_none(self) -> bool:
        """Every point of this chain goes: its next backup has no base and reads everything."""
        return bool(self.decisions) and not self.kept


_Bucket = Callable[[datetime], tuple[int, ...]]
_RULES: list[tuple[str, _Bucket]] = [
    ("hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar()[:2])),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: (t.year,)),
]


def by_chain(points: Iterable[RecoveryPoint]) -> list[tuple[ChainKey, list[RecoveryPoint]]]:
    """Points grouped by chain, chains in name order, each chain's points newest first.

    A point that records no chain id (none of today's sources writes one) is a chain of its own kind.
    """
    groups: dict[ChainKey, list[RecoveryPoint]] = {}
    for p in points:
        groups.setdefault(p.chain_key, []).append(p)
    return [
        (key, sorted(groups[key], key=lambda p: (p.time, p.id), reverse=True))
        for key in sorted(groups, key=lambda k: k.sort_key)
    ]


def apply_policy(
    points: list[RecoveryPoint], policy: RetentionPolicy, tz: tzinfo | None = None
) -> list[ChainDecisions]:
    """Decisions for every point, per chain."""
    if policy.empty():
        raise ValueError("an empty retention policy would forget every point; give at least one --keep-*")
    result: list[ChainDecisions] = []
    for chain, newest_first in by_chain(points):
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
        result.append(ChainDecisions(chain, tuple(group)))
    return result


def choose_points(points: list[RecoveryPoint], forget: set[str]) -> list[ChainDecisions]:
    """Decisions for forgetting the points whose ids are in ``forget``, for the chains they belong to."""
    result: list[ChainDecisions] = []
    for chain, newest_first in by_chain(points):
        if any(p.id in forget for p in newest_first):
            decisions = [
                Decision(p, keep=p.id not in forget, reasons=[] if p.id in forget else ["not chosen"])
                for p in newest_first
            ]
            result.append(ChainDecisions(chain, tuple(decisions)))
    return result
