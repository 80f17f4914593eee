"""The passphrase prompt on a real terminal (a pty): Ctrl-D and Ctrl-C end the command at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures.repos import run_vmkeep
from tests.fixtures.terminal import run_on_pty


@pytest.fixture
def encrypted(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--encrypt", env={"VMKEEP_PASSPHRASE": "right"}).code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")}
    return repo, env


def test_ctrl_d_at_the_prompt_exits_130_with_a_clear_message(encrypted: tuple[Path, dict[str, str]]) -> None:
    repo, env = encrypted
    code, output = run_on_pty(["points", "--repo", str(repo)], [b"\x04"], env)
    assert code == 130, output
    assert "vmkeep: error: repository passphrase prompt ended with Ctrl-D; nothing was done" in output
    assert "EOFError" not in output and "Traceback" not in output


def test_ctrl_c_at_the_prompt_ends_the_command_at_once(encrypted: tuple[Path, dict[str, str]]) -> None:
    repo, env = encrypted
    # Before the fix one Ctrl-C was ignored and the passphrase typed after it was accepted.
    code, output = run_on_pty(["points", "--repo", str(repo)], [b"\x03", b"right\n"], env)
    assert code == 130, output
    assert "vmkeep: error: interrupted at the repository passphrase prompt (Ctrl-C); nothing was done" in output
    assert "Traceback" not in output
    assert "TIME" not in output  # the points table was never printed


def test_ctrl_c_at_the_init_prompt_creates_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")}
    code, output = run_on_pty(["init", str(tmp_path / "repo"), "--encrypt"], [b"secret\n", b"\x03"], env)
    assert code == 130, output
    assert "interrupted at the repeat passphrase prompt (Ctrl-C)" in output
    assert not (tmp_path / "repo").exists()


def test_the_passphrase_typed_at_the_prompt_opens_the_repository(encrypted: tuple[Path, dict[str, str]]) -> None:
    repo, env = encrypted
    code, output = run_on_pty(["points", "--repo", str(repo)], [b"right\n"], env)
    assert code == 0, output


def test_ctrl_d_at_the_store_password_prompt_ends_the_command() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")}
    args = ["store-password", "--vcenter", "vc.example.com", "--user", "backup@vsphere.local"]
    code, output = run_on_pty(args, [b"\x04"], env)
    assert code == 130, output
    assert "password for backup@vsphere.local@vc.example.com prompt ended with Ctrl-D" in output
