"""The TLS options on the command line: plain http refused or loud, and --insecure warning once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere import VM, run_cli

CLEAR = "http://127.0.0.1:9"
REFUSED = f"refusing to send the vCenter password in clear over {CLEAR}; use https or --allow-cleartext"


@pytest.fixture
def cli_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K").code == 0
    return repo


def _env() -> dict[str, str]:
    return {"VMKEEP_PASSWORD": "secret"}


def test_http_is_refused_with_usage_exit_before_anything_else(tmp_path: Path) -> None:
    missing_repo = tmp_path / "no-repo"  # the URL is refused before the repository is looked at
    for argv in (
        ["vms", "--vcenter", CLEAR, "--user", "u"],
        ["backup", "--vcenter", CLEAR, "--user", "u", "--vm", VM, "--repo", missing_repo],
        ["restore", "latest", "--repo", missing_repo, "--to-host", CLEAR, "--user", "u", "--datastore", "ds"],
    ):
        result = run_vmkeep(*argv, env=_env())
        assert_one_line_error(result, REFUSED)
        assert result.code == 2


@pytest.mark.parametrize(
    ("option", "named"),
    [
        (["--thumbprint", "ab" * 32], "--thumbprint needs TLS"),
        (["--ca-file", "/etc/hostname"], "--ca-file needs TLS"),
        (["--insecure"], "--insecure needs TLS"),
    ],
)
def test_tls_options_with_http_are_a_usage_error(option: list[str], named: str) -> None:
    for extra in ([], ["--allow-cleartext"]):
        result = run_vmkeep("vms", "--vcenter", CLEAR, "--user", "u", *option, *extra, env=_env())
        assert_one_line_error(result, named, f"{CLEAR} is plain http")
        assert result.code == 2


def test_allow_cleartext_works_and_warns_once(vcsim_http: Vcsim) -> None:
    url = f"http://{vcsim_http.host}:{vcsim_http.port}"
    result = run_cli(vcsim_http, "vms", "--vcenter", url, "--user", vcsim_http.user, "--allow-cleartext", "--json")
    assert result.code == 0, result.err
    assert VM in result.out
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("vmkeep: WARNING: sending the vCenter password and all data IN CLEAR over " + url)


def test_insecure_warns_exactly_once_for_a_whole_backup(vcsim: Vcsim, cli_repo: Path) -> None:
    server = f"{vcsim.host}:{vcsim.port}"
    args = ["backup", "--vcenter", server, "--user", vcsim.user, "--vm", VM, "--repo", cli_repo, "--json", "-q"]
    result = run_cli(vcsim, *args, "--insecure")
    assert result.code == 0, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert lines == [  # urllib3's InsecureRequestWarning for every read is silenced
        f"vmkeep: WARNING: TLS verification is OFF for {vcsim.host} (--insecure): the connection can be intercepted",
        f"vmkeep: WARNING: {VM}: change tracking was off; vmkeep enabled it, "
        "and it takes effect with this backup's snapshot",
    ]
