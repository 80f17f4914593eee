"""The job file: every mistake rejected with its key path, line and exit status 2; logins checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from tests.fixtures.vcsim import Vcsim

VALID = """
[sources.vc1]
url = "vc.example.com"
user = "backup@vsphere.local"
password_file = "/etc/vmkeep/vc1.password"
thumbprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01"

[repositories.main]
path = "/srv/backup/repo"
passphrase_env = "REPO_PASSPHRASE"

[jobs.web]
source = "vc1"
repository = "main"
vms = ["web01", "web02"]
schedule = "0 2 * * *"
retries = { count = 2, delay = 300 }

[jobs.web.retention]
last = 7
daily = 14

[jobs.db]
source = "vc1"
repository = "main"
vms = ["db*"]
folders = ["/DC0/vm/databases"]
schedule = "*/30 * * * * *"
full_every = 30
sanity_sample = 0
concurrency = 1
webhook = "http://127.0.0.1:9999/hook"
"""


def _check(tmp_path: Path, text: str) -> tuple[int, str, str]:
    path = tmp_path / "vmkeep.toml"
    path.write_text(text)
    result = run_vmkeep("config", "check", "--offline", "--config", path)
    return result.code, result.out, result.err


def test_a_valid_file_passes(tmp_path: Path) -> None:
    code, out, err = _check(tmp_path, VALID)
    assert code == 0, err
    assert "1 source(s), 1 repository(ies), 2 job(s)" in out


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("retries = { count = 2, delay = 300 }", "retries = { count = 2, delay = 300 }\nretension = 3"),
            "jobs.web.retension (line 18): unknown key",
        ),
        (('schedule = "0 2 * * *"', 'schedule = "0 25 * * *"'), "jobs.web.schedule (line 16): not a valid cron"),
        (('schedule = "0 2 * * *"', 'schedule = "daily"'), "jobs.web.schedule (line 16): a cron schedule has 5"),
        (('vms = ["db*"]', 'vms = ["db*", "web02"]'), "jobs.db.vms (line 26): VM 'web02' is also in job 'web'"),
        (('vms = ["db*"]', 'vms = ["db*", "web*"]'), "jobs.web.vms (line 15): VM 'web01' also matches 'web*' of job"),
        (('password_file = "/etc/vmkeep/vc1.password"\n', ""), "sources.vc1 (line 2): no password source"),
        (
            ("daily = 14", "daily = -1"),
            "jobs.web.retention.daily (line 21): Input should be greater than or equal to 0",
        ),
        (
            ("sanity_sample = 0", "sanity_sample = -1"),
            "jobs.db.sanity_sample (line 30): Input should be greater than or equal to 0",
        ),
        (("daily = 14", "daily = 1.5"), "jobs.web.retention.daily (line 21): Input should be a valid integer"),
        (("daily = 14", 'daily = "14"'), "jobs.web.retention.daily (line 21): Input should be a valid integer"),
        (("last = 7\ndaily = 14", "last = 0"), "jobs.web.retention (line 19): keeps nothing"),
        (
            ('repository = "main"\nvms = ["web01"', 'repository = "mian"\nvms = ["web01"'),
            "jobs.web.repository (line 14): no repository named 'mian'",
        ),
        (("[jobs.db]", "[jobs.db"), "not valid TOML: Expected ']' at the end of a table declaration (at line 23"),
        (
            ('url = "vc.example.com"\nuser', 'url = "http://vc.example.com"\nuser'),
            "sources.vc1 (line 2): thumbprint needs TLS, but http://vc.example.com is plain http",
        ),
        (
            (
                'url = "vc.example.com"\nuser = "backup@vsphere.local"\npassword_file = "/etc/vmkeep/vc1.password"\n'
                'thumbprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01"',
                'url = "http://vc.example.com"\nuser = "backup@vsphere.local"\n'
                'password_file = "/etc/vmkeep/vc1.password"',
            ),
            "refusing to send the vCenter password in clear over http://vc.example.com; use https or "
            "allow_cleartext = true",
        ),
    ],
)
def test_an_invalid_file_is_refused_with_its_key_path(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    assert change[0] in VALID
    path = tmp_path / "vmkeep.toml"
    path.write_text(VALID.replace(change[0], change[1], 1))
    result = run_vmkeep("config", "check", "--offline", "--config", path)
    assert result.code == 2, result
    assert_one_line_error(result)
    assert expected in result.err, result.err


def test_allow_cleartext_accepts_a_plain_http_source(tmp_path: Path) -> None:
    text = VALID.replace('url = "vc.example.com"', 'url = "http://127.0.0.1:8989"\nallow_cleartext = true').replace(
        'thumbprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01"\n', ""
    )
    code, _out, err = _check(tmp_path, text)
    assert code == 0, err


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = VALID.replace("daily = 14", "daily = -1").replace('"0 2 * * *"', '"0 2 * *"')
    path = tmp_path / "vmkeep.toml"
    path.write_text(text)
    result = run_vmkeep("config", "check", "--offline", "--json", "--config", path)
    assert result.code == 2
    doc = json.loads(result.out)
    assert doc["ok"] is False and len(doc["problems"]) == 2
    assert [p.split(" ")[0] for p in doc["problems"]] == ["jobs.web.schedule", "jobs.web.retention.daily"]


def test_the_file_is_found_through_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.toml"
    path.write_text(VALID)
    result = run_vmkeep("config", "check", "--offline", env={"VMKEEP_CONFIG": str(path), "HOME": str(tmp_path)})
    assert result.code == 0, result.err
    missing = run_vmkeep("config", "check", env={"HOME": str(tmp_path)})
    assert_one_line_error(missing, "no job file", "--config", "VMKEEP_CONFIG", "/etc/vmkeep/vmkeep.toml")
    assert missing.code == 2


def test_check_logs_in_and_unlocks(tmp_path: Path, vcsim: Vcsim) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--encrypt", env={"VMKEEP_PASSPHRASE": "right"}).code == 0
    password = tmp_path / "pw"
    password.write_text(vcsim.password)
    text = (
        f'[sources.sim]\nurl = "{vcsim.host}:{vcsim.port}"\nuser = "{vcsim.user}"\n'
        f'password_file = "{password}"\nca_file = "{vcsim.ca_file}"\n\n'
        f'[repositories.main]\npath = "{repo}"\npassphrase_env = "MAIN_PASSPHRASE"\n'
    )
    path = tmp_path / "vmkeep.toml"
    path.write_text(text)
    good = run_vmkeep("config", "check", "--config", path, "--json", env={"MAIN_PASSPHRASE": "right"})
    assert good.code == 0, good.err
    assert [c["error"] for c in json.loads(good.out)["checks"]] == [None, None]

    password.write_text("wrong")
    bad = run_vmkeep("config", "check", "--config", path, env={"MAIN_PASSPHRASE": "wrong"})
    assert bad.code == 2
    assert_one_line_error(bad, "sources.sim: ", "wrong user name or password", "repositories.main: ")
    assert "sources.sim: FAILED" in bad.out and "repositories.main: FAILED" in bad.out
    assert "wrong" not in bad.err.replace("wrong user name", "").replace("wrong passphrase", "")
