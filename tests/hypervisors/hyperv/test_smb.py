"""VHDX files on a real Samba share (smbd on loopback) through smbprotocol and dissect.hypervisor.

The images are made by qemu-img from raw files of known content, a guest write goes in with
qemu-io, and ``qemu-img convert -O raw`` is the independent reader every result is compared to.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fixtures.hyperv import HypervAccount
from vmkeep.hypervisors.hyperv.exceptions import (
    AuthenticationFailed,
    ConnectionFailed,
    HypervError,
    RemoteFileNotFound,
    ShareNotFound,
)
from vmkeep.hypervisors.hyperv.simulator.samba import SambaServer, free_port
from vmkeep.hypervisors.hyperv.smb import SmbSettings, SmbShare, VhdxReader, upload

MiB = 1024 * 1024
Settings = Callable[..., SmbSettings]


def qemu(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def disk(samba: SambaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """A 24 MiB VHDX on the share (random data, a hole, a pattern) after one guest write; and its raw bytes."""
    work = tmp_path_factory.mktemp("vhdx")
    rng = random.Random(10)
    content = bytearray(rng.randbytes(5 * MiB) + bytes(12 * MiB) + b"vmkeep-hyperv" * (7 * MiB // 13 + 1))[: 24 * MiB]
    raw = work / "source.raw"
    raw.write_bytes(content)
    name = "Virtual Hard Disks/db01.vhdx"
    vhdx = samba.directory / name
    vhdx.parent.mkdir(exist_ok=True)
    qemu("qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", "subformat=dynamic,block_size=1M", raw, vhdx)
    # a guest write across a block boundary, into the hole, after the image was made
    qemu("qemu-io", "-f", "vhdx", "-c", f"write -P 0xab {9 * MiB - 4096} 65536", vhdx)
    content[9 * MiB - 4096 : 9 * MiB - 4096 + 65536] = b"\xab" * 65536
    oracle = work / "oracle.raw"
    qemu("qemu-img", "convert", "-f", "vhdx", "-O", "raw", vhdx, oracle)
    assert oracle.read_bytes() == content
    yield name, bytes(content)
    vhdx.unlink()


@pytest.fixture
def share(smb_settings: Settings) -> Iterator[SmbShare]:
    with SmbShare(smb_settings()) as s:
        yield s


def test_vhdx_over_smb_reads_the_virtual_disk(share: SmbShare, disk: tuple[str, bytes]) -> None:
    name, content = disk
    with VhdxReader(share, name) as reader:
        assert reader.size == len(content)
        assert reader.block_size == MiB
        assert reader.read(0, reader.size) == content
        # RCT ranges have any alignment: unaligned, across blocks, at the end
        for offset, length in [(1, 511), (9 * MiB - 4097, 70_000), (MiB - 3, 6), (len(content) - 100, 4096)]:
            assert reader.read(offset, length) == content[offset : offset + length]


def test_parallel_reads_use_one_handle_per_thread(share: SmbShare, disk: tuple[str, bytes]) -> None:
    name, content = disk
    rng = random.Random(3)
    ranges = [(rng.randrange(len(content)), rng.randrange(1, 300_000)) for _ in range(64)]
    threads: set[int] = set()

    def read(r: tuple[int, int]) -> bool:
        threads.add(threading.get_ident())
        return reader.read(*r) == content[r[0] : r[0] + r[1]]

    with VhdxReader(share, name) as reader, ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read, ranges))
        assert len(reader._handles) == len(threads | {threading.get_ident()})


def test_a_lost_connection_is_retried_on_a_new_session(
    share: SmbShare, disk: tuple[str, bytes], samba: SambaServer
) -> None:
    name, content = disk
    with VhdxReader(share, name) as reader:
        assert reader.read(0, 4096) == content[:4096]
        assert samba.drop_connections() >= 1
        assert reader.read(5 * MiB, MiB) == content[5 * MiB : 6 * MiB]
        assert share.generation == 1


def test_wrong_password_is_one_clear_error(smb_settings: Settings, hyperv_account: HypervAccount) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        SmbShare(smb_settings(password="x" + hyperv_account.password)).connect()
    assert str(caught.value) == "127.0.0.1 refused the SMB login of 'vmkeep' (wrong user name or password?)"


def test_missing_share_and_missing_file(smb_settings: Settings, share: SmbShare) -> None:
    with pytest.raises(ShareNotFound, match="has no share 'nosuch'"):
        SmbShare(smb_settings(share="nosuch")).connect()
    with pytest.raises(RemoteFileNotFound, match=r"vmstore: gone\.vhdx does not exist"):
        VhdxReader(share, "gone.vhdx")


def test_a_file_that_is_not_vhdx(share: SmbShare, samba: SambaServer) -> None:
    (samba.directory / "notes.txt").write_bytes(b"not a disk" * 1000)
    with pytest.raises(HypervError, match=r"notes\.txt is not a VHDX file"):
        VhdxReader(share, "notes.txt")


def test_upload_round_trips(share: SmbShare, samba: SambaServer, tmp_path: Path) -> None:
    local = tmp_path / "restored.vhdx"
    local.write_bytes(os.urandom(9 * MiB + 17))
    seen: list[int] = []
    assert upload(share, local, "restore/restored.vhdx", progress=seen.append) == local.stat().st_size
    remote = samba.directory / "restore" / "restored.vhdx"
    assert remote.read_bytes() == local.read_bytes()
    assert seen[-1] == local.stat().st_size and len(seen) == 3
    assert [p.name for p in remote.parent.iterdir()] == ["restored.vhdx"]  # no .partial left
    with pytest.raises(HypervError, match="already exists; not overwriting it"):
        upload(share, local, "restore/restored.vhdx")
    local.write_bytes(b"smaller")
    upload(share, local, "restore/restored.vhdx", overwrite=True)
    assert remote.read_bytes() == b"smaller"


def test_unreachable_server_is_connection_failed(smb_settings: Settings) -> None:
    with pytest.raises(ConnectionFailed, match=r"SMB connection to 127\.0\.0\.1:\d+ failed"):
        SmbShare(smb_settings(port=free_port(), connection_timeout=5)).connect()
