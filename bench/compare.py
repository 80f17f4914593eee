#!/usr/bin/env python3
"""Full, 1%-incremental and restore throughput of vmkeep beside restic, borg and zstd, in one run.

    ./install.sh --bench && .venv/bin/python bench/compare.py --size 2G

Builds a mixed image (a quarter zeros, half compressible text, a quarter random), then times,
on the same machine and the same page-cached image: a full backup with each tool; 1% of the
blocks changed (64 KiB in each) and an incremental backup (vmkeep with change hints, the
others re-reading the image as they must); and a restore of the newest point. It also times
``zstd -1 -T2`` compressing the image (the compression limit), and reports peak memory.
Every restore is checked against the image. Figures are ratios within this run; absolute
speeds depend on the machine.

Backup and restore times run until the data is durable: each command, then ``sync``. vmkeep
fsyncs what it writes before it reports success; restic (0.14) and borg's extract return with
gigabytes still dirty in the page cache, and their write-back would otherwise be charged to
whatever runs next.

Each tool runs that whole sequence ``--rounds`` times in fresh directories, in an order that
rotates from round to round, and each operation reports its best round: on virtual machines
with a discarding file system, the write-back and TRIM of one run's files lands on whatever
runs next, and one round can be twice as slow as another for reasons that have nothing to do
with the tool.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from vmkeep.agent.demo import change_one_percent, make_sample_image, sha256_file
from vmkeep.agent.output import parse_size

PASSWORD = "bench-only-password"
BORG_ENV = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}


@dataclass
class Run:
    tool: str
    op: str
    seconds: float
    peak_mb: float
    mb_per_s: float


def timed(
    cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None, durable: bool = True
) -> tuple[float, float]:
    """Wall seconds (until what it wrote is on disk, if ``durable``) and peak RSS (MB), via GNU time."""
    fd, out = tempfile.mkstemp()
    os.close(fd)
    os.sync()  # start quiet: no tool pays for the write-back of the previous one's output
    start = time.monotonic()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", out, *cmd],
        env={**os.environ, **(env or {})},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if durable:
        os.sync()
    seconds = time.monotonic() - start
    peak_kb = float(Path(out).read_text().split()[-1])
    os.unlink(out)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
    return seconds, peak_kb / 1024


def find_one(directory: Path) -> Path:
    files = [p for p in directory.rglob("*") if p.is_file()]
    if len(files) != 1:
        raise SystemExit(f"bench: expected one restored file in {directory}, found {len(files)}")
    return files[0]


class Bench:
    def __init__(self, work: Path, size: int) -> None:
        self.work = work
        self.size = size
        self.original = work / "v1.img"  # pristine image
        self.changed = work / "v2.img"  # the same with 1% of its blocks changed
        self.hints = work / "hints.json"
        self.image = work / "disk.img"  # what the tools back up: v1, then overwritten in place with v2
        self.round_dir = work
        self.runs: list[Run] = []
        self.vmkeep = [sys.executable, "-m", "vmkeep.agent.cli"]

    def record(self, tool: str, op: str, seconds: float, peak: float, nbytes: int) -> None:
        run = Run(tool, op, round(seconds, 3), round(peak, 1), round(nbytes / seconds / 1e6, 1))
        self.runs.append(run)
        print(f"  {tool:16} {op:12} {seconds:8.2f} s {run.mb_per_s:9.1f} MB/s  peak {peak:7.1f} MB", flush=True)

    def check_restore(self, tool: str, restored: Path, digest: str) -> None:
        if sha256_file(restored) != digest:
            raise SystemExit(f"bench: {tool} restored {restored} differs from the image")
        restored.unlink()

    def prepare(self) -> str:
        print(f"making a {self.size / 2**30:.2f} GiB mixed image in {self.work}", flush=True)
        make_sample_image(self.original, self.size)
        shutil.copyfile(self.original, self.changed)
        self.hints.write_text(json.dumps(change_one_percent(self.changed)))
        return sha256_file(self.changed)

    def run(self, tools: list[str], rounds: int) -> None:
        digest = self.prepare()
        for n in range(rounds):
            print(f"round {n + 1} of {rounds}:", flush=True)
            zstd = ["zstd", "-1", "-T2", "-q", "-f", "-c", str(self.original)]  # to /dev/null: nothing to sync
            self.record("zstd -1 -T2", "compress", *timed(zstd, durable=False), self.size)
            # Rotate the order each round: whoever runs first after a round's deletions runs slower.
            for tool in tools[n % len(tools) :] + tools[: n % len(tools)]:
                self.round_dir = self.work / f"{tool}-{n}"
                self.round_dir.mkdir()
                shutil.copyfile(self.original, self.image)
                name = tool.replace("-", "_")
                getattr(self, f"full_{name}")()
                with self.changed.open("rb") as src, self.image.open("r+b") as dst:  # same file, new content
                    shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
                getattr(self, f"incr_{name}")(self.hints)
                getattr(self, f"restore_{name}")(digest)
                shutil.rmtree(self.round_dir)
                os.sync()
                time.sleep(5)  # let the file system finish discarding (TRIM) what was deleted

    def best(self) -> list[Run]:
        out: dict[tuple[str, str], Run] = {}
        for run in self.runs:
            key = (run.tool, run.op)
            if key not in out or run.seconds < out[key].seconds:
                out[key] = run
        return list(out.values())

    # -- vmkeep -------------------------------------------------------------------------------

    def _vmkeep_repo(self, encrypted: bool) -> tuple[Path, dict[str, str]]:
        repo = self.round_dir / "repo"
        env = {"VMKEEP_PASSPHRASE": PASSWORD} if encrypted else {}
        if not repo.exists():
            subprocess.run(
                [*self.vmkeep, "init", str(repo), *(["--encrypt"] if encrypted else [])],
                env={**os.environ, **env},
                check=True,
                stdout=subprocess.DEVNULL,
            )
        return repo, env

    def _vmkeep_full(self, tool: str, encrypted: bool) -> None:
        repo, env = self._vmkeep_repo(encrypted)
        cmd = [*self.vmkeep, "backup-image", str(self.image), "--repo", str(repo), "--name", "bench", "-q"]
        self.record(tool, "full", *timed(cmd, env), self.size)

    def _vmkeep_incr(self, tool: str, encrypted: bool, hints: Path) -> None:
        repo, env = self._vmkeep_repo(encrypted)
        cmd = [
            *self.vmkeep,
            "backup-image",
            str(self.image),
            "--repo",
            str(repo),
            "--name",
            "bench",
            "--hints",
            str(hints),
            "-q",
        ]
        self.record(tool, "incremental", *timed(cmd, env), self.size)

    def _vmkeep_restore(self, tool: str, encrypted: bool, digest: str) -> None:
        repo, env = self._vmkeep_repo(encrypted)
        out = self.round_dir / "restore"
        cmd = [*self.vmkeep, "restore", "latest", "--repo", str(repo), "--to-dir", str(out), "-q"]
        self.record(tool, "restore", *timed(cmd, env), self.size)
        self.check_restore(tool, find_one(out), digest)

    def full_vmkeep(self) -> None:
        self._vmkeep_full("vmkeep", False)

    def incr_vmkeep(self, hints: Path) -> None:
        self._vmkeep_incr("vmkeep", False, hints)

    def restore_vmkeep(self, digest: str) -> None:
        self._vmkeep_restore("vmkeep", False, digest)

    def full_vmkeep_aes(self) -> None:
        self._vmkeep_full("vmkeep-aes", True)

    def incr_vmkeep_aes(self, hints: Path) -> None:
        self._vmkeep_incr("vmkeep-aes", True, hints)

    def restore_vmkeep_aes(self, digest: str) -> None:
        self._vmkeep_restore("vmkeep-aes", True, digest)

    # -- restic (always encrypted; compression auto, repository format 2) ---------------------

    def _restic(self, *args: str) -> tuple[list[str], dict[str, str]]:
        return ["restic", "--repo", str(self.round_dir / "repo"), "--quiet", *args], {"RESTIC_PASSWORD": PASSWORD}

    def full_restic(self) -> None:
        cmd, env = self._restic("init")
        subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        self.record("restic", "full", *timed(*self._restic("backup", str(self.image))), self.size)

    def incr_restic(self, hints: Path) -> None:
        self.record("restic", "incremental", *timed(*self._restic("backup", str(self.image))), self.size)

    def restore_restic(self, digest: str) -> None:
        out = self.round_dir / "restore"
        self.record("restic", "restore", *timed(*self._restic("restore", "latest", "--target", str(out))), self.size)
        self.check_restore("restic", find_one(out), digest)

    # -- borg (unencrypted, its default lz4 compression) --------------------------------------

    def full_borg(self) -> None:
        repo = self.round_dir / "repo"
        subprocess.run(["borg", "init", "--encryption=none", str(repo)], env={**os.environ, **BORG_ENV}, check=True)
        self.record("borg", "full", *timed(["borg", "create", f"{repo}::full", str(self.image)], BORG_ENV), self.size)

    def incr_borg(self, hints: Path) -> None:
        cmd = ["borg", "create", f"{self.round_dir / 'repo'}::incr", str(self.image)]
        self.record("borg", "incremental", *timed(cmd, BORG_ENV), self.size)

    def restore_borg(self, digest: str) -> None:
        out = self.round_dir / "restore"
        out.mkdir()
        cmd = ["borg", "extract", f"{self.round_dir / 'repo'}::incr"]
        self.record("borg", "restore", *timed(cmd, BORG_ENV, cwd=out), self.size)
        self.check_restore("borg", find_one(out), digest)


def seconds_of(runs: list[Run], tool: str, op: str) -> float | None:
    return next((r.seconds for r in runs if r.tool == tool and r.op == op), None)


def targets(runs: list[Run]) -> list[tuple[str, float | None, float, bool | None]]:
    """(what, measured ratio, target, met) for each target of docs/DESIGN.md."""

    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float | None:
        x, y = seconds_of(runs, *a), seconds_of(runs, *b)
        return None if x is None or y is None else x / y

    rows = [
        ("full: restic time / vmkeep time", ratio(("restic", "full"), ("vmkeep", "full")), 2.5, True),
        ("full: borg time / vmkeep time", ratio(("borg", "full"), ("vmkeep", "full")), 2.0, True),
        ("full: vmkeep time / zstd -1 -T2 time", ratio(("vmkeep", "full"), ("zstd -1 -T2", "compress")), 1.3, False),
        (
            "1% incremental: restic time / vmkeep time",
            ratio(("restic", "incremental"), ("vmkeep", "incremental")),
            15.0,
            True,
        ),
        ("restore: restic time / vmkeep time", ratio(("restic", "restore"), ("vmkeep", "restore")), 2.0, True),
    ]
    out = []
    for what, value, target, at_least in rows:
        met = None if value is None else (value >= target if at_least else value <= target)
        out.append((what, value, target, met))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="2G", help="image size (default: 2G)")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temporary directory, removed)")
    parser.add_argument("--tools", default="vmkeep,vmkeep-aes,restic,borg", help="comma-separated tools to run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each sequence; the best counts (default: 3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()

    tools = [t for t in args.tools.split(",") if t]
    for tool, binary in (("restic", "restic"), ("borg", "borg")):
        if tool in tools and shutil.which(binary) is None:
            print(f"bench: {binary} is not installed (./install.sh --bench); skipping it", file=sys.stderr)
            tools.remove(tool)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vmkeep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, parse_size(args.size))
    try:
        bench.run(tools, max(1, args.rounds))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    best = bench.best()
    print(f"\nbest of {args.rounds} round(s):")
    for run in best:
        print(f"  {run.tool:16} {run.op:12} {run.seconds:8.2f} s {run.mb_per_s:9.1f} MB/s  peak {run.peak_mb:7.1f} MB")
    print("\ntargets (docs/DESIGN.md):")
    results = targets(best)
    for what, value, target, met in results:
        shown = "n/a" if value is None else f"{value:6.2f}"
        verdict = {None: "not measured", True: "met", False: "MISSED"}[met]
        sign = ">=" if "vmkeep time /" not in what else "<="
        print(f"  {what:45} {shown}  (target {sign} {target})  {verdict}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "size": bench.size,
                    "cpus": os.cpu_count(),
                    "rounds": args.rounds,
                    "runs": [asdict(r) for r in bench.runs],
                    "best": [asdict(r) for r in best],
                    "targets": [{"what": w, "ratio": v, "target": t, "met": m} for w, v, t, m in results],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
