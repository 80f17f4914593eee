"""Hyper-V sources in the job file: validated on load, logged in by config check, backed up by jobs run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.hyperv import HypervAccount
from tests.fixtures.hyperv_backup import MiB, random_writes
from tests.fixtures.hyperv_lab import HypervLab
from tests.fixtures.repos import assert_one_line_error, run_vmkeep


def _job_file(tmp: Path, lab: HypervLab, account: HypervAccount, repo: Path, source_extra: str = "") -> Path:
    password = tmp / "hv.password"
    password.write_text(account.password + "\n")
    share = lab.share_option.replace("\\", "\\\\")
    path = tmp / "vmkeep.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n\n'
        "[sources.hv1]\n"
        'type = "hyperv"\n'
        f'url = "{lab.wsman.endpoint}"\n'
        f'user = "{account.qualified.replace(chr(92), chr(92) * 2)}"\n'
        f'password_file = "{password}"\n'
        f'smb_shares = ["{share}"]\n'
        f"smb_port = {lab.samba.port}\n"
        f"{source_extra}\n"
        f'[repositories.main]\npath = "{repo}"\n\n'
        '[jobs.hv]\nsource = "hv1"\nrepository = "main"\nvms = ["app*"]\nschedule = "0 3 * * *"\n'
    )
    return path


def test_a_hyperv_job_runs_from_the_job_file(
    hyperv_lab: HypervLab, hyperv_account: HypervAccount, repo_path: Path, tmp_path: Path
) -> None:
    hyperv_lab.host.create_vm("app01", (4 * MiB,))
    hyperv_lab.host.create_vm("other", (4 * MiB,))
    random_writes(hyperv_lab.host, "app01", 4, seed=31)
    config = _job_file(tmp_path, hyperv_lab, hyperv_account, repo_path)
    checked = run_vmkeep("config", "check", "--config", config)
    assert checked.code == 0, checked.err
    ran = run_vmkeep("jobs", "run", "hv", "--config", config, "--json")
    assert ran.code == 0, ran.err
    [result] = json.loads(ran.out)["vms"]
    assert (result["vm"], result["status"], result["kind"]) == ("app01", "succeeded", "full")
    assert hyperv_lab.host.checkpoints("app01") == []


def test_tls_options_on_an_http_hyperv_source_are_refused(
    hyperv_lab: HypervLab, hyperv_account: HypervAccount, repo_path: Path, tmp_path: Path
) -> None:
    config = _job_file(
        tmp_path,
        hyperv_lab,
        hyperv_account,
        repo_path,
        'thumbprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01"\n',
    )
    checked = run_vmkeep("config", "check", "--offline", "--config", config)
    assert_one_line_error(checked, "over http NTLM seals the traffic")
