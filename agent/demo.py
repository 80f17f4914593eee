"""``vmkeep demo``: the main job on an embedded default, end to end, with proof at each step.

The image demo makes a sample disk image, backs it up in full, changes 1% of it, backs it up
again with change hints, restores both points, and compares each restore byte for byte with
the image as it was when backed up.
"""

from __future__ import annotations

import hashlib
import json
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
    steps: list[DemoStep] = field(default_factory=list)

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


def run_image_demo(workdir: Path | None, size: int, say: Callable[[str], None]) -> DemoResult:
    base = workdir or Path(tempfile.mkdtemp(prefix="vmkeep-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    result = DemoResult(str(base))

    def step(what: str, detail: str, ok: bool = True) -> None:
        result.steps.append(DemoStep(what, detail, ok))
        say(f"{'ok ' if ok else 'FAIL'} {what}: {detail}")

    image, repo_dir = base / "demo-disk.img", base / "repo"
    for stale in (image, repo_dir, base / "restore"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
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
