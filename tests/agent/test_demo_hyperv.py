"""`vmkeep demo --hyperv`: the Hyper-V story on the simulated host, run as a user runs it (smaller)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.repos import run_vmkeep
from vmkeep.hypervisors.hyperv.simulator.samba import smbd_usable


def test_hyperv_demo_passes(tmp_path: Path) -> None:
    result = run_vmkeep("demo", "--hyperv", "--dir", tmp_path, "--size", "16M", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert doc["ok"], doc
    steps = {s["what"]: s for s in doc["steps"]}
    assert "(incremental)" in steps["incremental backup (RCT)"]["detail"]
    assert sum("to a file" in what and "identical to" in s["detail"] for what, s in steps.items()) == 2
    if smbd_usable() is None:
        [host] = [s for what, s in steps.items() if what.endswith("to the host")]
        assert "identical to the frozen disk" in host["detail"]
    else:
        pytest.skip(f"restore to host needs smbd: {smbd_usable()}")
