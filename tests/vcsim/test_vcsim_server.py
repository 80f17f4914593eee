# mypy: disable-error-code="no-untyped-call"
"""The simulator as a server: build, start/stop hygiene, login, TLS, /folder authentication."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from pyVim.connect import Connect, Disconnect, SmartConnect
from pyVmomi import vim

from tests.fixtures.vcsim import (
    TlsMaterial,
    Vcsim,
    backing_url,
    disks,
    find_vm,
    pid_alive,
    session_cookie,
)
from vmkeep.hypervisors.vsphere.simulator import (
    PASSWORD_ENV,
    Simulator,
    SimulatorError,
    SimulatorOptions,
    binary_path,
    build,
    needs_build,
    vcsim_dir,
)

VM = "DC0_H0_VM0"
REPO = Path(__file__).resolve().parents[2]


def test_build_is_incremental(vcsim_binary: Path) -> None:
    assert vcsim_binary == binary_path(vcsim_dir())
    assert not needs_build()
    before = vcsim_binary.stat().st_mtime_ns
    started = time.monotonic()
    out = subprocess.run(
        ["bash", str(vcsim_dir() / "build.sh")], capture_output=True, text=True, check=True, timeout=60
    )
    assert time.monotonic() - started < 5
    assert out.stdout.strip() == str(vcsim_binary)
    assert vcsim_binary.stat().st_mtime_ns == before, "an up-to-date binary was rebuilt"
    assert build() == vcsim_binary


def test_stop_leaves_no_process_or_directory(vcsim_binary: Path) -> None:
    sim = Simulator(SimulatorOptions())
    ep = sim.start()
    assert pid_alive(ep.pid)
    assert ep.datastore_dir.is_dir()
    assert any(ep.datastore_dir.rglob("disk1-flat.vmdk"))
    sim.stop()
    assert not pid_alive(ep.pid)
    assert not ep.datastore_dir.exists()
    sim.stop()  # idempotent


def test_stop_cleans_up_after_a_killed_simulator(vcsim_binary: Path) -> None:
    sim = Simulator(SimulatorOptions())
    ep = sim.start()
    os.kill(ep.pid, signal.SIGKILL)
    for _ in range(100):
        if not sim.running():
            break
        time.sleep(0.02)
    assert ep.datastore_dir.exists(), "SIGKILL gives the Go process no chance to clean up"
    sim.stop()
    assert not ep.datastore_dir.exists()


def test_sigterm_makes_the_simulator_clean_up(vcsim_binary: Path) -> None:
    sim = Simulator(SimulatorOptions())
    ep = sim.start()
    os.kill(ep.pid, signal.SIGTERM)
    for _ in range(250):
        if not sim.running():
            break
        time.sleep(0.02)
    assert not sim.running()
    assert not ep.datastore_dir.exists(), "the Go process removes its directory on SIGTERM"
    sim.stop()


def test_the_caller_picks_the_port(vcsim_binary: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Simulator(SimulatorOptions(port=port)) as sim:
        assert sim.endpoint.port == port
        assert sim.endpoint.url == f"http://127.0.0.1:{port}/sdk"
        with pytest.raises(SimulatorError, match="exited"):
            Simulator(SimulatorOptions(port=port)).start()  # taken now


def test_idle_sessions_expire_when_asked(vcsim_factory: Callable[..., Vcsim]) -> None:
    vc = vcsim_factory(session_idle_timeout=0.5)
    si = vc.connect()
    assert si.CurrentTime() is not None
    time.sleep(1.6)
    with pytest.raises(vim.fault.NotAuthenticated):
        si.CurrentTime()


def test_simulator_exits_when_its_parent_goes_away(vcsim_binary: Path) -> None:
    """With -exit-on-stdin-eof the Go process cleans up by itself once its stdin closes."""
    env = {**os.environ, PASSWORD_ENV: "pw"}
    proc = subprocess.Popen(
        [str(vcsim_binary), "-exit-on-stdin-eof"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert proc.stdout is not None and proc.stdin is not None
    info = json.loads(proc.stdout.readline())
    directory = Path(info["dir"])
    assert directory.is_dir()
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    proc.stdout.close()
    assert not directory.exists()


def test_fixture_teardown_leaves_nothing_behind(tmp_path: Path) -> None:
    """Run the real fixtures in a child pytest; afterwards their pids and directories are gone."""
    record = tmp_path / "record.txt"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            def test_uses_fixtures(vcsim, vcsim_http):
                with open({str(record)!r}, "a") as f:
                    for vc in (vcsim, vcsim_http):
                        assert vc.datastore_dir.is_dir()
                        f.write(f"{{vc.pid}} {{vc.datastore_dir}}\\n")
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.fixtures.vcsim",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(test_file),
        ],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = record.read_text().split("\n")
    entries = [line.split(" ", 1) for line in lines if line]
    assert len(entries) == 2
    for pid, directory in entries:
        assert not pid_alive(int(pid))
        assert not Path(directory).exists()


def test_password_never_on_the_command_line(vcsim: Vcsim) -> None:
    cmdline = Path(f"/proc/{vcsim.pid}/cmdline").read_bytes()
    assert len(vcsim.password) >= 16
    assert vcsim.password.encode() not in cmdline


def test_login_checks_user_and_password(vcsim: Vcsim) -> None:
    si = vcsim.connect()
    assert si.content.sessionManager.currentSession.userName == vcsim.user
    Disconnect(si)
    with pytest.raises(vim.fault.InvalidLogin):
        vcsim.connect(password=vcsim.password + "x")
    with pytest.raises(vim.fault.InvalidLogin):
        vcsim.connect(user="someone-else")


def test_start_fails_cleanly_on_a_bad_option(vcsim_binary: Path) -> None:
    sim = Simulator(SimulatorOptions(extra_args=("-datastore-type=ZFS",)))
    with pytest.raises(SimulatorError, match="datastore-type"):
        sim.start()
    assert not sim.running()


# --------------------------------------------------------------------------- TLS


def test_tls_verified_with_the_ca_file(vcsim: Vcsim, vcsim_tls: TlsMaterial) -> None:
    assert vcsim.url.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(vcsim_tls.ca_pem))
    si = SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.user, pwd=vcsim.password, sslContext=ctx)
    assert si.content.about.apiType == "VirtualCenter"
    Disconnect(si)
    resp = requests.get(f"https://{vcsim.host}:{vcsim.port}/sdk/vimServiceVersions.xml", verify=str(vcsim_tls.ca_pem))
    assert resp.status_code == 200
    der = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((vcsim.host, vcsim.port)))
    from cryptography import x509

    assert x509.load_der_x509_certificate(der).public_key().key_size == 2048  # type: ignore[union-attr]


def test_tls_rejected_without_the_ca(vcsim: Vcsim) -> None:
    ctx = ssl.create_default_context()  # the system trust store does not know our CA
    with pytest.raises(ssl.SSLCertVerificationError):
        SmartConnect(host=vcsim.host, port=vcsim.port, user=vcsim.user, pwd=vcsim.password, sslContext=ctx)
    with pytest.raises(requests.exceptions.SSLError):
        s = requests.Session()
        s.trust_env = False
        s.get(f"https://{vcsim.host}:{vcsim.port}/sdk/vimServiceVersions.xml", timeout=10)


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_tls_thumbprint_pinning(vcsim: Vcsim, algorithm: str) -> None:
    pin = vcsim.thumbprint_sha1 if algorithm == "sha1" else vcsim.thumbprint_sha256
    assert pin is not None
    si = Connect(
        host=vcsim.host,
        port=vcsim.port,
        user=vcsim.user,
        pwd=vcsim.password,
        version="vim.version.version11",
        thumbprint=pin,
        sslContext=ssl.create_default_context(),
    )
    assert si.content.about.apiType == "VirtualCenter"
    Disconnect(si)
    wrong = ("00:" + pin[3:]) if not pin.startswith("00:") else ("11:" + pin[3:])
    with pytest.raises(vim.fault.HostConnectFault, match="thumbprint mismatch"):
        Connect(
            host=vcsim.host,
            port=vcsim.port,
            user=vcsim.user,
            pwd=vcsim.password,
            version="vim.version.version11",
            thumbprint=wrong,
            sslContext=ssl.create_default_context(),
        )


def test_plain_http_variant(vcsim_http: Vcsim) -> None:
    assert vcsim_http.url.startswith("http://127.0.0.1:")
    assert vcsim_http.ca_file is None and vcsim_http.thumbprint_sha1 is None
    si = vcsim_http.connect()
    assert find_vm(si, VM).name == VM


# --------------------------------------------------------------------------- /folder authentication


def test_folder_requires_a_valid_session_cookie(vcsim: Vcsim) -> None:
    si = vcsim.connect()
    vm = find_vm(si, VM)
    url = backing_url(vcsim, disks(vm.config)[0].backing)
    rng = {"Range": "bytes=0-4095"}

    anonymous = vcsim.folder_session()
    assert anonymous.get(url, headers=rng, timeout=10).status_code == 401
    assert anonymous.put(url, data=b"x" * 10, timeout=10).status_code == 401
    anonymous.cookies.set("vmware_soap_session", "52a1b2c3-not-a-session")
    assert anonymous.get(url, headers=rng, timeout=10).status_code == 401

    authed = vcsim.folder_session(si)
    resp = authed.get(url, headers=rng, timeout=10)
    assert resp.status_code == 206
    assert resp.content == b"\0" * 4096
    assert resp.headers["Content-Range"] == f"bytes 0-4095/{disks(vm.config)[0].capacityInBytes}"

    cookie = session_cookie(si)
    si.content.sessionManager.Logout()
    stale = vcsim.folder_session()
    stale.cookies.set("vmware_soap_session", cookie)
    assert stale.get(url, headers=rng, timeout=10).status_code == 401


def test_folder_accepts_basic_auth(vcsim: Vcsim) -> None:
    si = vcsim.connect()
    url = backing_url(vcsim, disks(find_vm(si, VM).config)[0].backing)
    s = vcsim.folder_session()
    assert s.head(url, auth=(vcsim.user, vcsim.password), timeout=10).status_code == 200
    assert s.head(url, auth=(vcsim.user, "wrong"), timeout=10).status_code == 401


def test_folder_needs_datacenter_and_datastore(vcsim: Vcsim) -> None:
    si = vcsim.connect()
    s = vcsim.folder_session(si)
    base = f"https://{vcsim.host}:{vcsim.port}/folder/{VM}/disk1-flat.vmdk"
    assert s.head(f"{base}?dcPath=DC0&dsName=LocalDS_0", timeout=10).status_code == 200
    assert s.head(f"{base}?dsName=LocalDS_0", timeout=10).status_code == 404
    assert s.head(f"{base}?dcPath=DC0", timeout=10).status_code == 404
    assert s.head(f"{base}?dcPath=DC9&dsName=LocalDS_0", timeout=10).status_code == 404
    assert s.head(f"{base}?dcPath=DC0&dsName=NoSuchDS", timeout=10).status_code == 404


def test_query_changed_disk_areas_needs_a_session(vcsim: Vcsim) -> None:
    si = vcsim.connect()
    vm = find_vm(si, VM)
    key = disks(vm.config)[0].key
    si.content.sessionManager.Logout()
    with pytest.raises(vim.fault.NotAuthenticated):
        vm.QueryChangedDiskAreas(deviceKey=key, startOffset=0, changeId="*")


def test_test_api_describes_the_inventory(vcsim: Vcsim) -> None:
    assert vcsim.api.block_size() == vcsim.endpoint.block_size == 65536
    states = vcsim.api.states()
    assert [s.name for s in states] == sorted(["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1"])
    si = vcsim.connect()
    vm = find_vm(si, VM)
    st = vcsim.api.state(vm._moId)
    assert st == vcsim.api.state(VM)
    disk = st.disk()
    assert disk.key == disks(vm.config)[0].key
    assert disk.file == disks(vm.config)[0].backing.fileName
    assert (disk.datastore, disk.flat_path) == ("LocalDS_0", f"{VM}/disk1-flat.vmdk")
    assert disk.allocated_extents == () and disk.change_id is None
    assert st.power_state == "poweredOn" and not st.cbt_enabled
