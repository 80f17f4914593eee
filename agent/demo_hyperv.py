"""``vmkeep demo --hyperv``: the Hyper-V story on the simulated host, with proof at each step.

It starts the simulated Hyper-V host (hypervisors/hyperv/simulator/) on 127.0.0.1: a WinRM
server that the agent's pywinrm client logs in to with NTLM (message encryption on), and, when
smbd can run (as root), a Samba share holding the host's C: drive. A VM's disk, a real VHDX, is
filled with sample data; the VM is backed up in full (recovery checkpoint, frozen VHDX read over
SMB), 1% of it is rewritten as its guest would, and it is backed up again through Resilient
Change Tracking. Both points are restored to files and the newest also to the host as a new VM,
and every restored disk is compared, by SHA-256, with the disk as its checkpoint froze it
(read by ``qemu-img convert``, a reader independent of the agent's). Without smbd the disks
are read through WinRM instead, and the demo says so.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vmkeep.hypervisors.hyperv import qemu
from vmkeep.hypervisors.hyperv.platform import HypervEndpoint, HypervPlatform, HypervRestoreTarget
from vmkeep.hypervisors.hyperv.shares import ShareMap
from vmkeep.hypervisors.hyperv.simulator.host import SimHost
from vmkeep.hypervisors.hyperv.simulator.ntlm import write_ntlm_user_file
from vmkeep.hypervisors.hyperv.simulator.samba import SambaServer, smbd_usable
from vmkeep.hypervisors.hyperv.simulator.wsman import WsmanServer
from vmkeep.hypervisors.platforms import SessionOptions
from vmkeep.repository.config import RepoConfig
from vmkeep.repository.points import RecoveryPoint
from vmkeep.repository.repo import Repository

from .demo import DemoResult, MiB, _fresh_workdir, make_sample_image, sha256_file
from .engine.backup import BackupOptions, backup_vm
from .engine.restore import disk_images, restore_point_to_dir
from .output import human_duration, human_size, rate

VM = "demo-vm"
DOMAIN, USER = "HV-DEMO", "vmkeep"
UNREACHABLE_SMB_PORT = 1  # nothing listens there: the agent falls back to WinRM


def _raw_sha256(vhdx: Path, tmp: Path) -> str:
    raw = tmp / "frozen.raw"
    qemu.to_raw(vhdx, raw)
    try:
        return sha256_file(raw)
    finally:
        raw.unlink()


@contextlib.contextmanager
def _servers(base: Path, password: str) -> Iterator[tuple[SimHost, WsmanServer, SambaServer | None]]:
    users = write_ntlm_user_file(base / "ntlm-users", {f"{DOMAIN}\\{USER}": password})
    share_dir = base / "share"
    share_dir.mkdir()
    host = SimHost(share_dir / "C")
    with contextlib.ExitStack() as stack:
        wsman = WsmanServer(host.handle, user_file=users).start()
        stack.callback(wsman.stop)
        samba = None
        if smbd_usable() is None:
            samba = stack.enter_context(SambaServer(base / "samba", "vmstore", share_dir, USER, password))
        yield host, wsman, samba


def run_hyperv_demo(workdir: Path | None, size: int, say: Callable[[str], None]) -> DemoResult:
    base = _fresh_workdir(workdir)
    for stale in ("share", "samba", "ntlm-users", "sample.raw"):
        path = base / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    result = DemoResult(str(base), say)
    step = result.step
    password = secrets.token_urlsafe(16)
    with _servers(base, password) as (host, wsman, samba), tempfile.TemporaryDirectory(dir=base) as scratch:
        tmp = Path(scratch)
        smb_port = samba.port if samba is not None else UNREACHABLE_SMB_PORT
        endpoint = HypervEndpoint(
            wsman.endpoint,
            f"{DOMAIN}\\{USER}",
            password,
            smb_port=smb_port,
            shares=ShareMap.parse(["C:\\=vmstore\\C"]),
            fallback_limit=size if samba is None else 256 * MiB,
        )
        where = (
            f"SMB on 127.0.0.1:{samba.port}" if samba is not None else f"WinRM (smbd cannot run here: {smbd_usable()})"
        )
        step("simulated Hyper-V host", f"WinRM on {wsman.endpoint} (NTLM, encrypted); disks read over {where}")
        host.create_vm(VM, (size,), cpu=2, memory_mb=2048)
        sample = base / "sample.raw"
        make_sample_image(sample, size)
        host.load_raw(VM, sample)
        sample.unlink()
        step("VM", f"{VM}: generation 2, one {human_size(size)} VHDX of zeros, text and random data (qemu-img)")

        frozen: list[str] = []  # the disk's SHA-256 as each backup's checkpoint froze it

        def host_after_checkpoint(h: SimHost) -> None:
            frozen.append(_raw_sha256(h.disk_file(VM), tmp))

        with Repository.init(base / "repo", RepoConfig.new(), None) as repo:
            points: list[RecoveryPoint] = []
            for n in range(2):
                if n == 1:
                    rng = random.Random(7)
                    blocks = rng.sample(range(size // MiB), max(1, size // MiB // 100))
                    for b in sorted(blocks):
                        host.guest_write(VM, b * MiB + rng.randrange(0, MiB - 65536) // 512 * 512, rng.randbytes(65536))
                host.after("begin-backup", host_after_checkpoint)
                with (
                    repo.lock("backup"),
                    HypervPlatform.connect(endpoint) as platform,
                    platform.open_session(VM, SessionOptions()) as session,
                ):
                    points.append(backup_vm(session, repo, BackupOptions()))
                point = points[-1]
                disk = point.disks[0]
                kind = "full backup" if n == 0 else "incremental backup (RCT)"
                step(
                    kind,
                    f"point {point.short_id} ({disk.mode}): read {human_size(disk.read_bytes)} of "
                    f"{human_size(disk.capacity)} in {human_duration(point.duration)} "
                    f"({rate(disk.read_bytes, point.duration)}), new {human_size(disk.new_bytes)}",
                    ok=disk.mode == ("full" if n == 0 else "incremental") and not host.checkpoints(VM),
                )
            for point, digest in zip(points, frozen, strict=True):
                [restored] = restore_point_to_dir(repo, point, base / "restore" / point.short_id, workers=2)
                same = sha256_file(Path(restored.path)) == digest
                step(
                    f"restore {point.short_id} to a file",
                    f"{restored.path} is {'identical to' if same else 'DIFFERENT from'} the disk its checkpoint froze",
                    ok=same,
                )
            if samba is not None:
                latest = points[-1]
                target = HypervRestoreTarget(name=f"{VM}-restored")
                with HypervPlatform.connect(endpoint) as platform:
                    made = platform.restore_to_host(latest.hardware, disk_images(repo, latest, 2), target)
                new_disk = host.vms[made.name].disks[0]
                same = _raw_sha256(host.local_path(new_disk.path), tmp) == frozen[-1]
                step(
                    f"restore {latest.short_id} to the host",
                    f"VM {made.name} created over WinRM, its VHDX uploaded over SMB and read back by qemu-img: "
                    f"{'identical to' if same else 'DIFFERENT from'} the frozen disk",
                    ok=same,
                )
            else:
                step("restore to the host", "skipped: it uploads over SMB, and smbd cannot run here")
    return result
