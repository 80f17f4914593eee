"""``vmkeep worker``: a backup proxy of the fleet, running the VM tasks the agent hands out."""

from __future__ import annotations

import argparse
import logging
import socket
import warnings

from ..config.kinds import LogFormat
from ..exceptions import ConfigError
from .config import config_options, loaded


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "worker",
        help="a backup proxy: run the VM backups the agent hands out through Celery and Redis",
        description="Serve the fleet of the job file's [executor] (type = \"celery\"): take each VM's backup task "
        "from the queues of the hosts (or datastores) this worker serves, back the VM up into the repository "
        "with this machine's copy of the job file (its sources' passwords, its repositories' passphrases), and "
        "answer the result to the agent. Snapshot limits per host and per datastore hold across every worker. "
        "A task whose worker is killed is retried once on another worker. SIGTERM: finish the running tasks, "
        "then exit.",
    )
    config_options(p)
    p.add_argument(
        "--hosts",
        action="append",
        metavar="HOST[,HOST...]",
        help="serve the VMs of these hosts (their morefs, e.g. host-21, as `vmkeep vms --json` shows in 'host'); "
        "repeatable",
    )
    p.add_argument(
        "--datastores",
        action="append",
        metavar="DS[,DS...]",
        help='serve the VMs of these datastores (with routing = "datastore"); repeatable',
    )
    p.add_argument(
        "--queues",
        action="append",
        metavar="QUEUE[,QUEUE...]",
        help="serve these Celery queues by name (default without --hosts or --datastores: vmkeep, the queue of "
        'tasks with no host, and of every task with routing = "none")',
    )
    p.add_argument("--concurrency", type=int, default=2, metavar="N", help="VMs backed up at once (default 2)")
    p.add_argument(
        "--hostname", metavar="NAME", help="this worker's name in the fleet (default: the machine's host name)"
    )
    p.add_argument(
        "--log-format",
        choices=[str(f) for f in LogFormat],
        help="text or json (default: the job file's agent.log_format)",
    )
    p.set_defaults(func=cmd_worker)


def _names(values: list[str] | None) -> list[str]:
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def queues_of(args: argparse.Namespace) -> list[str]:
    from ..fleet.settings import DEFAULT_QUEUE, datastore_queue, host_queue

    queues = [host_queue(h) for h in _names(args.hosts)] + [datastore_queue(d) for d in _names(args.datastores)]
    queues += _names(args.queues)
    return list(dict.fromkeys(queues)) or [DEFAULT_QUEUE]


def cmd_worker(args: argparse.Namespace) -> int:
    from ..daemon.logs import configure, event
    from ..fleet import app as fleet_app
    from ..fleet.app import make_app
    from ..fleet.settings import FleetSettings, vmkeep_version, worker_queue
    from ..fleet.worker import WorkerContext

    if args.concurrency < 1:
        raise ConfigError("--concurrency is at least 1")
    cfg = loaded(args)
    settings = FleetSettings.of(cfg)
    fmt = LogFormat(args.log_format) if args.log_format else cfg.config.agent.log_format
    level = logging.DEBUG if args.verbose > 1 else logging.INFO
    configure(fmt, level)
    # Celery warns at start when run as root (containers often do); the tasks' payloads are JSON, never pickle
    warnings.filterwarnings("ignore", message="You're running the worker with superuser privileges")
    hostname = args.hostname or socket.gethostname()
    queues = [*queues_of(args), worker_queue(hostname)]
    app = make_app(settings)
    client = settings.redis()
    try:
        client.ping()
    except Exception as exc:
        raise ConfigError(f"cannot reach the broker {settings.broker}: {exc}") from None
    fleet_app.WORKER = WorkerContext(cfg, settings, hostname, vmkeep_version(), client)
    event(logging.INFO, "worker-started", worker=hostname, queues=",".join(queues), concurrency=args.concurrency)
    from celery.signals import worker_ready

    def ready(**_: object) -> None:
        event(logging.INFO, "worker-ready", "taking tasks", worker=hostname)

    worker_ready.connect(ready, weak=False)
    try:
        worker = app.Worker(
            hostname=f"vmkeep@{hostname}",
            queues=queues,
            concurrency=args.concurrency,
            pool="threads",
            loglevel=logging.getLevelName(level),  # Celery sets the root level to it
            without_gossip=True,
            without_mingle=True,
            without_heartbeat=True,
            quiet=True,
        )
        worker.start()
        code: int = worker.exitcode or 0
    finally:
        fleet_app.WORKER.close()
        fleet_app.WORKER = None
    event(logging.INFO, "worker-stopped", worker=hostname)
    return code
