"""The platform registry: kinds to classes, imported only when used, and a clear line when not installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.images import make_image
from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from vmkeep.hypervisors import platforms
from vmkeep.hypervisors.exceptions import NoRestoreToHost, PlatformNotInstalled, SourceError
from vmkeep.hypervisors.platforms import Endpoint, PlatformKind, RestoreTarget, SessionOptions, open_platform

# Runs a command in a fresh interpreter and prints the modules it loaded. (``python -X importtime``
# misses modules loaded by importlib.import_module, as the registry loads them: sys.modules has all.)
SHOW_MODULES = """
import json, sys
from vmkeep.agent.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _imported(*argv: str | Path) -> set[str]:
    """The modules a ``vmkeep`` command imports."""
    proc = subprocess.run(
        [sys.executable, "-c", SHOW_MODULES, *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    doc = json.loads(proc.stdout.splitlines()[-1])
    assert doc["code"] == 0, proc.stderr
    return set(doc["modules"])


def test_an_image_backup_and_restore_never_import_pyvmomi(repo_path: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "vm.img", 200_000)
    for argv in (
        ("backup-image", image, "--repo", repo_path, "-q"),
        ("restore", "latest", "--repo", repo_path, "--to-dir", tmp_path / "out", "-q"),
    ):
        modules = _imported(*argv)
        assert ("vmkeep.hypervisors.image.platform" in modules) == (argv[0] == "backup-image")
        assert not {m for m in modules if m.startswith(("pyVmomi", "vmkeep.hypervisors.vsphere", "requests"))}


def test_every_registered_platform_names_its_kind() -> None:
    for kind in (PlatformKind.IMAGE, PlatformKind.VSPHERE):
        assert platforms.platform_class(kind).kind is kind
    assert platforms.platform_kind("vsphere") is PlatformKind.VSPHERE
    with pytest.raises(SourceError, match="unknown kind of source 'xen'"):
        platforms.platform_kind("xen")


def test_a_platform_that_is_not_installed_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Hyper-V's module arrives with its extra; a module that does not exist stands in for it missing.
    entry = platforms._Entry("vmkeep.hypervisors.not_here.platform:HypervPlatform", "Hyper-V", "a Hyper-V VM", "hyperv")
    monkeypatch.setitem(platforms.REGISTRY, PlatformKind.HYPERV, entry)
    with pytest.raises(PlatformNotInstalled) as caught:
        platforms.platform_class(PlatformKind.HYPERV)
    assert str(caught.value).startswith("Hyper-V support is not installed: pip install 'vmkeep[hyperv]'")


def test_an_image_platform_has_one_vm_and_no_host(tmp_path: Path) -> None:
    image = make_image(tmp_path / "web01.img", 300_000)
    with open_platform(PlatformKind.IMAGE, Endpoint(str(image))) as platform:
        [vm] = platform.list_vms()
        assert (vm.name, [(d.key, d.capacity) for d in vm.disks]) == ("web01", [("disk0", 300_000)])
        with platform.open_session("", SessionOptions()) as session:
            assert session.vm_name == "web01" and session.source_info()["type"] == "image"
        with pytest.raises(NoRestoreToHost, match="restore it with --to-dir"):
            platform.restore_to_host({}, [], RestoreTarget("x"))


def test_restore_to_host_refuses_a_point_of_another_platform_in_one_line(repo_path: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "web01.img", 100_000)
    assert run_vmkeep("backup-image", image, "--repo", repo_path, "-q").code == 0
    host = ["--to-host", "https://vc.example.com", "--user", "u", "--datastore", "ds1"]
    result = run_vmkeep("restore", "latest", "--repo", repo_path, *host, env={"VMKEEP_PASSWORD": "x"})
    assert_one_line_error(result, "was made from a disk image, not a vSphere VM", "restore it with --to-dir")
    assert result.code == 2
