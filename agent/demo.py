"""``vmkeep demo``: the main job on an embedded default, end to end, with proof at each step.

The vSphere demo (the default) builds and starts the ``vcsim/`` simulator on 127.0.0.1 with a
throw-away TLS certificate, writes data into a simulated VM's disk as its guest would, backs
the VM up (a full read), writes more, backs it up again (an incremental, through changed
block tracking), restores the incremental point to the simulated host as a new VM and both
points to files, and compares every restored disk byte for byte with the VM's disk as its
snapshot froze it.

The image demo does the same with a sample disk image and rbd-diff style change hints.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep.hypervisors.image.session import ImageSession
from vmkeep.repository.config import RepoConfig
from vmkeep.repository.repo import Repository

from .engine.backup import BackupOptions, backup_vm
from .engine.restore import restore_point_to_dir
from .exceptions import ConfigError
from .output import human_duration, human_size, rate

MiB = 1024 * 1024


@dataclass
class DemoStep:
    what: str
    detail: str
    ok: bool = True


@dataclass
class DemoResult:
    workdir: str
    say: Callable[[str], None] = field(default=print, repr=False)
    steps: list[DemoStep] = field(default_factory=list)

    def step(self, what: str, detail: str, ok: bool = True) -> None:
        """Record a step and tell the user about it."""
        self.steps.append(DemoStep(what, detail, ok))
        self.say(f"{'ok ' if ok else 'FAIL'} {what}: {detail}")

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "workdir": self.workdir, "steps": [vars(s) for s in self.steps]}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def sha256_chunks(read: Callable[[int, int], bytes], size: int, chunk: int = 4 * MiB) -> str:
    """SHA-256 of ``size`` bytes read ``chunk`` at a time, so memory stays small whatever the size."""
    h = hashlib.sha256()
    for offset in range(0, size, chunk):
        h.update(read(offset, min(chunk, size - offset)))
    return h.hexdigest()


def make_sample_image(path: Path, size: int, seed: int = 42) -> None:
    """A quarter zeros, half compressible text, a quarter random bytes, in 1 MiB runs."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
    text = b" ".join(rng.choice(words) for _ in range(600_000))[: 2 * MiB]
    kinds = ["zero", "text", "text", "random"] * (size // MiB // 4 + 1)
    rng.shuffle(kinds)
    with path.open("wb") as f:
        for n in range(-(-size // MiB)):
            length = min(MiB, size - n * MiB)
            if kinds[n] == "zero":
                f.seek(length, 1)
            elif kinds[n] == "text":
                start = rng.randrange(MiB)
                f.write(rng.randbytes(16) + text[start : start + length - 16])
            else:
                f.write(rng.randbytes(length))
        f.truncate(size)


def change_one_percent(path: Path, seed: int = 7) -> list[dict[str, Any]]:
    """Overwrite 64 KiB in 1% of the image's 1 MiB blocks; return rbd-diff style hints."""
    rng = random.Random(seed)
    size = path.stat().st_size
    blocks = rng.sample(range(size // MiB), max(1, size // MiB // 100))
    hints = []
    with path.open("r+b") as f:
        for b in sorted(blocks):
            offset = b * MiB + rng.randrange(0, MiB - 65536)
            f.seek(offset)
            f.write(rng.randbytes(65536))
            hints.append({"offset": offset, "length": 65536, "exists": "true"})
    return hints


def write_sample_disk(write: Callable[[int, bytes], None], size: int, seed: int = 42) -> None:
    """Fill a simulated disk like make_sample_image, through a guest-write function, skipping zeros."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 9))) for _ in range(2000)]
    text = b" ".join(rng.choice(words) for _ in range(600_000))[: 2 * MiB]
    for n in range(size // MiB):
        kind = rng.choice(["zero", "text", "text", "random"])
        if kind == "text":
            start = rng.randrange(MiB)
            write(n * MiB, rng.randbytes(16) + text[start : start + MiB - 16])
        elif kind == "random":
            write(n * MiB, rng.randbytes(MiB))


def run_vsphere_demo(workdir: Path | None, size: int, say: Callable[[str], None]) -> DemoResult:
    from vmkeep.hypervisors.tls import TlsPolicy
    from vmkeep.hypervisors.vsphere.connection import ConnectionSettings, VSphereConnection
    from vmkeep.hypervisors.vsphere.restore import VsphereRestoreTarget, restore_vm
    from vmkeep.hypervisors.vsphere.session import VSphereSession
    from vmkeep.hypervisors.vsphere.simulator import (
        ENV_VCSIM_DIR,
        Simulator,
        SimulatorError,
        SimulatorOptions,
        build,
        needs_build,
        vcsim_dir,
    )
    from vmkeep.hypervisors.vsphere.simulator_tls import make_tls_material

    from .engine.restore import disk_images

    if not (vcsim_dir() / "build.sh").is_file():
        raise ConfigError(
            f"the vSphere demo runs the vcsim/ simulator, which comes with vmkeep's source, not with the package "
            f"(no {vcsim_dir()}): run it from a checkout (./install.sh && .venv/bin/vmkeep demo) or set "
            f"${ENV_VCSIM_DIR} to one's vcsim/ directory; 'vmkeep demo --image' needs no simulator"
        )
    base = _fresh_workdir(workdir)
    result = DemoResult(str(base), say)
    step = result.step

    rebuild = needs_build()
    if rebuild:
        say("building vcsim/ (the first build takes about half a minute)...")
    try:
        binary = build()
    except SimulatorError as exc:  # no Go compiler, no govmomi sources...: vcsim/build.sh tells why
        raise ConfigError(
            f"cannot build the simulator: {str(exc).splitlines()[0]} (run vcsim/build.sh to see why)"
        ) from None
    step("simulator", f"built {binary}" if rebuild else f"{binary} (up to date)")
    tls = make_tls_material(base / "tls")
    vm_name = "DC0_H0_VM0"
    options = SimulatorOptions(tls_cert=tls.cert_pem, tls_key=tls.key_pem, tls_ca=tls.ca_pem, disk_mb=size // MiB)
    with Simulator(options) as sim:
        endpoint = sim.endpoint
        api = sim.api
        step("vCenter", f"simulator at {endpoint.url}, certificate SHA-256 {tls.sha256[:23]}... (pinned)")
        settings = ConnectionSettings(
            f"{endpoint.host}:{endpoint.port}", endpoint.user, endpoint.password, TlsPolicy(thumbprint=tls.sha256)
        )
        write_sample_disk(lambda offset, data: api.write(vm_name, offset, data), size)
        step("guest data", f"wrote {human_size(size)} of zeros, text and random data into {vm_name}'s disk")
        digests: list[str] = []  # of the disk as each snapshot is about to freeze it
        with VSphereConnection(settings) as conn, Repository.init(base / "repo", RepoConfig.new(), None) as repo:
            points = []
            for round_ in range(2):
                if round_:
                    rng = random.Random(7)
                    for _ in range(max(1, size // MiB // 100)):
                        api.write(vm_name, rng.randrange(size - 65536), rng.randbytes(65536))
                    step("guest writes", "changed 64 KiB in 1% of the disk's 1 MiB blocks")
                digests.append(sha256_chunks(lambda off, n: api.read(vm_name, off, n), size))
                with repo.lock("backup"), VSphereSession(conn, vm_name) as session:
                    point = backup_vm(session, repo, BackupOptions())
                points.append(point)
                disk = point.disks[0]
                step(
                    f"{point.kind} backup",
                    f"point {point.short_id}: read {human_size(disk.read_bytes)} of {human_size(disk.capacity)} "
                    f"in {human_duration(point.duration)}, new {human_size(disk.new_bytes)}"
                    + (f" ({disk.reason})" if disk.reason else ""),
                    ok=point.kind == ("incremental" if round_ else "full"),
                )
            step("snapshots", "every backup snapshot was removed", ok=api.state(vm_name).snapshots == ())

            latest = points[-1]
            target = VsphereRestoreTarget(f"{vm_name}-restored", "LocalDS_0")
            restored = restore_vm(conn, latest.hardware, disk_images(repo, latest, 2), target)
            same = sha256_chunks(lambda off, n: api.read(restored.name, off, n), size) == digests[-1]
            step(
                "restore to host",
                f"new VM {restored.name} ({restored.id}): its disk is "
                f"{'identical to' if same else 'DIFFERENT from'} the disk at the snapshot",
                ok=same,
            )
            for point, digest in zip(points, digests, strict=True):
                [file] = restore_point_to_dir(repo, point, base / "restore" / point.short_id, workers=2)
                same = sha256_file(Path(file.path)) == digest
                step(
                    f"restore {point.short_id} to a file",
                    f"{file.path} is {'identical to' if same else 'DIFFERENT from'} the disk at the snapshot",
                    ok=same,
                )
        server = f"{endpoint.host}:{endpoint.port}"
        run_scheduled_demo(base, server, endpoint.user, endpoint.password, thumbprint=tls.sha256, step=step)
    return result


DEMO_JOBS = """
[jobs.web]
source = "sim"
repository = "main"
vms = ["DC0_H0_VM0"]
schedule = "*/6 * * * * *"   # every 6 seconds (a sixth, leading field gives seconds)

[jobs.db]
source = "sim"
repository = "main"
vms = ["DC0_H0_VM1"]
schedule = "3-59/6 * * * * *"   # 3 seconds later

[jobs.db.retention]
last = 3
"""


def run_scheduled_demo(
    base: Path, server: str, user: str, password: str, *, thumbprint: str, step: Callable[..., None]
) -> None:
    """Write a job file of two jobs a few seconds apart, run the real agent until both ran, stop it."""
    import signal
    import subprocess
    import sys
    import time

    from .history import History

    secret = base / "sim.password"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    config = base / "vmkeep.toml"
    config.write_text(
        f'state_dir = "{base / "state"}"\n\n[sources.sim]\nurl = "{server}"\nuser = "{user}"\n'
        f'password_file = "{secret}"\nthumbprint = "{thumbprint}"\n\n'
        f'[repositories.main]\npath = "{base / "repo"}"\n' + DEMO_JOBS
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")}
    with (base / "agent.log").open("wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "vmkeep.agent.cli", "agent", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
    rows: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and agent.poll() is None:
            history = History.open_existing(base / "state")
            if history is not None:
                rows = history.vm_runs()
                history.close()
                if {r["job"] for r in rows if r["status"] == "succeeded"} == {"web", "db"}:
                    break
            time.sleep(0.3)
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        code = agent.wait(60)
    done = {r["job"]: r for r in rows if r["status"] == "succeeded"}
    detail = "; ".join(
        f"job {job} ran at {r['started'][11:19]} UTC: {r['vm']} point {r['point_id'][:12]} ({r['kind']})"
        for job, r in sorted(done.items(), key=lambda item: item[1]["started"])
    )
    step(
        "scheduled run",
        f"'vmkeep agent --config {config}' ran two jobs 3 s apart, then stopped on SIGTERM (exit {code}): "
        + (detail or f"no run finished; see {base / 'agent.log'}"),
        ok=len(done) == 2 and code == 0,
    )


def _fresh_workdir(workdir: Path | None) -> Path:
    base = workdir or Path(tempfile.mkdtemp(prefix="vmkeep-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    for stale in ("demo-disk.img", "repo", "restore", "tls", "hints.json", "state", "vmkeep.toml", "agent.log"):
        path = base / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return base


def run_image_demo(workdir: Path | None, size: int, say: Callable[[str], None]) -> DemoResult:
    base = _fresh_workdir(workdir)
    result = DemoResult(str(base), say)
    step = result.step

    image, repo_dir = base / "demo-disk.img", base / "repo"
    make_sample_image(image, size)
    digests = [sha256_file(image)]
    step("sample image", f"{image} ({human_size(size)}: zeros, text and random data)")
    with Repository.init(repo_dir, RepoConfig.new(), None) as repo:
        step("repository", f"{repo_dir} (block size {human_size(repo.config.block_size)})")
        points = []
        with repo.lock("backup"), ImageSession(image, "demo-vm") as session:
            points.append(backup_vm(session, repo, BackupOptions()))
        disk = points[0].disks[0]
        step(
            "full backup",
            f"point {points[0].short_id}: read {human_size(disk.read_bytes)} at "
            f"{rate(disk.read_bytes, points[0].duration)}, stored {human_size(disk.stored_bytes)}",
        )

        hints_path = base / "hints.json"
        hints_path.write_text(json.dumps(change_one_percent(image)))
        digests.append(sha256_file(image))
        with repo.lock("backup"), ImageSession(image, "demo-vm", hints_path) as session:
            points.append(backup_vm(session, repo, BackupOptions()))
        disk = points[1].disks[0]
        step(
            "incremental backup",
            f"point {points[1].short_id} ({disk.mode}): read {human_size(disk.read_bytes)} of "
            f"{human_size(disk.capacity)} in {human_duration(points[1].duration)}, new {human_size(disk.new_bytes)}",
            ok=disk.mode == "incremental",
        )
        for point, digest in zip(points, digests, strict=True):
            [restored] = restore_point_to_dir(repo, point, base / "restore" / point.short_id, workers=2)
            same = sha256_file(Path(restored.path)) == digest
            step(
                f"restore {point.short_id}",
                f"{restored.path} is {'identical to' if same else 'DIFFERENT from'} the image as it was backed up",
                ok=same,
            )
    return result
