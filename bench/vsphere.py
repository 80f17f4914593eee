#!/usr/bin/env python3
"""Backup throughput from the vcsim/ simulator over SOAP and HTTP, and how incrementals scale.

    .venv/bin/python bench/vsphere.py --size 4G

Starts the simulator with one VM whose disk is ``--size``, fills it like bench/compare.py's
image (a quarter zeros, half text, a quarter random), and times ``vmkeep backup`` runs as real
processes: the full backup, then incrementals after changing 0.25%, 1% and 4% of the disk's
1 MiB blocks (64 KiB written in each). It fits time = fixed + changed_bytes / rate over the
incrementals, so the report shows whether an incremental's time scales with what changed.

Beside the full backup it times the transport's own limit in the same run: a plain parallel
ranged download of the same frozen ``-flat.vmdk`` with ``curl`` (4 ranges at once, the same TLS
certificate and session cookie, to /dev/null); and beside ``restore --to-host`` (create the VM,
upload each disk, read it back to compare) a plain ``curl`` PUT of the same bytes, and a PUT
followed by a GET (what the restore's upload and read-back verification move).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vmkeep.agent.demo import write_sample_disk
from vmkeep.agent.output import parse_size
from vmkeep.hypervisors.vsphere.simulator import Simulator, SimulatorOptions, build
from vmkeep.hypervisors.vsphere.simulator_tls import make_tls_material

MiB = 1024 * 1024
VM = "DC0_H0_VM0"


def run_backup(endpoint: object, tls_sha256: str, repo: Path, password: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    host, port, user = endpoint.host, endpoint.port, endpoint.user  # type: ignore[attr-defined]
    cmd = [
        sys.executable,
        "-m",
        "vmkeep.agent.cli",
        "backup",
        "--vcenter",
        f"{host}:{port}",
        "--user",
        user,
        "--thumbprint",
        tls_sha256,
        "--vm",
        VM,
        "--repo",
        str(repo),
        "--json",
        "-q",
    ]
    env = {**os.environ, "VMKEEP_PASSWORD": password}
    os.sync()
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: backup failed: {proc.stderr.strip()[-500:]}")
    return seconds, json.loads(proc.stdout)["points"][0]


def time_snapshot(endpoint: object, tls_sha256: str) -> float:
    """Seconds to create and remove a snapshot of the VM: the simulator copies the disk's allocated
    blocks into a new layer (real ESXi starts a delta file in constant time), so this share of an
    incremental's fixed cost belongs to the simulator."""
    from vmkeep.hypervisors.tls import TlsPolicy
    from vmkeep.hypervisors.vsphere.connection import ConnectionSettings, VSphereConnection
    from vmkeep.hypervisors.vsphere.session import VSphereSession

    ep: Any = endpoint
    settings = ConnectionSettings(f"{ep.host}:{ep.port}", ep.user, ep.password, TlsPolicy(thumbprint=tls_sha256))
    with VSphereConnection(settings) as conn:
        start = time.monotonic()
        with VSphereSession(conn, VM):
            pass
        return time.monotonic() - start


def curl_base(ca_file: Path, cookie: str) -> list[str]:
    return ["curl", "-sS", "--fail", "--cacert", str(ca_file), "-b", f"vmware_soap_session={cookie}"]


def time_download(url: str, size: int, base: list[str], parallel: int = 4) -> float:
    """Seconds for ``parallel`` curl processes to fetch ``size`` bytes of ``url`` as ranges."""
    step = -(-size // parallel)
    start = time.monotonic()
    procs = [
        subprocess.Popen([*base, "-r", f"{o}-{min(o + step, size) - 1}", "-o", "/dev/null", url])
        for o in range(0, size, step)
    ]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("bench: curl download failed")
    return time.monotonic() - start


def time_upload(url: str, source: Path, base: list[str]) -> float:
    start = time.monotonic()
    subprocess.run([*base, "-T", str(source), "-o", "/dev/null", url], check=True)
    return time.monotonic() - start


def session_cookie(ep: Any, tls_sha256: str) -> str:
    from vmkeep.hypervisors.tls import TlsPolicy
    from vmkeep.hypervisors.vsphere.connection import ConnectionSettings, VSphereConnection

    settings = ConnectionSettings(f"{ep.host}:{ep.port}", ep.user, ep.password, TlsPolicy(thumbprint=tls_sha256))
    conn = VSphereConnection(settings)
    conn.__enter__()  # stays logged in for the bench's curl requests
    return conn.cookie()


def run_restore(ep: Any, tls_sha256: str, repo: Path, name: str) -> float:
    cmd = [sys.executable, "-m", "vmkeep.agent.cli", "restore", f"latest:{VM}", "--repo", str(repo)]
    cmd += ["--to-host", f"{ep.host}:{ep.port}", "--user", ep.user, "--thumbprint", tls_sha256]
    cmd += ["--datastore", "LocalDS_0", "--name", name, "--json"]
    start = time.monotonic()
    env = {**os.environ, "VMKEEP_PASSWORD": ep.password}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"bench: restore failed: {proc.stderr.strip()[-500:]}")
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4G", help="disk size (default: 4G)")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temporary directory, removed)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vmkeep-bench-vsphere-"))
    work.mkdir(parents=True, exist_ok=True)
    build()
    tls = make_tls_material(work / "tls")
    options = SimulatorOptions(
        tls_cert=tls.cert_pem, tls_key=tls.key_pem, tls_ca=tls.ca_pem, disk_mb=size // MiB, parent_dir=work
    )
    rows = []
    try:
        with Simulator(options) as sim:
            ep, api = sim.endpoint, sim.api
            print(f"filling {VM}'s {size / 2**30:.1f} GiB disk through guest writes...", flush=True)
            write_sample_disk(lambda off, data: api.write(VM, off, data), size)
            repo = work / "repo"
            subprocess.run(
                [sys.executable, "-m", "vmkeep.agent.cli", "init", str(repo)], check=True, stdout=subprocess.DEVNULL
            )
            cookie = session_cookie(ep, tls.sha256)
            base = curl_base(tls.ca_pem, cookie)
            state = api.state(VM).disks[0]
            flat_url = ep.folder_url(state.flat_path, datastore=state.datastore)
            download = time_download(flat_url, size, base)
            seconds, point = run_backup(ep, tls.sha256, repo, ep.password)
            download_after = time_download(flat_url, size, base)
            snapshot_seconds = time_snapshot(ep, tls.sha256)
            disk = point["disks"][0]
            rows.append(
                {
                    "run": "full",
                    "changed_pct": 100.0,
                    "seconds": seconds,
                    "read_bytes": disk["read_bytes"],
                    "changed_blocks": disk["changed_blocks"],
                }
            )
            rng = random.Random(1)
            for pct in (0.25, 1.0, 4.0):
                blocks = rng.sample(range(size // MiB), max(1, int(size // MiB * pct / 100)))
                for b in blocks:
                    api.write(VM, b * MiB + rng.randrange(0, MiB - 65536), rng.randbytes(65536))
                seconds, point = run_backup(ep, tls.sha256, repo, ep.password)
                disk = point["disks"][0]
                if disk["mode"] != "incremental":
                    raise SystemExit(f"bench: expected an incremental, got {disk['mode']} ({disk['reason']})")
                rows.append(
                    {
                        "run": "incremental",
                        "changed_pct": pct,
                        "seconds": seconds,
                        "read_bytes": disk["read_bytes"],
                        "changed_blocks": disk["changed_blocks"],
                    }
                )
            restore_seconds = run_restore(ep, tls.sha256, repo, "bench-restored")
            flat_copy = work / "flat.img"
            subprocess.run([*base, "-o", str(flat_copy), flat_url], check=True)
            put_url = ep.folder_url("bench-put/disk-flat.vmdk", datastore=state.datastore)
            put = time_upload(put_url, flat_copy, base)
            get_back = time_download(put_url, size, base, parallel=1)
            flat_copy.unlink()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'run':12} {'changed':>8} {'read':>10} {'time':>8} {'MB/s read':>10}")
    for r in rows:
        print(
            f"{r['run']:12} {r['changed_pct']:7.2f}% {r['read_bytes'] / MiB:8.1f} Mi {r['seconds']:7.2f}s "
            f"{r['read_bytes'] / r['seconds'] / 1e6:10.1f}"
        )
    incr = [r for r in rows if r["run"] == "incremental"]
    xs = [r["read_bytes"] / MiB for r in incr]
    ys = [r["seconds"] for r in incr]
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    fixed = mean_y - slope * mean_x
    full = rows[0]
    print(f"\nfull backup: {full['read_bytes'] / full['seconds'] / 1e6:.0f} MB/s over HTTP from the simulator")
    limit = min(download, download_after)
    print(
        f"transport limit: curl, 4 parallel ranged GETs of the whole {size / 2**30:.1f} GiB flat file: "
        f"{download:.2f} s before the backup, {download_after:.2f} s after; the full backup took "
        f"{full['seconds']:.2f} s = {full['seconds'] / limit:.2f}x the faster (target <= 1.3)"
    )
    print(
        f"restore --to-host: {restore_seconds:.2f} s (create the VM, upload, read back and compare); "
        f"curl PUT of the same bytes {put:.2f} s, PUT + GET {put + get_back:.2f} s: "
        f"{restore_seconds / (put + get_back):.2f}x PUT + GET (target <= 1.3)"
    )
    print(
        f"incrementals: time = {fixed:.2f} s fixed + {slope * 1000:.1f} ms per MiB read "
        f"({1 / slope if slope > 0 else float('inf'):.0f} MiB/s marginal)"
    )
    print(
        f"of the fixed time, {snapshot_seconds:.2f} s is the simulator creating and removing the snapshot "
        "(it copies the disk's data into a new layer; ESXi starts an empty delta)"
    )
    full_per_mib = full["seconds"] / (full["read_bytes"] / MiB)
    print(
        f"a 1% incremental takes {incr[1]['seconds'] / full['seconds'] * 100:.1f}% of the full's time; "
        f"the full costs {full_per_mib * 1000:.1f} ms per MiB"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": size,
                    "runs": rows,
                    "fixed_seconds": fixed,
                    "seconds_per_mib": slope,
                    "snapshot_seconds": snapshot_seconds,
                    "curl_download_seconds": [download, download_after],
                    "restore_to_host_seconds": restore_seconds,
                    "curl_put_seconds": put,
                    "curl_get_seconds": get_back,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
