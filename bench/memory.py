#!/usr/bin/env python3
"""Peak memory of vmkeep against disk size: the same data on sparse disks of 1 GiB to 1 TiB.

    .venv/bin/python bench/memory.py

Each disk holds the same 256 MiB of data in 64 places; vmkeep backs it up in full (holes are
skipped: SEEK_DATA), then 16 MiB of it changes and it backs it up incrementally with hints, and
restores it. If memory is bounded by the pipeline's queues, the peaks do not grow with the disk.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1024 * 1024
SIZES = {"1G": 1 << 30, "64G": 64 << 30, "1T": 1 << 40}


def peak(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a command, via GNU time."""
    out = Path(tempfile.mkstemp()[1])
    start = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(out), *cmd], capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {proc.stderr[-500:]}")
    kb = float(out.read_text().split()[-1])
    out.unlink()
    return seconds, kb / 1024


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="vmkeep-bench-memory-"))
    vmkeep = [sys.executable, "-m", "vmkeep.agent.cli"]
    rows = []
    try:
        for label, size in SIZES.items():
            rng = random.Random(1)
            image = work / f"{label}.img"
            places = sorted(rng.sample(range(size // (4 * MiB)), 64))
            with image.open("wb") as f:
                f.truncate(size)
                for p in places:
                    f.seek(p * 4 * MiB)
                    f.write(rng.randbytes(2 * MiB) + b"text " * (2 * MiB // 5) + b"\0" * (2 * MiB % 5))
            repo = work / f"repo-{label}"
            subprocess.run([*vmkeep, "init", str(repo)], check=True, stdout=subprocess.DEVNULL)
            full = peak([*vmkeep, "backup-image", str(image), "--repo", str(repo), "-q"])
            hints = []
            with image.open("r+b") as f:
                for p in places[:16]:
                    f.seek(p * 4 * MiB + MiB)
                    f.write(rng.randbytes(MiB))
                    hints.append({"offset": p * 4 * MiB + MiB, "length": MiB, "exists": "true"})
            (work / "hints.json").write_text(json.dumps(hints))
            incr = peak(
                [*vmkeep, "backup-image", str(image), "--repo", str(repo), "--hints", str(work / "hints.json"), "-q"]
            )
            restore = peak([*vmkeep, "restore", "latest", "--repo", str(repo), "--to-dir", str(work / "out"), "-q"])
            shutil.rmtree(work / "out")
            image.unlink()
            shutil.rmtree(repo)
            rows.append((label, full, incr, restore))
            print(
                f"{label:>4}: full {full[0]:6.2f} s {full[1]:6.1f} MB | incremental {incr[0]:5.2f} s {incr[1]:6.1f} MB"
                f" | restore {restore[0]:6.2f} s {restore[1]:6.1f} MB",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
