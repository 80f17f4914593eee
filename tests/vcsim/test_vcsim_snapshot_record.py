# mypy: disable-error-code="no-untyped-call"
"""The record of concurrent snapshots per host, which the fleet's tests check their limits against."""

from __future__ import annotations

from tests.fixtures.vcsim import Vcsim, find_vm, remove_snapshot, snapshot


def test_snapshots_are_counted_per_host_now_and_at_most(vcsim: Vcsim) -> None:
    si = vcsim.connect()
    first, second = find_vm(si, "DC0_H0_VM0"), find_vm(si, "DC0_H0_VM1")
    host = first.runtime.host._moId
    assert vcsim.api.snapshots()[host] == (0, 0)

    one = snapshot(first, "a")
    two = snapshot(second, "b")
    three = snapshot(first, "c")  # two on one VM count twice: each is a delta on the datastore
    assert vcsim.api.snapshots()[host] == (3, 3)
    remove_snapshot(three)
    remove_snapshot(one)
    assert vcsim.api.snapshots()[host] == (1, 3)
    others = {h: v for h, v in vcsim.api.snapshots().items() if h != host}
    assert all(v == (0, 0) for v in others.values()), others

    vcsim.api.reset_snapshot_record()
    assert vcsim.api.snapshots()[host] == (1, 1)
    remove_snapshot(two)
    assert vcsim.api.snapshots()[host] == (0, 1)
