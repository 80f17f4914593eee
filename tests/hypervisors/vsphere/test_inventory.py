"""The inventory: every VM with its state, in one property-collector round trip."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pyVmomi.SoapAdapter import SoapStubAdapter

from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import VM, cli_connection, connect, run_cli
from vmkeep.hypervisors.exceptions import VMNotFound
from vmkeep.hypervisors.vsphere.inventory import find_vm, list_vms


def test_one_round_trip_lists_every_vm_whatever_their_number(
    vcsim_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    vc = vcsim_factory(vms=6)  # 6 per host and per resource pool
    calls: list[str] = []
    original = SoapStubAdapter.InvokeMethod

    def counting(self: Any, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:  # noqa: N803
        calls.append(info.name)
        return original(self, mo, info, args, outerStub)

    with connect(vc) as conn:
        monkeypatch.setattr(SoapStubAdapter, "InvokeMethod", counting)  # a spy: the calls still go out
        vms = list_vms(conn)
        monkeypatch.undo()
    assert len(vms) >= 12
    assert calls.count("RetrievePropertiesEx") == 1
    assert len(calls) <= 4  # content, view, properties, destroy view: not one call per VM
    vm = next(v for v in vms if v.name == VM)
    assert vm.power_state == "poweredOn" and vm.cbt_supported and not vm.cbt_enabled
    assert [d.capacity for d in vm.disks] == [16 * 1024 * 1024]
    assert vm.folder == "/DC0/vm" and vm.host.startswith("host-") and len(vm.datastores) == 1  # placement


def test_find_vm_and_the_vms_command(vcsim: Vcsim) -> None:
    with connect(vcsim) as conn:
        assert find_vm(conn, VM).name == VM
        with pytest.raises(VMNotFound, match="no VM named 'nope'"):
            find_vm(conn, "nope")
    result = run_cli(vcsim, "vms", *cli_connection(vcsim), "--json")
    assert result.code == 0, result.err
    listed = {v["name"]: v for v in json.loads(result.out)}
    assert listed[VM]["cbt_enabled"] is False and listed[VM]["disks"][0]["capacity"] == 16 * 1024 * 1024
    text = run_cli(vcsim, "vms", *cli_connection(vcsim))
    assert text.code == 0 and VM in text.out and "CBT" in text.out
