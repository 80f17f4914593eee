"""``vmkeep fleet verify`` and ``vmkeep fleet restore``: work on points done by one chosen worker."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from ..output import human_size, print_json
from .common import EXIT_FAILURE, EXIT_OK, json_option
from .config import config_options, loaded


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fleet",
        help="verify or restore points on one worker of the fleet",
        description="Send work on recovery points to one `vmkeep worker` by name: the proxy near the repository, "
        "or near the host the disks go back to. The worker uses its own copy of the job file.",
    )
    fleet_sub = p.add_subparsers(dest="fleet_command", metavar="COMMAND", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        config_options(q)
        q.add_argument("--worker", required=True, metavar="NAME", help="the worker's --hostname")
        q.add_argument("--repository", metavar="NAME", help="the job file's repository (default: its only one)")
        q.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="wait this long per answer")
        json_option(q)

    verify = fleet_sub.add_parser(
        "verify",
        help="read points back in full on a worker",
        description="Read every block of each point on the worker (each block checked against its id) and "
        "print each disk's SHA-256. Exit status 1 if any point cannot be read whole.",
    )
    verify.add_argument("points", nargs="+", metavar="POINT", help="point ids (or unique prefixes)")
    common(verify)
    verify.set_defaults(func=cmd_fleet_verify)

    restore = fleet_sub.add_parser(
        "restore",
        help="restore a point into a folder of a worker's machine",
        description="Restore the point on the worker into DIR on the worker's machine: one raw image per disk.",
    )
    restore.add_argument("point", metavar="POINT", help="the point id (or a unique prefix)")
    restore.add_argument("--to", required=True, type=Path, metavar="DIR", help="a folder on the worker's machine")
    common(restore)
    restore.set_defaults(func=cmd_fleet_restore)


def _send(args: argparse.Namespace, task: str, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from ..fleet.app import make_app
    from ..fleet.exceptions import FleetError
    from ..fleet.settings import FleetSettings, vmkeep_version, worker_queue

    cfg = loaded(args)
    repositories = list(cfg.config.repositories)
    name = args.repository or (repositories[0] if len(repositories) == 1 else None)
    if name is None or name not in repositories:
        raise ConfigError(f"give --repository, one of: {', '.join(repositories) or '(none in the job file)'}")
    app = make_app(FleetSettings.of(cfg))
    try:
        replies = app.control.ping(destination=[f"vmkeep@{args.worker}"], timeout=3.0)
    except Exception as exc:
        raise FleetError(f"cannot reach the broker: {exc}") from None
    if not replies:
        running = f"`vmkeep worker --hostname {args.worker}`"
        raise FleetError(f"worker {args.worker!r} does not answer (is {running} running?)")
    queue = worker_queue(args.worker)
    extra = {"repository": name, "version": vmkeep_version()}
    sent = [app.send_task(task, args=[p | extra], queue=queue) for p in payloads]
    answers = []
    for result, payload in zip(sent, payloads, strict=True):
        try:
            answers.append(dict(result.get(timeout=args.timeout)))
        except Exception as exc:
            answers.append({"point": payload["point"], "ok": False, "error": f"no answer: {type(exc).__name__}: {exc}"})
    return answers


def cmd_fleet_verify(args: argparse.Namespace) -> int:
    from ..fleet.app import VERIFY_TASK

    answers = _send(args, VERIFY_TASK, [{"point": p} for p in args.points])
    if args.json:
        print_json(answers)
    else:
        for a in answers:
            if a["ok"]:
                sums = ", ".join(f"{k} {v}" for k, v in a["sha256"].items())
                print(f"{a['point'][:12]} {a['vm']}: ok on {a['worker']}, {human_size(a['bytes'])} read; {sums}")
            else:
                print(f"{a['point']}: {a['error']}")
    return EXIT_OK if all(a["ok"] for a in answers) else EXIT_FAILURE


def cmd_fleet_restore(args: argparse.Namespace) -> int:
    from ..fleet.app import RESTORE_TASK

    [answer] = _send(args, RESTORE_TASK, [{"point": args.point, "directory": str(args.to)}])
    if args.json:
        print_json(answer)
    elif answer["ok"]:
        for f in answer["files"]:
            print(f"{f['path']} ({human_size(f['size'])}) on {answer['worker']}")
    else:
        print(f"{answer['point']}: {answer['error']}")
    return EXIT_OK if answer["ok"] else EXIT_FAILURE
