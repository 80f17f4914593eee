"""``vmkeep agent``, ``vmkeep jobs [run]`` and ``vmkeep history``: the scheduled side of vmkeep."""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from ..config.kinds import LogFormat
from ..config.load import LoadedConfig
from ..exceptions import AgentError, ConfigError
from ..output import human_duration, human_size, print_json, print_table
from .common import EXIT_FAILURE, EXIT_OK, json_option
from .config import config_options, loaded


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "agent",
        help="run the job file's jobs at their times (the daemon)",
        description="Run every job of the job file at the times of its schedule, until SIGTERM. A run missed "
        "while the agent was down runs once at start; a job still running at its next time is not started "
        "twice; snapshots are limited per host and per datastore; retention runs after each job for the VMs it "
        "touched, gc on its own schedule. SIGTERM stops running backups at their next block (snapshots removed, "
        "nothing committed); SIGHUP reloads the job file (an invalid one is refused, the old jobs go on). Logs "
        "go to stderr, one event per line.",
    )
    config_options(p)
    p.add_argument(
        "--log-format",
        choices=[str(f) for f in LogFormat],
        help="text (key=value, for journald) or json (for log shippers); default: the job file's, else text",
    )
    p.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus) and /status (JSON) on HOST:PORT, e.g. 127.0.0.1:9180 "
        "(default: the job file's agent.listen; off when neither is set)",
    )
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser(
        "jobs",
        help="list the jobs (VMs, last result, next run), or run one now",
        description="Without a subcommand: each job with its VMs, its last result and its next run.",
    )
    config_options(p)
    json_option(p)
    p.set_defaults(func=cmd_jobs)
    jobs_sub = p.add_subparsers(dest="jobs_command", metavar="COMMAND")
    run = jobs_sub.add_parser(
        "run",
        help="run a job now",
        description="Run job NAME now: through the running agent if one listens on its control socket (the run is "
        "then the agent's, and this command returns once it started), else in the foreground.",
    )
    run.add_argument("name", metavar="NAME", help="the job")
    run.add_argument("--vm", action="append", metavar="VM", help="only this VM of the job (repeatable)")
    config_options(run)
    json_option(run)
    run.set_defaults(func=cmd_jobs_run)

    p = sub.add_parser(
        "history",
        help="what the agent did: every run and every VM",
        description="Every VM of every run, oldest first: when, the result, full or incremental and why, bytes "
        "read and stored, the recovery point, and the error.",
    )
    config_options(p)
    p.add_argument("--job", metavar="NAME", help="only this job")
    p.add_argument("--vm", metavar="VM", help="only this VM")
    p.add_argument("--since", metavar="WHEN", help="only since WHEN: an ISO date/time, or e.g. 24h, 7d")
    json_option(p)
    p.set_defaults(func=cmd_history)


def cmd_agent(args: argparse.Namespace) -> int:
    from ..daemon.agent import Agent
    from ..daemon.logs import configure

    cfg = loaded(args)
    fmt = LogFormat(args.log_format) if args.log_format else cfg.config.agent.log_format
    configure(fmt, logging.DEBUG if args.verbose > 1 else logging.INFO)
    return Agent(cfg, args.state_dir, args.listen).run()


def _history(cfg: LoadedConfig) -> Any:
    from ..history import History

    return History.open_existing(cfg.state_dir)


def cmd_jobs(args: argparse.Namespace) -> int:
    from ..config.schedule import Schedule
    from ..daemon.agent import now
    from ..daemon.control import SOCKET_NAME, ask

    cfg = loaded(args)
    status = ask(cfg.state_dir / SOCKET_NAME, {"op": "status"})
    history = _history(cfg)
    rows: list[dict[str, Any]] = []
    for name, job in cfg.config.jobs.items():
        last = history.last_run(name) if history else None
        last_vms = {}
        if last is not None:
            last_vms = {r["vm"]: r["status"] for r in history.vm_runs(job=name) if r["run_id"] == last.id and r["vm"]}
        agent_job = (status or {}).get("jobs", {}).get(name, {})
        next_run = agent_job.get("next_run") or Schedule(job.schedule).next_after(now()).isoformat()
        rows.append(
            {
                "job": name,
                "source": job.source,
                "repository": job.repository,
                "vms": job.vms,
                "folders": job.folders,
                "schedule": job.schedule,
                "last_run": last.to_json() if last else None,
                "last_vms": last_vms,  # VM -> result in the last run
                "next_run": next_run,
                "running": bool(agent_job.get("running")),
            }
        )
    if args.json:
        print_json({"agent_running": status is not None, "jobs": rows})
        return EXIT_OK
    print_table(
        ["JOB", "SELECTS", "SCHEDULE", "LAST RUN", "RESULT", "VMS IN THE LAST RUN", "NEXT RUN"],
        [
            [
                r["job"],
                ", ".join(r["vms"] + r["folders"]),
                r["schedule"],
                r["last_run"]["started"][:19].replace("T", " ") if r["last_run"] else "never",
                "running" if r["running"] else (r["last_run"]["status"] if r["last_run"] else "-"),
                ", ".join(
                    f"{vm} {'ok' if st == 'succeeded' else st.upper()}" for vm, st in sorted(r["last_vms"].items())
                )
                or "-",
                r["next_run"][:19].replace("T", " "),
            ]
            for r in rows
        ],
    )
    if status is None:
        print("(no agent is running: next runs are what the schedules say)")
    return EXIT_OK


def cmd_jobs_run(args: argparse.Namespace) -> int:
    from ..daemon.control import SOCKET_NAME, ask

    cfg = loaded(args)
    if args.name not in cfg.config.jobs:
        raise ConfigError(f"no job named {args.name!r} in {cfg.path} (jobs: {', '.join(cfg.config.jobs) or 'none'})")
    answer = ask(cfg.state_dir / SOCKET_NAME, {"op": "run", "job": args.name, "vms": args.vm or []})
    if answer is not None:
        if not answer.get("ok"):
            raise ConfigError(f"the agent refused: {answer.get('error')}")
        if args.json:
            print_json({"agent": True, "run_id": answer["run_id"]})
        else:
            print(
                f"the agent started run {answer['run_id']} of job {args.name}; see 'vmkeep history --job {args.name}'"
            )
        return EXIT_OK
    return _run_in_foreground(cfg, args)


def _run_in_foreground(cfg: LoadedConfig, args: argparse.Namespace) -> int:
    from ..daemon.resources import AgentResources, RepositoryPool
    from ..daemon.run import run_job
    from ..engine import cancel
    from ..engine.limits import SnapshotLimits
    from ..history import History, RunStatus, Trigger

    history = History(cfg.state_dir)
    pool = RepositoryPool()
    agent = cfg.config.agent
    resources = AgentResources(cfg, pool, SnapshotLimits(agent.snapshots_per_host, agent.snapshots_per_datastore))
    try:
        run_id = history.start_run(args.name, Trigger.MANUAL, None)
        outcome = run_job(
            args.name,
            run_id=run_id,
            trigger=Trigger.MANUAL,
            cfg=cfg,
            resources=resources,
            history=history,
            token=cancel.root().child(f"job {args.name}"),
            only_vms=args.vm,
        )
    finally:
        pool.close()
        history.close()
    if outcome.status == RunStatus.INTERRUPTED:
        from ..engine.exceptions import Interrupted

        raise Interrupted(outcome.error or "interrupted")
    if args.json:
        print_json({"agent": False, **outcome.to_json()})
    else:
        for r in outcome.results:
            point = f"point {r.point_id[:12]} ({r.kind}), read {human_size(r.read_bytes)}" if r.point_id else ""
            print(f"{r.vm}: {r.status} {point}{': ' + r.error if r.error else ''}")
        if outcome.results:
            print(f"job {args.name}: {outcome.status}")
    if outcome.status == RunStatus.FAILED and not outcome.results:
        raise AgentError(f"job {args.name}: {outcome.error or 'failed'}")
    return EXIT_OK if outcome.status == RunStatus.SUCCEEDED else EXIT_FAILURE


def parse_since(text: str) -> datetime:
    units = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    if text and text[-1] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * units[text[-1]])
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--since: not a time: {text!r} (use e.g. 2026-11-23, 2026-11-23T08:00, 24h, 7d)") from None
    return moment if moment.tzinfo else moment.astimezone()


def _remark(row: dict[str, Any]) -> str:
    """The history's last column: the error, else the point's warnings, else why it read in full."""
    if row["error"]:
        return str(row["error"])
    if row["warnings"]:
        return "warning: " + "; ".join(row["warnings"])
    return str(row["reason"] or "")


def cmd_history(args: argparse.Namespace) -> int:
    cfg = loaded(args)
    since = parse_since(args.since) if args.since else None
    history = _history(cfg)
    rows = history.vm_runs(args.job, args.vm, since) if history else []
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print("no history" + ("" if history else f" yet ({cfg.state_dir} holds none)"))
        return EXIT_OK
    print_table(
        ["STARTED", "JOB", "VM", "RESULT", "KIND", "READ", "STORED", "TIME", "POINT", "ERROR / WARNING / REASON"],
        [
            [
                r["started"][:19].replace("T", " "),
                r["job"],
                r["vm"] or "-",
                r["status"],
                r["kind"] or "-",
                human_size(r["read_bytes"]),
                human_size(r["stored_bytes"]),
                human_duration(r["duration"]),
                (r["point_id"] or "-")[:12],
                _remark(r),
            ]
            for r in rows
        ],
    )
    return EXIT_OK
