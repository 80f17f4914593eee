"""Exit codes: one table in the code (agent/commands/common.py), the same in the README, a test per row."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fixtures.images import make_image
from tests.fixtures.repos import CliResult, assert_one_line_error, run_vmkeep
from vmkeep.agent.commands.common import EXIT_CODES, exit_code
from vmkeep.agent.exceptions import ConfigError
from vmkeep.repository.exceptions import CorruptRepository, FileMissing, RepositoryError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def two_vms(tmp_path: Path) -> Path:
    """A repository with points of two VMs, web01 and db01."""
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K", "--pack-size", "1M").code == 0
    for name, seed in (("web01", 1), ("db01", 2)):
        image = make_image(tmp_path / f"{name}.img", 200_000, seed=seed)
        result = run_vmkeep("backup-image", image, "--name", name, "--repo", repo)
        assert result.code == 0, result.err
    return repo


def _error(result: CliResult, code: int, *fragments: str) -> None:
    assert_one_line_error(result, *fragments)
    assert result.code == code, result


def test_the_readme_lists_every_row_of_the_table() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = set(re.findall(r"^\| (\d+) \| (.+?) \|$", readme, re.MULTILINE))
    for _, code, what in EXIT_CODES:
        assert (str(code), what) in rows, f"README lacks the row | {code} | {what} |"


def test_subclasses_come_before_their_bases() -> None:
    assert exit_code(FileMissing("x")) == 3  # a CorruptRepository, itself a RepositoryError (1)
    assert exit_code(CorruptRepository("x")) == 3
    assert exit_code(RepositoryError("x")) == 1
    assert exit_code(ConfigError("x")) == 2
    assert exit_code(ValueError("x")) is None  # a bug: the CLI says "unexpected" and exits 1
    classes = [cls for cls, _, _ in EXIT_CODES]
    for i, cls in enumerate(classes):
        for base in classes[:i]:
            assert not issubclass(cls, base) or cls is base, f"{cls.__name__} is shadowed by {base.__name__}"


def test_usage_and_configuration_errors_exit_2(two_vms: Path, tmp_path: Path) -> None:
    _error(run_vmkeep("points"), 2, "no repository given")  # ConfigError
    _error(run_vmkeep("points", "--repo", tmp_path / "nope"), 2, "does not exist")  # NotARepository
    (tmp_path / "empty").mkdir()
    _error(run_vmkeep("points", "--repo", tmp_path / "empty"), 2, "not a vmkeep repository")
    _error(run_vmkeep("init", two_vms), 2, "already holds a repository")  # RepositoryExists
    hints = tmp_path / "hints.json"
    hints.write_text("[{")
    image = tmp_path / "web01.img"
    _error(run_vmkeep("backup-image", image, "--repo", two_vms, "--hints", hints), 2, "not JSON")  # HintsError


def test_a_missing_passphrase_is_the_same_error_for_init_and_points(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    _error(run_vmkeep("init", repo, "--encrypt"), 2, "VMKEEP_PASSPHRASE")
    assert not repo.exists()
    assert run_vmkeep("init", repo, "--encrypt", env={"VMKEEP_PASSPHRASE": "right"}).code == 0
    _error(run_vmkeep("points", "--repo", repo), 2, "VMKEEP_PASSPHRASE")  # PassphraseRequired
    _error(run_vmkeep("points", "--repo", repo, env={"VMKEEP_PASSPHRASE": "wrong"}), 2, "wrong passphrase")


def test_init_refuses_a_passphrase_file_without_encrypt(tmp_path: Path) -> None:
    secret = tmp_path / "pass"
    secret.write_text("s3cret\n")
    repo = tmp_path / "repo"
    _error(run_vmkeep("init", repo, "--passphrase-file", secret), 2, "--passphrase-file without --encrypt")
    assert not repo.exists()
    assert run_vmkeep("init", repo, "--passphrase-file", secret, "--encrypt").code == 0
    assert json.loads((repo / "config").read_text())["encryption"] == "aes-256-gcm"


def test_latest_with_several_vms_asks_for_latest_vm(two_vms: Path, tmp_path: Path) -> None:
    result = run_vmkeep("restore", "latest", "--repo", two_vms, "--to-dir", tmp_path / "out")
    _error(result, 2, "'latest' is ambiguous", "2 VMs (db01, web01)", "latest:VM")  # AmbiguousPoint
    assert not (tmp_path / "out").exists()
    _error(run_vmkeep("forget", "latest", "--repo", two_vms), 2, "latest:VM")
    restored = run_vmkeep("restore", "latest:db01", "--repo", two_vms, "--to-dir", tmp_path / "out", "--json")
    assert restored.code == 0, restored.err
    [disk] = json.loads(restored.out)["disks"]
    assert Path(disk["path"]).read_bytes() == (tmp_path / "db01.img").read_bytes()


def test_restore_to_host_names_only_what_is_missing(two_vms: Path) -> None:
    base = ("restore", "latest:web01", "--repo", two_vms, "--to-host", "vc.example.com")
    only_datastore = run_vmkeep(*base, "--user", "backup@vsphere.local")
    _error(only_datastore, 2, "--to-host needs --datastore")
    assert "--user" not in only_datastore.err
    _error(run_vmkeep(*base, "--datastore", "ds1"), 2, "--to-host needs --user")
    _error(run_vmkeep(*base), 2, "--to-host needs --user and --datastore")


def test_failures_exit_1_and_damage_exits_3(two_vms: Path, tmp_path: Path) -> None:
    _error(run_vmkeep("restore", "deadbeef", "--repo", two_vms, "--to-dir", tmp_path / "o"), 1, "no recovery point")
    _error(run_vmkeep("backup-image", tmp_path / "missing.img", "--repo", two_vms), 1, "cannot open image")
    (two_vms / "config").write_text("{ garbage")
    _error(run_vmkeep("points", "--repo", two_vms), 3, "corrupt repository: config")


def test_with_json_a_failure_also_prints_an_error_document(tmp_path: Path) -> None:
    result = run_vmkeep("points", "--repo", tmp_path / "nope", "--json")
    _error(result, 2, "does not exist")
    assert json.loads(result.out) == {"error": f"{tmp_path / 'nope'} does not exist", "code": 2}


def test_version() -> None:
    result = run_vmkeep("--version")
    assert result.code == 0
    assert re.fullmatch(r"vmkeep \d+\.\d+\.\d+\S*\n", result.out)
