"""The job file's [executor]: checked when loaded; Celery imported only when it is configured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.redis import RedisServer
from tests.fixtures.repos import assert_one_line_error, run_vmkeep
from vmkeep.agent.config.load import InvalidConfig, parse_config
from vmkeep.agent.fleet.settings import FleetSettings

BASE = """
[repositories.main]
path = "/srv/repo"
"""


def load(text: str) -> object:
    return parse_config(BASE + text, Path("/etc/vmkeep/vmkeep.toml"), Path("/tmp/state"))


@pytest.mark.parametrize(
    ("executor", "problem"),
    [
        ('type = "celery"', 'type = "celery" needs broker'),
        ('type = "celery"\nbroker = "redis://:secret@127.0.0.1:6379/0"', "no user or password in the URL"),
        ('type = "celery"\nbroker = "amqp://127.0.0.1/"', "broker is a redis:// or rediss:// URL"),
        ('type = "celery"\nbroker = "redis://h/0"\npassword_file = "/a"\npassword_env = "B"', "not both"),
        ('type = "threads"', "executor.type"),
        ('type = "celery"\nbroker = "redis://h/0"\nrouting = "rack"', "executor.routing"),
    ],
)
def test_a_bad_executor_is_refused_with_its_key(executor: str, problem: str) -> None:
    with pytest.raises(InvalidConfig) as caught:
        load(f"[executor]\n{executor}\n")
    assert problem in str(caught.value)
    assert "secret" not in str(caught.value)


def test_the_password_comes_from_its_file_and_stays_out_of_the_urls(tmp_path: Path) -> None:
    password = tmp_path / "redis.password"
    password.write_text("s3cret pass\n")
    cfg = load(f'[executor]\ntype = "celery"\nbroker = "redis://10.0.0.5:6380/2"\npassword_file = "{password}"\n')
    settings = FleetSettings.of(cfg)  # type: ignore[arg-type]
    assert settings.password == "s3cret pass"
    conf = settings.celery_conf()
    assert conf["broker_url"] == conf["result_backend"] == "redis://10.0.0.5:6380/2"
    assert conf["broker_password"] == conf["redis_password"] == "s3cret pass"
    assert "s3cret" not in repr(settings)
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]


def test_nothing_of_celery_is_imported_unless_configured(tmp_path: Path) -> None:
    config = tmp_path / "vmkeep.toml"
    config.write_text(BASE + '\n[executor]\ntype = "local"\n')
    code = f"""
import sys
from pathlib import Path
from vmkeep.agent import cli
from vmkeep.agent.config.load import load_config
from vmkeep.agent.daemon import agent, run
cfg = load_config(Path({str(config)!r}))
assert run.executor_of(cfg) is None
cli.build_parser()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("celery", "kombu", "redis", "billiard"))
loaded += sorted(m for m in sys.modules if m.startswith("vmkeep.agent.fleet"))
print(loaded)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_worker_without_its_broker_says_so_in_one_line(tmp_path: Path, redis_server: RedisServer) -> None:
    config = tmp_path / "vmkeep.toml"
    redis_server.stop()  # nothing listens on its port now
    config.write_text(
        BASE + f'\n[executor]\ntype = "celery"\nbroker = "{redis_server.url}"\n'
        f'password_file = "{redis_server.password_file}"\n'
    )
    result = run_vmkeep("worker", "--config", config, "--hosts", "host-21")
    assert_one_line_error(result, "cannot reach the broker", redis_server.url)
    assert redis_server.password not in result.err
    assert result.code == 2


def test_config_check_logs_in_to_the_broker(tmp_path: Path, redis_server: RedisServer, repo_path: Path) -> None:
    config = tmp_path / "vmkeep.toml"
    text = (
        f'[repositories.main]\npath = "{repo_path}"\n\n[executor]\ntype = "celery"\nbroker = "{redis_server.url}"\n'
        f'password_file = "{redis_server.password_file}"\n'
    )
    config.write_text(text)
    result = run_vmkeep("config", "check", "--config", config, "--json")
    assert result.code == 0, result.out + result.err
    [check] = [c for c in json.loads(result.out)["checks"] if c["key"] == "executor"]
    assert check["error"] is None and redis_server.url in check["what"]

    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    config.write_text(text.replace(str(redis_server.password_file), str(wrong)))
    result = run_vmkeep("config", "check", "--config", config, "--json")
    assert result.code == 2
    [check] = [c for c in json.loads(result.out)["checks"] if c["key"] == "executor"]
    assert "AuthenticationError" in check["error"] or "invalid" in check["error"].lower(), check
    assert "not-the-password" not in result.out + result.err
