"""The systemd unit and the README's job file: they say what vmkeep does."""

from __future__ import annotations

import re
import shlex
import signal
import socket
from pathlib import Path

from tests.fixtures.agent import AgentProcess
from tests.fixtures.repos import run_vmkeep
from vmkeep.agent.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "vmkeep-agent.service"


def _unit() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_runs_the_agent_as_it_expects_to_be_run() -> None:
    unit = _unit()
    argv = shlex.split(unit["ExecStart"][0])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "agent" and args.config == Path("/etc/vmkeep/vmkeep.toml")
    assert unit["Type"] == ["notify"] and unit["Restart"] == ["on-failure"]
    assert unit["RestartPreventExitStatus"] == ["2"]  # vmkeep's exit status for an invalid job file
    assert unit["User"] == ["vmkeep"] and unit["StateDirectory"] == ["vmkeep"]
    assert {c.split(":")[0] for c in unit["LoadCredential"]} == {"vcenter-password", "repo-passphrase"}
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_the_agent_speaks_sd_notify(tmp_path: Path) -> None:
    """Type=notify: READY once the jobs are scheduled, RELOADING/READY around SIGHUP, STOPPING on SIGTERM."""
    config = tmp_path / "vmkeep.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        agent = AgentProcess.start(config, env={"NOTIFY_SOCKET": path})
        try:
            assert sock.recv(4096).startswith(b"READY=1\n")
            agent.signal(signal.SIGHUP)
            assert sock.recv(4096) == b"RELOADING=1"
            assert sock.recv(4096) == b"READY=1"
            agent.signal(signal.SIGTERM)
            assert sock.recv(4096) == b"STOPPING=1"
            assert agent.proc.wait(30) == 0
        finally:
            agent.kill()


def test_the_readme_job_file_is_valid(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    [block] = [b for b in re.findall(r"```toml\n(.*?)```", readme, re.S) if "[jobs." in b]
    config = tmp_path / "vmkeep.toml"
    config.write_text(block)
    result = run_vmkeep("config", "check", "--offline", "--config", config)
    assert result.code == 0, result.err
    assert "1 source(s), 1 repository(ies), 1 job(s)" in result.out
