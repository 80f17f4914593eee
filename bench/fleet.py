#!/usr/bin/env python3
"""The fleet's throughput: VMs per hour and MB/s with 1, 2 and 3 `vmkeep worker` processes.

    .venv/bin/python bench/fleet.py --vms 12 --size 64M

Starts the vcsim/ simulator with ``--vms`` VMs (half on a standalone host, half in a cluster of
three hosts), fills each disk like bench/compare.py's image (a quarter zeros, half text, a
quarter random; a different seed per VM, so nothing deduplicates across VMs), and a
``redis-server`` on 127.0.0.1. For 1, 2 and 3 workers (each ``--concurrency`` VMs at once, all
serving every host's queue) it backs the whole job up into a fresh repository with ``vmkeep
jobs run`` (the agent's run, in the foreground) and times it from start to the last result.
Every VM must end with one point. On a machine with few cores, the figures show whether the
fleet adds up (nothing serialises on a shared lock or queue), not what a real proxy does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vmkeep.agent.demo import write_sample_disk
from vmkeep.agent.output import parse_size
from vmkeep.hypervisors.vsphere.simulator import Simulator, SimulatorOptions, build
from vmkeep.repository.config import RepoConfig
from vmkeep.repository.repo import Repository

VMKEEP = [sys.executable, "-m", "vmkeep.agent.cli"]


def start_redis(directory: Path, password: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    conf = directory / "redis.conf"
    conf.write_text(f'bind 127.0.0.1\nport {port}\ndir {directory}\nrequirepass {password}\nsave ""\n')
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def job_file(tmp: Path, endpoint: Any, redis_port: int, repo: Path, per_host: int) -> Path:
    (tmp / "vc.password").write_text(endpoint.password + "\n")
    path = tmp / "vmkeep.toml"
    path.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        f"[agent]\nsnapshots_per_host = {per_host}\nsnapshots_per_datastore = 64\n"
        f'[executor]\ntype = "celery"\nbroker = "redis://127.0.0.1:{redis_port}/0"\n'
        f'password_file = "{tmp / "redis.password"}"\n'
        f'[sources.sim]\nurl = "http://{endpoint.host}:{endpoint.port}"\nuser = "{endpoint.user}"\n'
        f'password_file = "{tmp / "vc.password"}"\nallow_cleartext = true\n'
        f'[repositories.main]\npath = "{repo}"\n'
        '[jobs.all]\nsource = "sim"\nrepository = "main"\nvms = ["DC0_*"]\nschedule = "0 3 1 1 *"\nworkers = 2\n'
    )
    return path


def start_worker(config: Path, name: str, directory: Path, concurrency: int) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    serving = ["--queues", ",".join(QUEUES), "--concurrency", str(concurrency)]
    log = (directory / "worker.log").open("ab")
    proc = subprocess.Popen(
        [*VMKEEP, "worker", "--config", str(config), "--hostname", name, "--log-format", "json", *serving],
        cwd=directory,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    for _ in range(600):
        if '"worker-ready"' in (directory / "worker.log").read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"worker {name} exited:\n{(directory / 'worker.log').read_text()}")
        time.sleep(0.1)
    raise SystemExit(f"worker {name} did not start")


QUEUES: list[str] = []


def stop_and_measure(proc: subprocess.Popen[bytes]) -> float:
    """Wait for a worker that was told to stop; the CPU seconds (user + system) it used in all."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vms", type=int, default=12, help="VMs in the job (even; default 12)")
    parser.add_argument("--size", default="64M", help="each VM's disk (default 64M)")
    parser.add_argument("--concurrency", type=int, default=2, help="VMs at once per worker (default 2)")
    parser.add_argument("--per-host", type=int, default=6, help="snapshots per host for the fleet (default 6)")
    parser.add_argument("--workers", default="1,2,3", help="worker counts to time (default 1,2,3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    size = parse_size(args.size)
    if shutil.which("redis-server") is None:
        raise SystemExit("bench/fleet.py needs redis-server (./install.sh installs it)")
    build()
    results = []
    with tempfile.TemporaryDirectory(prefix="vmkeep-bench-fleet-") as tmp_name:
        tmp = Path(tmp_name)
        password = os.urandom(12).hex()
        (tmp / "redis.password").write_text(password + "\n")
        redis, port = start_redis(tmp, password)
        options = SimulatorOptions(vms=args.vms // 2, disk_mb=size >> 20, parent_dir=tmp)
        try:
            with Simulator(options) as sim:
                api, endpoint = sim.api, sim.endpoint
                vms = [s.name for s in api.states() if s.name.startswith("DC0_")]
                hosts = set()
                print(f"filling {len(vms)} disks of {size >> 20} MiB...", flush=True)
                for n, vm in enumerate(vms):
                    write_sample_disk(lambda off, data, vm=vm: api.write(vm, off, data), size, seed=n)
                from vmkeep.hypervisors.tls import TlsPolicy
                from vmkeep.hypervisors.vsphere.connection import ConnectionSettings, VSphereConnection
                from vmkeep.hypervisors.vsphere.inventory import list_vms

                settings = ConnectionSettings(
                    f"http://{endpoint.host}:{endpoint.port}",
                    endpoint.user,
                    endpoint.password,
                    TlsPolicy(allow_cleartext=True),
                )
                with VSphereConnection(settings) as conn:
                    hosts = {v.host for v in list_vms(conn)}
                QUEUES[:] = [f"vmkeep.host.{h}" for h in sorted(hosts)]
                # A first backup turns change tracking on, after which backups skip unallocated areas:
                # one untimed run first, so that every timed run reads the same bytes.
                for wanted in [0] + [int(c) for c in args.workers.split(",")]:
                    timed, count = wanted > 0, wanted or 1
                    repo = tmp / (f"repo-{count}" if timed else "repo-warm-up")
                    Repository.init(repo, RepoConfig.new(), None).close()
                    config = job_file(tmp, endpoint, port, repo, args.per_host)
                    workers = [
                        start_worker(config, f"proxy-{i}", tmp / f"w{count}-{i}-{timed}", args.concurrency)
                        for i in range(count)
                    ]
                    try:
                        started = time.monotonic()
                        out = subprocess.run(
                            [*VMKEEP, "jobs", "run", "all", "--config", str(config), "--json"],
                            capture_output=True,
                            text=True,
                            check=False,
                        )
                        seconds = time.monotonic() - started
                    finally:
                        for w in workers:
                            w.send_signal(signal.SIGTERM)
                        cpu = sum(stop_and_measure(w) for w in workers)
                    doc = json.loads(out.stdout) if out.stdout else {}
                    ok = [v for v in doc.get("vms", []) if v["status"] == "succeeded"]
                    if len(ok) != len(vms):
                        raise SystemExit(f"{count} worker(s): {len(ok)} of {len(vms)} VMs succeeded\n{out.stderr}")
                    if not timed:
                        continue
                    read = sum(v["read_bytes"] for v in ok)
                    row = {
                        "workers": count,
                        "concurrency": args.concurrency,
                        "vms": len(vms),
                        "seconds": round(seconds, 2),
                        "vms_per_hour": round(len(vms) / seconds * 3600),
                        "mb_per_s": round(read / seconds / 1e6, 1),
                        "read_mb": round(read / 1e6),
                        "worker_cpu_s": round(cpu, 1),
                        "worker_cpu_s_per_gb": round(cpu / (read / 1e9), 1),
                    }
                    results.append(row)
                    print(
                        f"{count} worker(s) x {args.concurrency}: {len(vms)} VMs in {seconds:.1f} s = "
                        f"{row['vms_per_hour']} VMs/h, {row['mb_per_s']} MB/s read; "
                        f"workers used {row['worker_cpu_s_per_gb']} CPU s per GB read",
                        flush=True,
                    )
        finally:
            redis.terminate()
            redis.wait()
    print(f"machine: {os.cpu_count()} cores; disks {size >> 20} MiB each")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
