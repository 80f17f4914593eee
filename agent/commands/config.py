"""``vmkeep config check``: validate the job file, log in to each source, unlock each repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from vmkeep.hypervisors.exceptions import SourceError
from vmkeep.repository.exceptions import RepositoryError

from ..config.load import CONFIG_ENV, InvalidConfig, LoadedConfig, find_config, load_config
from ..exceptions import ConfigError
from ..extras import extra_error
from ..output import print_json
from .common import EXIT_OK, json_option


def config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help=f"the job file (default: ${CONFIG_ENV}, ~/.config/vmkeep/vmkeep.toml, /etc/vmkeep/vmkeep.toml)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        help="where the history database and the control socket live (default: state_dir of the job file, "
        "$STATE_DIRECTORY, the job file's folder if writable and not under /etc, else ~/.local/state/vmkeep)",
    )


def loaded(args: argparse.Namespace) -> LoadedConfig:
    return load_config(find_config(args.config), args.state_dir)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="check the job file", description="Work with the agent's job file.")
    config_sub = p.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    check = config_sub.add_parser(
        "check",
        help="validate the job file, log in to each source and unlock each repository",
        description="Validate the whole job file (every problem is named with its key path and line), then "
        "log in to each source and open each repository with its passphrase. Starts nothing. Exit status 2 "
        "if anything is wrong.",
    )
    config_options(check)
    check.add_argument("--offline", action="store_true", help="only validate the file: no login, no repository")
    json_option(check)
    check.set_defaults(func=cmd_config_check)


def cmd_config_check(args: argparse.Namespace) -> int:
    path = find_config(args.config)
    try:
        cfg = load_config(path, args.state_dir)
    except InvalidConfig as exc:
        if args.json:
            print_json({"config": str(path), "ok": False, "problems": exc.problems})
        else:
            for problem in exc.problems:
                sys.stderr.write(f"  {problem}\n")
        error = InvalidConfig(path, [f"{len(exc.problems)} problem(s), the first: {exc.problems[0]}"])
        error.json_reported = args.json  # its --json document is the one above: one document on stdout
        raise error from None
    checks: list[dict[str, Any]] = []
    if not args.offline:
        checks = [*_check_sources(cfg), *_check_repositories(cfg), *_check_executor(cfg)]
    problems = [f"{c['key']}: {c['error']}" for c in checks if c["error"]]
    if args.json:
        print_json({"config": str(path), "ok": not problems, "problems": problems, "checks": checks})
    else:
        for c in checks:
            print(f"{c['key']}: {'ok' if not c['error'] else 'FAILED: ' + c['error']}")
        c = cfg.config
        print(f"{path}: {len(c.sources)} source(s), {len(c.repositories)} repository(ies), {len(c.jobs)} job(s)")
    if problems:
        failed = ConfigError(f"{path}: " + "; ".join(problems))
        failed.json_reported = args.json
        raise failed
    return EXIT_OK


def _check_sources(cfg: LoadedConfig) -> list[dict[str, Any]]:
    from vmkeep.hypervisors.platforms import open_platform

    from ..config.resolve import source_endpoint, source_kind

    out = []
    for name, source in cfg.config.sources.items():
        error = None
        try:
            with open_platform(source_kind(source), source_endpoint(name, source)):
                pass
        except (SourceError, ConfigError) as exc:
            error = str(exc)
        out.append({"key": f"sources.{name}", "what": f"log in to {source.url} as {source.user}", "error": error})
    return out


def _check_repositories(cfg: LoadedConfig) -> list[dict[str, Any]]:
    from ..config.resolve import open_repository

    out = []
    for name, repo in cfg.config.repositories.items():
        error = None
        try:
            open_repository(name, repo).close()
        except (RepositoryError, ConfigError) as exc:
            error = str(exc)
        out.append({"key": f"repositories.{name}", "what": f"open {repo.location}", "error": error})
    return out


def _check_executor(cfg: LoadedConfig) -> list[dict[str, Any]]:
    """With executor = "celery": log in to the broker's Redis (Celery itself is not needed for that)."""
    from ..config.kinds import ExecutorType

    executor = cfg.config.executor
    if executor.type != ExecutorType.CELERY:
        return []
    error = None
    try:
        from ..fleet.settings import FleetSettings

        client = FleetSettings.of(cfg).redis()
        try:
            client.ping()
        finally:
            client.close()
    except ConfigError as exc:
        error = str(exc)
    except ImportError as exc:
        error = str(extra_error("fleet", exc, "the celery executor"))
    except Exception as exc:  # redis-py's connection and authentication errors
        error = f"{type(exc).__name__}: {exc}"
    return [{"key": "executor", "what": f"log in to the broker {executor.broker}", "error": error}]
