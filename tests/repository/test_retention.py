"""Retention follows restic's --keep-* rules, per VM."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vmkeep.repository.points import ChainKey, RecoveryPoint
from vmkeep.repository.retention import ChainDecisions, Decision, RetentionPolicy, apply_policy, choose_points


def _points(vm: str, start: datetime, count: int, step: timedelta) -> list[RecoveryPoint]:
    return [
        RecoveryPoint(
            vm=vm,
            time=start + i * step,
            disks=[],
            block_size=1,
            source={"type": "image", "path": f"/dev/{vm}", "chain": f"/dev/{vm}"},
            id=f"{vm}-{i:04d}",
        )
        for i in range(count)
    ]


def _flat(chains: list[ChainDecisions]) -> list[Decision]:
    return [d for chain in chains for d in chain.decisions]


def _kept(chains: list[ChainDecisions], vm: str | None = None) -> list[str]:
    return sorted(d.point.id for d in _flat(chains) if d.keep and (vm is None or d.point.vm == vm))


START = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def test_keep_last() -> None:
    points = _points("a", START, 10, timedelta(hours=1))
    assert _kept(apply_policy(points, RetentionPolicy(last=3), UTC)) == ["a-0007", "a-0008", "a-0009"]


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    points = _points("a", START, 24 * 5, timedelta(hours=1))  # five days, hourly
    kept = _kept(apply_policy(points, RetentionPolicy(daily=3), UTC))
    assert kept == ["a-0071", "a-0095", "a-0119"]  # 23:30 of days 3, 4 and 5


def test_weekly_monthly_yearly_over_three_years() -> None:
    points = _points("a", START, 3 * 365, timedelta(days=1))  # daily, 2026-01-01 .. 2028-12-30
    decisions = _flat(apply_policy(points, RetentionPolicy(weekly=2, monthly=3, yearly=5), UTC))
    kept = {d.point.time.date().isoformat(): d.reasons for d in decisions if d.keep}
    assert kept == {
        "2028-12-30": ["weekly 1", "monthly 1", "yearly 1"],
        "2028-12-24": ["weekly 2"],  # the Sunday ending the previous ISO week
        "2028-11-30": ["monthly 2"],
        "2028-10-31": ["monthly 3"],
        "2027-12-31": ["yearly 2"],
        "2026-12-31": ["yearly 3"],  # only three years have points
    }


def test_policy_is_applied_per_vm_and_reasons_are_given() -> None:
    points = _points("a", START, 5, timedelta(days=1)) + _points("b", START, 5, timedelta(days=1))
    decisions = apply_policy(points, RetentionPolicy(last=1, daily=2), UTC)
    assert _kept(decisions, "a") == ["a-0003", "a-0004"]
    assert _kept(decisions, "b") == ["b-0003", "b-0004"]
    newest = next(d for d in _flat(decisions) if d.point.id == "a-0004")
    assert newest.reasons == ["last 1", "daily 1"]


def test_empty_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="forget every point"):
        apply_policy(_points("a", START, 2, timedelta(days=1)), RetentionPolicy(), UTC)


def test_a_thousand_points_are_judged_quickly_and_correctly() -> None:
    points = _points("a", START, 1000, timedelta(hours=6))
    decisions = apply_policy(points, RetentionPolicy(last=7, daily=30, weekly=8, monthly=12, yearly=3), UTC)
    assert len(_flat(decisions)) == 1000
    kept = _kept(decisions)
    assert "a-0999" in kept and len(kept) < 60


def _chain(vm: str, chain: str, start: datetime, count: int) -> list[RecoveryPoint]:
    return [
        RecoveryPoint(
            vm=vm,
            time=start + timedelta(days=i),
            disks=[],
            block_size=1,
            source={"type": "vsphere", "chain": chain},
            id=f"{chain}-{i:04d}",
        )
        for i in range(count)
    ]


def test_two_vms_of_one_name_are_two_chains() -> None:
    """web01 on two vCenters: a newer point of one must not crowd the other out of --keep-last 1."""
    old = _chain("web01", "uuid-a", START, 3)
    new = _chain("web01", "uuid-b", START + timedelta(days=10), 3)
    chains = apply_policy(old + new, RetentionPolicy(last=1), UTC)
    assert [c.chain.chain for c in chains] == ["uuid-a", "uuid-b"]
    assert _kept(chains) == ["uuid-a-0002", "uuid-b-0002"]
    assert chains[0].chain.describe() == "VM web01 (vsphere uuid-a)"


def test_the_chain_key_is_the_one_backups_continue() -> None:
    """Retention groups by the key whose ``continues`` picks the base of an incremental."""
    a, b = _chain("web01", "uuid-a", START, 1)[0], _chain("web01", "uuid-b", START, 1)[0]
    assert a.chain_key == ChainKey.of("web01", {"type": "vsphere", "chain": "uuid-a"})
    assert a.chain_key.continues(ChainKey.of("web01", a.source))
    assert not a.chain_key.continues(b.chain_key)
    assert not a.chain_key.continues(ChainKey.of("web01", {"type": "image", "chain": "uuid-a"}))
    assert a.chain_key.continues(ChainKey.of("web01", {"type": "vsphere"}))  # a source without chain id


@pytest.mark.parametrize(
    "policy",
    [RetentionPolicy(last=1), RetentionPolicy(hourly=1), RetentionPolicy(daily=1), RetentionPolicy(yearly=1)],
)
def test_every_rule_keeps_the_newest_point_of_every_chain(policy: RetentionPolicy) -> None:
    points = (
        _chain("a", "x", START, 40)
        + _chain("a", "y", START - timedelta(days=900), 2)
        + _points("b", START, 3, timedelta(minutes=5))
    )
    for chain in apply_policy(points, policy, UTC):
        assert not chain.keeps_none
        assert chain.decisions[0].keep  # newest first, and kept


def test_choosing_every_point_of_a_chain_is_flagged() -> None:
    points = _chain("web01", "uuid-a", START, 2) + _chain("db01", "uuid-b", START, 2)
    chains = choose_points(points, {"uuid-a-0000", "uuid-a-0001", "uuid-b-0000"})
    by_vm = {c.chain.vm: c for c in chains}
    assert by_vm["web01"].keeps_none and not by_vm["db01"].keeps_none
    assert [d.point.id for d in by_vm["db01"].removed] == ["uuid-b-0000"]
    assert choose_points(points, set()) == []
