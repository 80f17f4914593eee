#!/usr/bin/env python3
"""vmkeep beside restic, borg and the physical limits, in one run, as medians of several rounds.

    ./install.sh --bench && .venv/bin/python bench/compare.py --size 768M --big-size 4G --rounds 3

Builds a mixed image (a quarter zeros, half compressible text, a quarter random) and, each round,
in fresh directories and in an order that rotates from round to round, times with each tool: a
full backup; an incremental after 64 KiB was written in 1% of the 1 MiB blocks (vmkeep with
change hints, the others re-reading the image as they must); a restore of that point; and
listing the points of the repository (``vmkeep points`` against ``restic snapshots``: start-up
and the passphrase's key derivation). Beside each operation it times the physical limit in the
same round:

- full backup: ``zstd -1 -T2`` compressing the image to /dev/null (the compression limit);
- incremental: a plain read of the changed 1 MiB blocks from the image (no tool reads less);
- restore: ``dd oflag=direct`` writing the image's non-zero 1 MiB blocks (``conv=sparse``) to a
  new file on the same file system, then ``sync``; timed just before each tool's restore, in the
  same state of the disk (the figure is the median of all of them).

With ``--big-size`` (e.g. 4G) it adds an incremental line on a disk large enough that restic's
re-read is not dominated by its start-up: one full backup per tool, then each round changes 1%
of the blocks anew and times the incrementals (vmkeep-aes and restic; borg, as restic, re-reads).

Every backup and restore is timed until its data is durable: the command, then ``sync``. Before
each tool's restore the page cache is dropped when the bench runs as root
(``/proc/sys/vm/drop_caches``), so that no tool restores from memory, and the tool's own program
files are read back by one harmless run (``--help``, ``version``): data cold, program warm. dd's
source (the image) is cached, as the image the backups read is for every tool. Every restore is
checked against the image. The load average is recorded at the start and end of every round:
this VM is shared, and a busy round is slower for reasons that have nothing to do with the tools.
Each figure is the median round; ``--json`` keeps all.

vmkeep is timed as a user installs it: this source tree built and installed (``pip install``) into
a fresh virtual environment in the work directory, as restic and borg are ordinary installs. The
development install of ``install.sh`` is editable, and its import hook costs every command 10 to
25 ms here, which would be a tenth of an incremental; ``--editable`` times that one instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from vmkeep.agent.demo import change_one_percent, make_sample_image, sha256_file
from vmkeep.agent.output import parse_size

PASSWORD = "bench-only-password"
BORG_ENV = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes"}
MiB = 1024 * 1024
LIMIT = "limit"  # the tool name of the physical limits
TOOLS = ("vmkeep-aes", "vmkeep", "restic", "borg")
WARM_UP = {
    "vmkeep-aes": ["vmkeep", "--help"],  # imports every command module; "vmkeep": the bench's own command
    "vmkeep": ["vmkeep", "--help"],
    "restic": ["restic", "version"],
    "borg": ["borg", "--version"],
}


@dataclass
class Run:
    tool: str
    op: str
    seconds: float
    peak_mb: float
    round: int


@dataclass
class Bench:
    work: Path
    size: int
    big_size: int
    tools: list[str]
    rounds: int
    cold: bool = field(init=False)
    runs: list[Run] = field(default_factory=list)
    loads: list[tuple[int, str, str]] = field(default_factory=list)  # round, loadavg at start, at end

    vmkeep: list[str] = field(default_factory=lambda: [sys.executable, "-m", "vmkeep.agent.cli"])
    install: str = "as the development install (editable) that runs this script"

    def __post_init__(self) -> None:
        self.cold = drop_caches()

    # -- timing ----------------------------------------------------------------------------------

    def timed(
        self,
        tool: str,
        op: str,
        round_: int,
        cmd: list[str],
        env: dict[str, str] | None = None,
        *,
        cwd: Path | None = None,
        durable: bool = True,
        cold: bool = False,
    ) -> Run:
        """Run ``cmd``; wall seconds until its output is on disk (``durable``) and its peak RSS."""
        fd, out = tempfile.mkstemp()
        os.close(fd)
        os.sync()  # start quiet: no tool pays for the write-back of the previous one's output
        if cold and drop_caches():
            # Data cold, program warm: the tool's own files (restic's binary, vmkeep's Python
            # modules) are read back by one harmless run, so a cold restore measures the
            # repository's reads and the writes, not loading the program from disk.
            warm_up = WARM_UP[tool]
            if warm_up[0] == "vmkeep":
                warm_up = [*self.vmkeep, *warm_up[1:]]
            subprocess.run(warm_up, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
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
        return self.record(Run(tool, op, round(seconds, 4), round(peak_kb / 1024, 1), round_))

    def record(self, run: Run) -> Run:
        self.runs.append(run)
        print(f"  {run.tool:12} {run.op:16} {run.seconds:8.4f} s  peak {run.peak_mb:7.1f} MB", flush=True)
        return run

    # -- the rounds ------------------------------------------------------------------------------

    def run(self) -> None:
        original, changed, hints = self.work / "v1.img", self.work / "v2.img", self.work / "hints.json"
        print(f"making a {self.size / 2**30:.2f} GiB mixed image in {self.work}", flush=True)
        make_sample_image(original, self.size)
        shutil.copyfile(original, changed)
        changes = change_one_percent(changed)
        hints.write_text(json.dumps(changes))
        digest = sha256_file(changed)
        image = self.work / "disk.img"
        for n in range(self.rounds):
            start_load = loadavg()
            print(f"round {n + 1} of {self.rounds} (load {start_load}):", flush=True)
            self.limits(n, original, changed, changes)
            for tool in self.tools[n % len(self.tools) :] + self.tools[: n % len(self.tools)]:
                work = self.work / f"{tool}-{n}"
                work.mkdir()
                shutil.copyfile(original, image)
                steps = TOOL_STEPS[tool](self, work, image, n)
                steps.full()
                with changed.open("rb") as src, image.open("r+b") as dst:  # same file, new content
                    shutil.copyfileobj(src, dst, 16 * MiB)
                steps.incremental(hints)
                self.write_limit(n, changed, work)
                steps.restore(digest)
                steps.points()
                shutil.rmtree(work)
                os.sync()
                time.sleep(3)  # let the file system finish discarding (TRIM) what was deleted
            self.loads.append((n, start_load, loadavg()))
        image.unlink()
        if self.big_size:
            self.run_big()

    def limits(self, n: int, original: Path, changed: Path, changes: list[dict[str, object]]) -> None:
        zstd = ["zstd", "-1", "-T2", "-q", "-f", "-c", str(original)]  # to /dev/null: nothing to sync
        self.timed(LIMIT, "full", n, zstd, durable=False)
        self.record(Run(LIMIT, "incremental", read_changed_blocks(changed, changes), 0.0, n))

    def write_limit(self, n: int, changed: Path, work: Path) -> None:
        """dd writing the image's non-zero blocks, timed just before a tool's restore, in its conditions.

        This VM's disk writes at 0.5 to 1.5 times its usual speed depending on what was written
        and deleted (discarded) just before; a dd timed at the start of the round, on a rested
        disk, was up to 1.7 times faster than one timed where the restores run. Its file stays
        until the round's work directory goes, so that no discard lands on the tool's restore.
        """
        target = work / "dd.img"
        subprocess.run(["cat", str(changed)], stdout=subprocess.DEVNULL, check=True)  # dd's source cached
        dd = ["dd", f"if={changed}", f"of={target}", "bs=1M", "oflag=direct", "conv=sparse,fsync", "status=none"]
        self.timed(LIMIT, "restore", n, dd)

    def run_big(self) -> None:
        """Incrementals of a large image: one full per tool, then each round changes 1% anew."""
        image = self.work / "big.img"
        print(f"making a {self.big_size / 2**30:.2f} GiB mixed image for the incremental line", flush=True)
        make_sample_image(image, self.big_size, seed=43)
        tools = [t for t in ("vmkeep-aes", "restic") if t in self.tools]
        steps = {}
        for tool in tools:
            work = self.work / f"{tool}-big"
            work.mkdir()
            steps[tool] = TOOL_STEPS[tool](self, work, image, -1, big=True)
            steps[tool].full()
        for n in range(self.rounds):
            changes = change_one_percent(image, seed=100 + n)
            hints = self.work / f"big-hints-{n}.json"
            hints.write_text(json.dumps(changes))
            print(f"big round {n + 1} of {self.rounds} (load {loadavg()}):", flush=True)
            self.record(Run(LIMIT, "incremental big", read_changed_blocks(image, changes), 0.0, n))
            for tool in tools[n % len(tools) :] + tools[: n % len(tools)]:
                steps[tool].round = n
                steps[tool].incremental(hints)
        for tool in tools:
            shutil.rmtree(self.work / f"{tool}-big")
        image.unlink()

    # -- results ---------------------------------------------------------------------------------

    def median(self, tool: str, op: str) -> Run | None:
        runs = [r for r in self.runs if r.tool == tool and r.op == op and r.round >= 0]
        if not runs:
            return None
        seconds = statistics.median(r.seconds for r in runs)
        peak = max(r.peak_mb for r in runs)
        return Run(tool, op, seconds, peak, -1)


class Steps:
    """One tool's full, incremental, restore and listing, in a working directory."""

    def __init__(self, bench: Bench, work: Path, image: Path, round_: int, big: bool = False) -> None:
        self.bench, self.work, self.image, self.round, self.big = bench, work, image, round_, big
        self.repo = work / "repo"

    @property
    def incr_op(self) -> str:
        return "incremental big" if self.big else "incremental"

    tool = ""

    def timed(self, op: str, cmd: list[str], env: dict[str, str] | None = None, **kw: bool | Path) -> Run:
        return self.bench.timed(self.tool, op, self.round, cmd, env, **kw)  # type: ignore[arg-type]

    def full(self) -> None: ...
    def incremental(self, hints: Path) -> None: ...
    def restore(self, digest: str) -> None: ...
    def points(self) -> None: ...

    def check(self, restored: Path, digest: str) -> None:
        if sha256_file(restored) != digest:
            raise SystemExit(f"bench: {self.tool} restored {restored} differs from the image")
        restored.unlink()


class VmkeepSteps(Steps):
    encrypted = False

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.tool = "vmkeep-aes" if self.encrypted else "vmkeep"
        self.env = {"VMKEEP_PASSPHRASE": PASSWORD} if self.encrypted else {}
        self.cli = self.bench.vmkeep

    def full(self) -> None:
        init = [*self.cli, "init", str(self.repo), *(["--encrypt"] if self.encrypted else [])]
        subprocess.run(init, env={**os.environ, **self.env}, check=True, stdout=subprocess.DEVNULL)
        self.timed("full", [*self.cli, "backup-image", str(self.image), "--repo", str(self.repo), "-q"], self.env)

    def incremental(self, hints: Path) -> None:
        cmd = [*self.cli, "backup-image", str(self.image), "--repo", str(self.repo), "--hints", str(hints), "-q"]
        self.timed(self.incr_op, cmd, self.env)

    def restore(self, digest: str) -> None:
        out = self.work / "restore"
        cmd = [*self.cli, "restore", "latest", "--repo", str(self.repo), "--to-dir", str(out), "-q"]
        self.timed("restore", cmd, self.env, cold=True)
        self.check(find_one(out), digest)

    def points(self) -> None:
        self.timed("points", [*self.cli, "points", "--repo", str(self.repo)], self.env, durable=False)


class VmkeepAesSteps(VmkeepSteps):
    encrypted = True


class ResticSteps(Steps):
    """restic 0.14: always encrypted; repository format 2 with its default (auto) compression."""

    tool = "restic"
    env: ClassVar[dict[str, str]] = {"RESTIC_PASSWORD": PASSWORD}

    def cmd(self, *args: str) -> list[str]:
        return ["restic", "--repo", str(self.repo), "--quiet", *args]

    def full(self) -> None:
        subprocess.run(self.cmd("init"), env={**os.environ, **self.env}, check=True, stdout=subprocess.DEVNULL)
        self.timed("full", self.cmd("backup", str(self.image)), self.env)

    def incremental(self, hints: Path) -> None:
        self.timed(self.incr_op, self.cmd("backup", str(self.image)), self.env)

    def restore(self, digest: str) -> None:
        out = self.work / "restore"
        self.timed("restore", self.cmd("restore", "latest", "--target", str(out)), self.env, cold=True)
        self.check(find_one(out), digest)

    def points(self) -> None:
        self.timed("points", self.cmd("snapshots"), self.env, durable=False)


class BorgSteps(Steps):
    """borg 1.2: unencrypted, its default lz4 compression."""

    tool = "borg"

    def full(self) -> None:
        subprocess.run(
            ["borg", "init", "--encryption=none", str(self.repo)], env={**os.environ, **BORG_ENV}, check=True
        )
        self.timed("full", ["borg", "create", f"{self.repo}::full", str(self.image)], BORG_ENV)

    def incremental(self, hints: Path) -> None:
        self.timed(self.incr_op, ["borg", "create", f"{self.repo}::incr", str(self.image)], BORG_ENV)

    def restore(self, digest: str) -> None:
        out = self.work / "restore"
        out.mkdir()
        self.timed("restore", ["borg", "extract", f"{self.repo}::incr"], BORG_ENV, cwd=out, cold=True)
        self.check(find_one(out), digest)

    def points(self) -> None:
        self.timed("points", ["borg", "list", str(self.repo)], BORG_ENV, durable=False)


TOOL_STEPS: dict[str, type[Steps]] = {
    "vmkeep-aes": VmkeepAesSteps,
    "vmkeep": VmkeepSteps,
    "restic": ResticSteps,
    "borg": BorgSteps,
}


def install_vmkeep(venv: Path) -> list[str]:
    """This source tree, built and installed into a new virtual environment: the command to run it."""
    root = Path(__file__).resolve().parent.parent
    print(f"installing vmkeep from {root} into {venv} (as a user would; --editable skips this)", flush=True)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, str(root)], check=True, stdout=subprocess.DEVNULL)
    return [str(venv / "bin" / "vmkeep")]


def read_changed_blocks(image: Path, changes: list[dict[str, object]]) -> float:
    """Seconds to read every changed 1 MiB block of ``image`` with plain preads (the limit)."""
    blocks = sorted({int(str(c["offset"])) // MiB for c in changes})
    start = time.monotonic()
    fd = os.open(image, os.O_RDONLY)
    try:
        for b in blocks:
            os.pread(fd, MiB, b * MiB)
    finally:
        os.close(fd)
    return round(time.monotonic() - start, 6)


def drop_caches() -> bool:
    """Drop the page cache (as root); False where the machine does not allow it."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def human(size: int) -> str:
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def find_one(directory: Path) -> Path:
    files = [p for p in directory.rglob("*") if p.is_file()]
    if len(files) != 1:
        raise SystemExit(f"bench: expected one restored file in {directory}, found {len(files)}")
    return files[0]


# -- the report --------------------------------------------------------------------------------

OPS = (("full", "full"), ("incremental", "1% incremental"), ("restore", "restore"), ("points", "list points"))
TARGETS = (  # (what, numerator (tool, op), denominator (tool, op), target, at least?) of docs/DESIGN.md
    ("full: restic / vmkeep-aes", ("restic", "full"), ("vmkeep-aes", "full"), 2.5, True),
    ("full: borg / vmkeep-aes", ("borg", "full"), ("vmkeep-aes", "full"), 2.0, True),
    ("full: vmkeep-aes / zstd -1 -T2", ("vmkeep-aes", "full"), (LIMIT, "full"), 1.3, False),
    ("1% incremental: restic / vmkeep-aes", ("restic", "incremental"), ("vmkeep-aes", "incremental"), 10.0, True),
    (
        "1% incremental, big image: restic / vmkeep-aes",
        ("restic", "incremental big"),
        ("vmkeep-aes", "incremental big"),
        20.0,
        True,
    ),
    ("restore: restic / vmkeep-aes", ("restic", "restore"), ("vmkeep-aes", "restore"), 2.0, True),
    ("restore: vmkeep-aes / dd oflag=direct", ("vmkeep-aes", "restore"), (LIMIT, "restore"), 1.3, False),
    ("restore: vmkeep / dd oflag=direct", ("vmkeep", "restore"), (LIMIT, "restore"), 1.3, False),
)
LIMIT_NAMES = {
    "full": "`zstd -1 -T2`",
    "incremental": "read changed blocks",
    "incremental big": "read changed blocks",
    "restore": "`dd oflag=direct`",
}


def report(bench: Bench) -> dict[str, object]:
    medians = {(t, op): bench.median(t, op) for t in [*TOOLS, LIMIT] for op, _ in [*OPS, ("incremental big", "")]}
    ops = [
        *OPS[:2],
        *((("incremental big", f"1% incremental, {human(bench.big_size)}"),) if bench.big_size else ()),
        *OPS[2:],
    ]
    print(
        f"\nmedian of {bench.rounds} round(s), {human(bench.size)} image"
        f"{', restores from a cold page cache' if bench.cold else ''}, vmkeep {bench.install}:\n"
    )
    header = "| | " + " | ".join(label for _, label in ops) + " | peak memory (full / restore) |"
    print(header)
    print("|---" * (len(ops) + 2) + "|")
    for tool in [t for t in TOOLS if t in bench.tools] + [LIMIT]:
        cells = []
        for op, _ in ops:
            run = medians.get((tool, op))
            base = medians.get((LIMIT, op))
            if run is None:
                cells.append("")
            elif tool == LIMIT:
                cells.append(f"{run.seconds:.3g} s ({LIMIT_NAMES.get(op, '')})" if op in LIMIT_NAMES else "")
            else:
                ratio = f" ({run.seconds / base.seconds:.2f}× limit)" if base is not None and base.seconds > 0 else ""
                cells.append(f"{run.seconds:.3g} s{ratio}")
        full, restore = medians.get((tool, "full")), medians.get((tool, "restore"))
        peak = f"{full.peak_mb:.0f} / {restore.peak_mb:.0f} MB" if full and restore and tool != LIMIT else ""
        print(f"| {tool} | " + " | ".join(cells) + f" | {peak} |")
    print("\ntargets (docs/DESIGN.md), on medians:")
    results = []
    for what, num, den, target, at_least in TARGETS:
        a, b = medians.get(num), medians.get(den)
        value = None if a is None or b is None or b.seconds == 0 else a.seconds / b.seconds
        met = None if value is None else (value >= target if at_least else value <= target)
        verdict = {None: "not measured", True: "met", False: "MISSED"}[met]
        shown = "n/a" if value is None else f"{value:6.2f}"
        print(f"  {what:42} {shown}  (target {'>=' if at_least else '<='} {target})  {verdict}")
        results.append({"what": what, "ratio": value, "target": target, "met": met})
    print("\nload average per round (start, end): " + "; ".join(f"{s} -> {e}" for _, s, e in bench.loads))
    return {
        "size": bench.size,
        "big_size": bench.big_size,
        "cpus": os.cpu_count(),
        "rounds": bench.rounds,
        "cold_restores": bench.cold,
        "loads": bench.loads,
        "runs": [asdict(r) for r in bench.runs],
        "medians": [asdict(m) for m in medians.values() if m is not None],
        "targets": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="768M", help="image size (default: 768M)")
    parser.add_argument("--big-size", default="0", help="also an incremental line at this size, e.g. 4G (default: off)")
    parser.add_argument("--workdir", type=Path, help="where to work (default: a temporary directory, removed)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated tools to run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the median (default: 3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every run as JSON to FILE")
    parser.add_argument(
        "--editable", action="store_true", help="time the development install that runs this script, not a fresh one"
    )
    args = parser.parse_args()

    tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in tools if t not in TOOL_STEPS]
    if unknown:
        parser.error(f"unknown tool(s): {', '.join(unknown)}")
    for tool in ("restic", "borg"):
        if tool in tools and shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (./install.sh --bench); skipping it", file=sys.stderr)
            tools.remove(tool)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="vmkeep-bench-", dir=os.environ.get("VMKEEP_BENCH_DIR")))
    work.mkdir(parents=True, exist_ok=True)
    bench = Bench(work, parse_size(args.size), parse_size(args.big_size), tools, max(1, args.rounds))
    if not args.editable and any(t.startswith("vmkeep") for t in tools):
        bench.vmkeep = install_vmkeep(work / "venv")
        bench.install = "installed from this tree into a fresh virtual environment"
    try:
        bench.run()
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    doc = report(bench)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
