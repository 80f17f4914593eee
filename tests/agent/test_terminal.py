"""Progress bars (tqdm) on a real terminal for long commands, and none when stderr is not a terminal."""

from __future__ import annotations

import os
from pathlib import Path

from tests.fixtures.images import make_image
from tests.fixtures.repos import run_vmkeep
from tests.fixtures.terminal import run_on_pty


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")}


def _repo_with_garbage(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--block-size", "64K", "--pack-size", "1M").code == 0
    for name, seed in (("a", 1), ("b", 2)):
        image = make_image(tmp_path / f"{name}.img", 3_000_000, seed=seed)
        assert run_vmkeep("backup-image", image, "--name", name, "--repo", repo).code == 0
    return repo


def _bar(output: str, desc: str) -> bool:
    """tqdm draws 'DESC: 100%|█████| 2.9M/2.9M [...]' when it finishes."""
    return any(desc in line and "100%|" in line for line in output.replace("\r", "\n").splitlines())


def test_long_commands_draw_a_bar_on_a_terminal(tmp_path: Path) -> None:
    image = make_image(tmp_path / "web01.img", 3_000_000, seed=3)
    repo = _repo_with_garbage(tmp_path)
    code, out = run_on_pty(["backup-image", str(image), "--name", "web01", "--repo", str(repo)], [], _env())
    assert code == 0, out
    assert _bar(out, "web01 disk disk0 full")
    code, out = run_on_pty(["verify", "--read-data", "--repo", str(repo)], [], _env())
    assert code == 0, out
    assert _bar(out, "verify --read-data")
    code, out = run_on_pty(["points", "--sizes", "--repo", str(repo)], [], _env())
    assert code == 0, out
    assert _bar(out, "points --sizes")
    assert run_vmkeep("forget", "latest:a", "--repo", repo).code == 0
    code, out = run_on_pty(["gc", "--max-unused", "0", "--repo", str(repo)], [], _env())
    assert code == 0, out
    assert _bar(out, "gc: repacking")
    code, out = run_on_pty(["gc", "--repo", str(repo)], [], _env())
    assert code == 0, out
    assert "gc: repacking" not in out  # nothing left to repack: no bar


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    repo = _repo_with_garbage(tmp_path)
    verify = run_vmkeep("verify", "--read-data", "--repo", repo)
    assert verify.code == 0, verify.err
    sizes = run_vmkeep("points", "--sizes", "--repo", repo)
    assert sizes.code == 0, sizes.err
    for result in (verify, sizes):
        assert "\r" not in result.err and "%|" not in result.err


def test_the_disks_of_a_vm_read_together_share_one_bar() -> None:
    """The engine reads a VM's disks at once: one bar for them all, closed when the last one ends."""
    import fcntl
    import select
    import struct
    import termios

    from vmkeep.agent.terminal import TerminalProgress

    master, replica = os.openpty()
    fcntl.ioctl(replica, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty has 0 columns
    with os.fdopen(replica, "w") as stream:
        progress = TerminalProgress(stream)
        progress.disk_started("web01", "Hard disk 1", 3 << 20, "full", None)
        progress.disk_started("web01", "Hard disk 2", 1 << 20, "full", None)
        progress.advance(3 << 20)
        progress.disk_finished("Hard disk 1")
        progress.advance(1 << 20)
        progress.disk_finished("Hard disk 2")
    out = b""
    while select.select([master], [], [], 0.5)[0]:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the other end is closed
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    text = out.decode(errors="replace")
    assert _bar(text, "web01 2 disks full"), text
    assert "4.00M/4.00M" in text, text
