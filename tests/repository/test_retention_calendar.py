"""Retention on a synthetic calendar of thousands of points, against an independent GFS computation.

The expected selection is computed another way than ``apply_policy`` does: points are grouped
into periods by formatted calendar keys, each period is represented by its newest point, and the
N periods whose newest points are newest are kept; ``last`` is a slice of the sorted points.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.retention import RetentionPolicy, apply_policy

PERIOD_KEYS = {
    "hourly": lambda t: t.strftime("%Y-%m-%d %H"),
    "daily": lambda t: t.strftime("%Y-%m-%d"),
    "weekly": lambda t: "{:04d}-W{:02d}".format(*t.isocalendar()[:2]),
    "monthly": lambda t: t.strftime("%Y-%m"),
    "yearly": lambda t: t.strftime("%Y"),
}


def calendar(vm: str, seed: int, count: int) -> list[RecoveryPoint]:
    """``count`` points at irregular times over about three years: bursts, gaps and quiet weeks."""
    rng = random.Random(seed)
    t = datetime(2024, 12, 28, 22, 15, tzinfo=UTC)  # starts across a year and an ISO-week boundary
    points = []
    for i in range(count):
        t += timedelta(minutes=rng.choice([7, 45, 61, 180, 600, 1440, 1500, 4000, 11000]))
        points.append(RecoveryPoint(vm=vm, time=t, disks=[], block_size=1, id=f"{vm}-{i:05d}"))
    return points


def expected_keep(points: list[RecoveryPoint], policy: RetentionPolicy, tz: timezone) -> set[str]:
    by_vm: dict[str, list[RecoveryPoint]] = {}
    for p in points:
        by_vm.setdefault(p.vm, []).append(p)
    keep: set[str] = set()
    for vm_points in by_vm.values():
        ordered = sorted(vm_points, key=lambda p: p.time)
        if policy.last:
            keep.update(p.id for p in ordered[-policy.last :])
        for rule, key_of in PERIOD_KEYS.items():
            wanted = getattr(policy, rule)
            if not wanted:
                continue
            newest: dict[str, RecoveryPoint] = {}
            for p in ordered:  # oldest to newest: the last one seen in a period is its newest
                newest[key_of(p.time.astimezone(tz))] = p
            representatives = sorted(newest.values(), key=lambda p: p.time)
            keep.update(p.id for p in representatives[-wanted:])
    return keep


POLICIES = [
    RetentionPolicy(last=7),
    RetentionPolicy(hourly=48),
    RetentionPolicy(daily=14, weekly=8, monthly=12, yearly=3),
    RetentionPolicy(last=3, hourly=24, daily=30, weekly=52, monthly=24, yearly=10),
    RetentionPolicy(weekly=400),  # more weeks than the calendar has: every week's newest point
    RetentionPolicy(monthly=1, yearly=1),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: "-".join(f"{k}{v}" for k, v in vars(p).items() if v))
@pytest.mark.parametrize("tz", [UTC, timezone(timedelta(hours=-7)), timezone(timedelta(hours=5, minutes=30))])
def test_the_selection_matches_an_independent_computation(policy: RetentionPolicy, tz: timezone) -> None:
    points = calendar("web01", 1, 1200) + calendar("db01", 2, 900)
    decisions = [d for chain in apply_policy(points, policy, tz) for d in chain.decisions]
    assert len(decisions) == len(points) == 2100
    kept = {d.point.id for d in decisions if d.keep}
    assert kept == expected_keep(points, policy, tz)
    for d in decisions:  # a kept point says why; a forgotten one has no reason
        assert bool(d.reasons) == d.keep


def test_the_calendar_is_what_it_claims() -> None:
    points = calendar("web01", 1, 1200)
    assert len({p.time for p in points}) == 1200
    assert points[-1].time - points[0].time > timedelta(days=3 * 365)
    assert len({PERIOD_KEYS["yearly"](p.time) for p in points}) >= 4
