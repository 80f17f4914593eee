#!/usr/bin/env python3
"""Hyper-V backup throughput on the simulated host: WinRM control, the frozen VHDX read over SMB.

    .venv/bin/python bench/hyperv.py --size 1G          # as root (smbd must switch users)

Starts the simulated Hyper-V host on 127.0.0.1 (the WinRM server, NTLM with encryption, and a
Samba share holding its C: drive), gives it a VM with one ``--size`` VHDX filled like
bench/compare.py's image (a quarter zeros, half text, a quarter random), and times
``vmkeep backup --hyperv`` as a real process: the full backup, then an incremental after the
guest rewrote 64 KiB in 1% of the disk's 1 MiB blocks (RCT). Prints one line each, with the
bytes read over SMB and MB/s. Both client and server share this machine's CPUs, and SMB 3
encryption is on, so this measures the agent's path on loopback, not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vmkeep.agent.demo import make_sample_image
from vmkeep.agent.output import parse_size
from vmkeep.hypervisors.hyperv.simulator.host import SimHost
from vmkeep.hypervisors.hyperv.simulator.ntlm import write_ntlm_user_file
from vmkeep.hypervisors.hyperv.simulator.samba import SambaServer, smbd_usable
from vmkeep.hypervisors.hyperv.simulator.wsman import WsmanServer

MiB = 1024 * 1024
VM = "bench-vm"
USER = "HV-BENCH\\vmkeep"


def run_backup(wsman: WsmanServer, samba: SambaServer, repo: Path, password: str) -> tuple[float, dict[str, Any]]:
    cmd = [
        sys.executable,
        "-m",
        "vmkeep.agent.cli",
        "backup",
        "--hyperv",
        wsman.endpoint,
        "--user",
        USER,
        "--smb-share",
        "C:\\=vmstore\\C",
        "--smb-port",
        str(samba.port),
        "--vm",
        VM,
        "--repo",
        str(repo),
        "--json",
        "-q",
    ]
    os.sync()
    start = time.monotonic()
    proc = subprocess.run(
        cmd, env={**os.environ, "VMKEEP_PASSWORD": password}, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"backup failed: {proc.stderr.strip()}")
    [point] = json.loads(proc.stdout)["points"]
    return seconds, point


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="disk size (default: 1G)")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temporary directory, removed)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    if problem := smbd_usable():
        raise SystemExit(f"bench/hyperv.py reads over SMB, and {problem}")
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="vmkeep-bench-hyperv-", dir=args.workdir) as tmp:
        base = Path(tmp)
        password = secrets.token_urlsafe(16)
        users = write_ntlm_user_file(base / "ntlm-users", {USER: password})
        (base / "share").mkdir()
        host = SimHost(base / "share" / "C")
        host.create_vm(VM, (size,))
        sample = base / "sample.raw"
        make_sample_image(sample, size)
        host.load_raw(VM, sample)
        sample.unlink()
        subprocess.run(
            [sys.executable, "-m", "vmkeep.agent.cli", "init", str(base / "repo")],
            check=True,
            capture_output=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")},
        )
        wsman = WsmanServer(host.handle, user_file=users).start()
        try:
            with SambaServer(base / "samba", "vmstore", base / "share", "vmkeep", password) as samba:
                results = []
                full_s, full = run_backup(wsman, samba, base / "repo", password)
                results.append(("full", full_s, full))
                rng = random.Random(7)
                blocks = rng.sample(range(size // MiB), max(1, size // MiB // 100))
                for b in sorted(blocks):
                    host.guest_write(VM, b * MiB + rng.randrange(0, MiB - 65536) // 512 * 512, rng.randbytes(65536))
                inc_s, inc = run_backup(wsman, samba, base / "repo", password)
                results.append(("1% incremental", inc_s, inc))
        finally:
            wsman.stop()
    rows = []
    for name, seconds, point in results:
        read = sum(d["read_bytes"] for d in point["disks"])
        rows.append({"run": name, "seconds": round(seconds, 2), "read_bytes": read, "kind": point["kind"]})
        print(
            f"hyperv {name:15s} {point['kind']:12s} read {read / MiB:8.1f} MiB in {seconds:6.2f} s: "
            f"{read / seconds / 1e6:6.1f} MB/s read, {size / seconds / 1e6:7.1f} MB/s of disk"
        )
    if args.json:
        args.json.write_text(json.dumps({"size": size, "runs": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
