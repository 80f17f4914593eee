#!/usr/bin/env python3
"""Backup throughput from the vcsim/ simulator over SOAP and HTTP, and how incrementals scale.

    .venv/bin/python bench/vsphere.py --size 4G

Starts the simulator with one VM whose disk is ``--size``, fills it like bench/compare.py's
image (a quarter zeros, half text, a quarter random), and times ``vmkeep backup`` runs as real
processes: the full backup, then incrementals after changing 0.25%, 1% and 4% of the disk's
1 MiB blocks (64 KiB written in each). It fits time = fixed + changed_bytes / rate over the
incrementals, so the report shows whether an incremental's time scales with what changed.

Beside each full backup (``--rounds``, each into a fresh repository) it measures the physical
limits in the same round, over the same bytes:

- the transport: a plain parallel ranged download of the frozen ``-flat.vmdk`` with ``curl``
  (4 ranges at once, the same TLS certificate and session cookie, to /dev/null);
- the compression: ``zstd -1 -T2`` of the same bytes (a local copy, read from the page cache);
- both at once, as a backup must do them on the same cores: the 4 ranged ``curl`` downloads, each
  piped into ``zstd -1``;
- the simulator's own snapshot: creating and removing a snapshot of the VM, timed from the
  client. Like ESXi, vcsim copies nothing to create one (its running layer's copy of the frozen
  disk is made only if something writes to it, as an ESXi delta grows), so this is mostly the
  two SOAP tasks; the report shows the backup with it taken off too.

A full backup must move the bytes and compress them, so its limit is the slower of the transport
and the compression; the target (a full backup within 1.3x of the limit) is judged against that
slower limit, and the report also shows the ratio against both run together. Beside
``restore --to-host`` (create the VM, upload each disk, read it back to compare) it times a plain
``curl`` PUT of the same bytes into the restored VM's disk (so the simulator does the same work
as for the restore's upload), and that PUT followed by a GET with 4 ranged requests (what the
restore's upload and its read-back verification move). Each figure is the median round; the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
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


def run_backup(endpoint: object, tls_sha256: str, repo: Path, password: str) -> tuple[float, dict[str, Any]]:
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
    """Seconds to create and remove a snapshot of the VM, as a backup does (two SOAP tasks and the
    simulator's bookkeeping): this share of a backup's fixed cost is the simulator's."""
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


def time_compress(source: Path) -> float:
    """Seconds for ``zstd -1 -T2`` to compress ``source`` (already in the page cache)."""
    subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)
    start = time.monotonic()
    subprocess.run(["zstd", "-q", "-1", "-T2", "-c", str(source)], stdout=subprocess.DEVNULL, check=True)
    return time.monotonic() - start


def time_download_compress(url: str, size: int, base: list[str], parallel: int = 4) -> float:
    """Seconds for ``parallel`` ranged curl downloads of ``url``, each piped into ``zstd -1``."""
    step = -(-size // parallel)
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            f"{shlex.join([*base, '-r', f'{o}-{min(o + step, size) - 1}', url])} | zstd -q -1 -c > /dev/null",
            shell=True,
        )
        for o in range(0, size, step)
    ]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit("bench: curl | zstd failed")
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


def median(values: list[float]) -> float:
    return statistics.median(values)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="4G", help="disk size (default: 4G)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the full backup and restore (default: 3)")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temporary directory, removed)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    size = parse_size(args.size)
    if shutil.which("curl") is None or shutil.which("zstd") is None:
        raise SystemExit("bench: needs curl and zstd (./install.sh --bench)")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vmkeep-bench-vsphere-"))
    work.mkdir(parents=True, exist_ok=True)
    build()
    tls = make_tls_material(work / "tls")
    options = SimulatorOptions(
        tls_cert=tls.cert_pem, tls_key=tls.key_pem, tls_ca=tls.ca_pem, disk_mb=size // MiB, parent_dir=work
    )
    rows: list[dict[str, Any]] = []
    fulls: list[dict[str, Any]] = []
    restores: list[dict[str, Any]] = []
    try:
        with Simulator(options) as sim:
            ep, api = sim.endpoint, sim.api
            print(f"filling {VM}'s {size / 2**30:.1f} GiB disk through guest writes...", flush=True)
            write_sample_disk(lambda off, data: api.write(VM, off, data), size)
            cookie = session_cookie(ep, tls.sha256)
            base = curl_base(tls.ca_pem, cookie)
            state = api.state(VM).disks[0]
            flat_url = ep.folder_url(state.flat_path, datastore=state.datastore)
            flat_copy = work / "flat.img"
            subprocess.run([*base, "-o", str(flat_copy), flat_url], check=True)
            repo = work / "repo"
            for n in range(args.rounds):
                round_repo = work / f"repo-full-{n}"
                subprocess.run(
                    [sys.executable, "-m", "vmkeep.agent.cli", "init", str(round_repo)],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
                load = load_average()
                download = time_download(flat_url, size, base)
                compress = time_compress(flat_copy)
                both = time_download_compress(flat_url, size, base)
                seconds, point = run_backup(ep, tls.sha256, round_repo, ep.password)
                snapshot_seconds = time_snapshot(ep, tls.sha256)
                fulls.append(
                    {
                        "load": load,
                        "seconds": seconds,
                        "pipeline_seconds": point["duration"],
                        "read_bytes": point["disks"][0]["read_bytes"],
                        "curl_seconds": download,
                        "zstd_seconds": compress,
                        "curl_zstd_seconds": both,
                        "snapshot_seconds": snapshot_seconds,
                    }
                )
                print(
                    f"round {n + 1}: full {seconds:.2f} s (pipeline {point['duration']:.2f} s), curl {download:.2f} s, "
                    f"zstd -1 -T2 {compress:.2f} s, curl | zstd {both:.2f} s, snapshot {snapshot_seconds:.2f} s "
                    f"(load {load})",
                    flush=True,
                )
                if n == 0:
                    shutil.copytree(round_repo, repo)
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
                shutil.rmtree(round_repo)
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
            subprocess.run([*base, "-o", str(flat_copy), flat_url], check=True)  # what the restore uploads
            for n in range(args.rounds):
                load = load_average()
                restore_seconds = run_restore(ep, tls.sha256, repo, f"bench-restored-{n}")
                # Into the restored VM's own disk, so the simulator does the same work as for the
                # restore's upload (it rescans an uploaded disk for its change tracking).
                restored = api.state(f"bench-restored-{n}").disks[0]
                put_url = ep.folder_url(restored.flat_path, datastore=restored.datastore)
                put = time_upload(put_url, flat_copy, base)
                get_back = time_download(put_url, size, base)
                restores.append({"load": load, "seconds": restore_seconds, "put_seconds": put, "get_seconds": get_back})
                print(
                    f"round {n + 1}: restore --to-host {restore_seconds:.2f} s, curl PUT {put:.2f} s, "
                    f"GET {get_back:.2f} s (load {load})",
                    flush=True,
                )
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
    n_incr = len(xs)
    mean_x, mean_y = sum(xs) / n_incr, sum(ys) / n_incr
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum((x - mean_x) ** 2 for x in xs)
    fixed = mean_y - slope * mean_x

    def med(key: str, runs: list[dict[str, Any]]) -> float:
        return median([r[key] for r in runs])

    full, pipeline = med("seconds", fulls), med("pipeline_seconds", fulls)
    curl, zstd, both, snap = (
        med(k, fulls) for k in ("curl_seconds", "zstd_seconds", "curl_zstd_seconds", "snapshot_seconds")
    )
    limit = max(curl, zstd)
    slower = "transport (curl)" if curl >= zstd else "compression (zstd -1 -T2)"
    without_snap = median([r["seconds"] - r["snapshot_seconds"] for r in fulls])
    print(
        f"\nfull backup of the {size / 2**30:.1f} GiB disk, median of {len(fulls)} rounds (loads: "
        f"{'; '.join(r['load'] for r in fulls)}):"
    )
    print(f"  vmkeep backup (the whole command)          {full:6.2f} s  {full / limit:5.2f}x the limit")
    print(f"    of which the simulator's snapshot        {snap:6.2f} s  (create + remove; ESXi starts an empty delta)")
    print(f"    without it                               {without_snap:6.2f} s  {without_snap / limit:5.2f}x the limit")
    print(
        f"    reading, compressing, storing, commit    {pipeline:6.2f} s  {pipeline / limit:5.2f}x the limit, "
        f"{pipeline / both:.2f}x both at once"
    )
    print(f"  transport: curl, 4 parallel ranged GETs    {curl:6.2f} s")
    print(f"  compression: zstd -1 -T2 of the same bytes {zstd:6.2f} s")
    print(f"  both at once: 4 x (curl range | zstd -1)   {both:6.2f} s  (the backup is {full / both:.2f}x this)")
    verdict = "met" if full / limit <= 1.3 else "missed"
    print(
        f"  the limit is the slower of transport and compression, here the {slower}: {limit:.2f} s; "
        f"the full backup is {full / limit:.2f}x it (target <= 1.3x: {verdict})"
    )
    restore, put, get_back = med("seconds", restores), med("put_seconds", restores), med("get_seconds", restores)
    print(
        f"\nrestore --to-host (create the VM, upload, read back and compare), median of {len(restores)} rounds "
        f"(loads: {'; '.join(r['load'] for r in restores)}):\n"
        f"  {restore:.2f} s; curl PUT of the same bytes {put:.2f} s ({restore / put:.2f}x), "
        f"PUT + 4 ranged GETs {put + get_back:.2f} s ({restore / (put + get_back):.2f}x); target <= 1.3x PUT"
    )
    print(
        f"\nincrementals: time = {fixed:.2f} s fixed + {slope * 1000:.1f} ms per MiB read "
        f"({1 / slope if slope > 0 else float('inf'):.0f} MiB/s marginal); "
        f"of the fixed time, {snap:.2f} s is the simulator's snapshot"
    )
    first = rows[0]
    print(
        f"a 1% incremental takes {incr[1]['seconds'] / first['seconds'] * 100:.1f}% of the full's time; "
        f"the full costs {first['seconds'] / (first['read_bytes'] / MiB) * 1000:.1f} ms per MiB"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": size,
                    "runs": rows,
                    "fulls": fulls,
                    "restores": restores,
                    "fixed_seconds": fixed,
                    "seconds_per_mib": slope,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
