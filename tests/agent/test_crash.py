"""Crash safety, for real: backups killed with SIGKILL at many moments leave a sound repository.

After every kill, ``verify --read-data`` passes, every point committed so far restores byte for
byte as its image was, and at the end the next backup works.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.images import make_image
from tests.fixtures.repos import run_vmkeep

IMAGE_SIZE = 48 * 1024 * 1024
KILLS = 14


def _start_backup(image: Path, repo: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")}
    return subprocess.Popen(
        [sys.executable, "-m", "vmkeep.agent.cli", "backup-image", str(image), "--repo", str(repo), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def _rewrite_region(image: Path, rng: random.Random) -> None:
    """New content for half the image, so each backup writes packs from start to end."""
    length = IMAGE_SIZE // 2
    offset = rng.randrange(0, IMAGE_SIZE - length)
    with image.open("r+b") as f:
        f.seek(offset)
        f.write(
            rng.randbytes(length // 2)
            + b"compressible " * (length // 26)
            + bytes(length - length // 2 - 13 * (length // 26))
        )


def _points(repo: Path) -> dict[str, str]:
    result = run_vmkeep("points", "--repo", repo, "--json")
    assert result.code == 0, result.err
    return {p["id"]: p["time"] for p in json.loads(result.out)}


def _restore(repo: Path, point: str, out: Path) -> bytes:
    result = run_vmkeep("restore", point, "--repo", repo, "--to-dir", out, "--json")
    assert result.code == 0, result.err
    path = Path(json.loads(result.out)["disks"][0]["path"])
    data = path.read_bytes()
    path.unlink()
    return data


def test_sigkill_at_many_moments_never_damages_the_repository(repo_path: Path, tmp_path: Path) -> None:
    rng = random.Random(2026)
    image = make_image(tmp_path / "vm.img", IMAGE_SIZE, seed=77)
    content: dict[str, bytes] = {}  # point id -> image content it must restore to

    # A clean run first: the committed baseline, and how long a backup takes end to end.
    started = time.monotonic()
    proc = _start_backup(image, repo_path)
    out, err = proc.communicate(timeout=300)
    duration = time.monotonic() - started
    assert proc.returncode == 0, err
    content[json.loads(out)["points"][0]["id"]] = image.read_bytes()

    killed_mid_job = 0
    left_garbage = 0
    for n in range(KILLS):
        _rewrite_region(image, rng)
        expected = image.read_bytes()
        # Spread the kills over the whole run, from interpreter start-up to the final commit.
        delay = duration * (0.15 + 0.95 * (n + rng.random()) / KILLS)
        proc = _start_backup(image, repo_path)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if proc.returncode == -signal.SIGKILL:
            killed_mid_job += 1
        for point in set(_points(repo_path)) - set(content):  # a kill after the commit keeps its point
            content[point] = expected

        check = run_vmkeep("verify", "--repo", repo_path, "--read-data", "--json")
        assert check.code == 0, f"after kill {n} at {delay:.2f}s: {check.out}"
        left_garbage += bool(json.loads(check.out)["warnings"])  # packs written, never indexed
        assert set(_points(repo_path)) == set(content)
        for point in rng.sample(sorted(content), min(2, len(content))):
            assert _restore(repo_path, point, tmp_path / "out") == content[point], f"point {point} after kill {n}"

    assert killed_mid_job >= KILLS // 2, "most kills should land while the backup runs"
    assert left_garbage >= 1, "some kills should land between writing packs and committing"
    for point, data in content.items():
        assert _restore(repo_path, point, tmp_path / "final") == data
    # The next backup works, and gc clears what the killed runs left behind.
    proc = _start_backup(image, repo_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert _restore(repo_path, json.loads(out)["points"][0]["id"], tmp_path / "next") == image.read_bytes()
    assert run_vmkeep("gc", "--repo", repo_path).code == 0
    check = run_vmkeep("verify", "--repo", repo_path, "--read-data", "--json")
    assert check.code == 0 and json.loads(check.out)["warnings"] == []


def test_sigterm_and_sigint_stop_a_backup_cleanly_and_commit_nothing(repo_path: Path, tmp_path: Path) -> None:
    image = make_image(tmp_path / "vm.img", IMAGE_SIZE, seed=78)
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = _start_backup(image, repo_path)
        assert proc.stderr is not None
        proc.stderr.readline()  # "vm disk disk0: full read: ...": the job is under way
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert (
            err.decode()
            .strip()
            .endswith("vmkeep: error: interrupted; the job was cleaned up and nothing was committed")
        )
        assert _points(repo_path) == {}
        assert run_vmkeep("verify", "--repo", repo_path, "--read-data").code == 0
        assert not any((repo_path / "locks").iterdir()), "the lock must be released"
