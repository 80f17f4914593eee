"""Controller for ``vcsim/``: govmomi's vCenter simulator with changed block tracking.

This module builds the Go program (through ``vcsim/build.sh``) when its binary is
missing or older than its sources, starts it on 127.0.0.1, stops it, and talks to
its test-only API (guest writes, CBT resets, fault injection, paging limits).
Product code (a ``vmkeep demo`` command) and the tests both use it; the vSphere
API itself is spoken with pyVmomi and ``requests`` as against a real vCenter.

The password reaches the Go process through an environment variable, never its
command line. The simulator keeps its datastores in a temporary directory that it
removes on exit; :meth:`Simulator.stop` removes it too if the process had to be
killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import selectors
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote, urlencode

import requests

ENV_VCSIM_DIR = "VMKEEP_VCSIM_DIR"
"""Overrides where the ``vcsim/`` sources are (default: next to this package)."""

PASSWORD_ENV = "VMKEEP_VCSIM_PASSWORD"
"""Environment variable through which the Go process receives the password."""

BINARY_NAME = "vmkeep-vcsim"
DEFAULT_DATACENTER = "DC0"
DEFAULT_DATASTORE = "LocalDS_0"


class SimulatorError(RuntimeError):
    """The simulator could not be built, started or asked something."""


# --------------------------------------------------------------------------- build


def vcsim_dir() -> Path:
    """The ``vcsim/`` source directory: ``$VMKEEP_VCSIM_DIR``, else next to the package."""
    override = os.environ.get(ENV_VCSIM_DIR)
    if override:
        return Path(override).resolve()
    return Path(__file__).resolve().parents[2] / "vcsim"


def binary_path(source_dir: Path | None = None) -> Path:
    """Where ``build.sh`` puts the binary."""
    return (source_dir or vcsim_dir()) / "bin" / BINARY_NAME


def _sources(source_dir: Path) -> list[Path]:
    return [*sorted(source_dir.glob("*.go")), source_dir / "build.sh"]


def needs_build(source_dir: Path | None = None) -> bool:
    """True if the binary is missing or older than any of its sources."""
    src = source_dir or vcsim_dir()
    binary = binary_path(src)
    try:
        built = binary.stat().st_mtime
    except FileNotFoundError:
        return True
    return any(p.stat().st_mtime > built for p in _sources(src) if p.exists())


def build(*, force: bool = False, source_dir: Path | None = None, timeout: float = 900.0) -> Path:
    """Build the simulator if needed (or always, with ``force``) and return the binary's path."""
    src = source_dir or vcsim_dir()
    script = src / "build.sh"
    if not script.is_file():
        raise SimulatorError(f"{script} not found (set ${ENV_VCSIM_DIR} to the vcsim/ directory)")
    if not force and not needs_build(src):
        return binary_path(src)
    args = ["bash", str(script), *(["--force"] if force else [])]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SimulatorError(f"building the simulator took more than {timeout:.0f} s") from exc
    if done.returncode != 0:
        raise SimulatorError(f"{script} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    lines = done.stdout.strip().splitlines()
    binary = Path(lines[-1]) if lines else binary_path(src)
    if not binary.is_file():
        raise SimulatorError(f"{script} did not produce {binary}")
    return binary


# --------------------------------------------------------------------------- options


def thumbprint(pem_file: Path, algorithm: str = "sha1") -> str:
    """A certificate's thumbprint as vSphere shows it: upper-case hex pairs joined by colons."""
    der = ssl.PEM_cert_to_DER_cert(pem_file.read_text())
    digest = hashlib.new(algorithm, der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@dataclass(frozen=True)
class SimulatorOptions:
    """How to start the simulator. Every field maps to one flag of the Go program."""

    user: str = "user"
    password: str | None = None
    """The login password; ``None`` picks a random one (see :attr:`Endpoint.password`)."""
    port: int = 0
    """0: an ephemeral port, reported back."""
    tls_cert: Path | None = None
    """PEM certificate (chain) to serve HTTPS with; needs ``tls_key``. ``None``: plain HTTP."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """PEM CA that signed ``tls_cert``, used to verify the test API (default: the cert itself)."""
    vms: int = 2
    """VMs per host and per cluster resource pool (the default inventory has two of each)."""
    disk_mb: int = 16
    """Capacity of each inventory VM's disk."""
    block_kb: int = 64
    """Change tracking granularity."""
    max_extents: int = 2000
    """At most this many extents per QueryChangedDiskAreas answer (0: no limit)."""
    max_bytes: int = 0
    """At most this many bytes of the disk covered per answer (0: no limit)."""
    datastore_type: str = "VMFS"
    """``VMFS`` or ``NFS`` (``summary.type``; on NFS changeId ``*`` answers the whole disk)."""
    star_whole_disk: bool | None = None
    """Force ``*`` to answer the whole disk (True) or the allocated areas (False); None: by datastore type."""
    session_idle_timeout: float | None = None
    """Seconds after which idle sessions expire (None: never)."""
    parent_dir: Path | None = None
    """Where the temporary datastore directory is made (default: the system temp dir)."""
    startup_timeout: float = 30.0
    extra_args: tuple[str, ...] = ()

    def args(self) -> list[str]:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        out = [
            f"-port={self.port}",
            f"-user={self.user}",
            f"-vm={self.vms}",
            f"-disk-mb={self.disk_mb}",
            f"-cbt-block-kb={self.block_kb}",
            f"-cbt-max-extents={self.max_extents}",
            f"-cbt-max-bytes={self.max_bytes}",
            f"-datastore-type={self.datastore_type}",
            "-exit-on-stdin-eof",
        ]
        if self.star_whole_disk is not None:
            out.append(f"-star-whole-disk={'true' if self.star_whole_disk else 'false'}")
        if self.tls_cert is not None and self.tls_key is not None:
            out += [f"-tls-cert={self.tls_cert}", f"-tls-key={self.tls_key}"]
        if self.session_idle_timeout is not None:
            out.append(f"-session-idle-timeout={self.session_idle_timeout}s")
        if self.parent_dir is not None:
            out.append(f"-dir={self.parent_dir}")
        return out + list(self.extra_args)


@dataclass(frozen=True)
class Endpoint:
    """Where a running simulator listens and how to log in."""

    url: str
    """The SOAP endpoint, e.g. ``https://127.0.0.1:40123/sdk``."""
    scheme: str
    host: str
    port: int
    user: str
    password: str
    pid: int
    datastore_dir: Path
    """The temporary directory holding every datastore; gone once the simulator stops."""
    test_api_url: str
    block_size: int
    """Change tracking granularity in bytes."""
    ca_file: Path | None = None
    """PEM file to verify the server certificate with (None for plain HTTP)."""
    thumbprint_sha1: str | None = None
    thumbprint_sha256: str | None = None

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def folder_url(self, path: str, *, datastore: str = DEFAULT_DATASTORE, datacenter: str = DEFAULT_DATACENTER) -> str:
        """The ``/folder`` URL of a datastore file, e.g. ``folder_url("vm1/disk1-flat.vmdk")``."""
        query = urlencode({"dcPath": datacenter, "dsName": datastore})
        return f"{self.base_url}/folder/{quote(path.lstrip('/'))}?{query}"


# --------------------------------------------------------------------------- test API


@dataclass(frozen=True)
class LayerState:
    file: str
    """Descriptor datastore path, e.g. ``[LocalDS_0] vm/disk1.vmdk``."""
    flat_path: str
    """Datastore-relative path of the content, e.g. ``vm/disk1-flat.vmdk``."""
    snapshot: str | None
    """Moref value of the snapshot that froze this layer; None for the running layer."""
    change_id: str | None
    capacity: int


@dataclass(frozen=True)
class DiskState:
    key: int
    uuid: str
    capacity: int
    file: str
    """The running layer's descriptor path (the VM's current backing)."""
    datastore: str
    flat_path: str
    change_id: str | None
    """The running layer's changeId; None while CBT is not in effect."""
    allocated_extents: tuple[tuple[int, int], ...]
    """(offset, length) runs of blocks that hold data, at the tracking granularity."""
    layers: tuple[LayerState, ...]
    """Oldest first; the last one is the running layer."""


@dataclass(frozen=True)
class VmState:
    vm: str
    name: str
    power_state: str
    cbt_enabled: bool
    """``config.changeTrackingEnabled``."""
    cbt_active: bool
    """Change tracking is in effect (it was enabled and the VM has been stunned since)."""
    cbt_pending: bool
    snapshots: tuple[str, ...]
    disks: tuple[DiskState, ...]

    def disk(self, key: int | None = None) -> DiskState:
        """The disk with this key, or the only disk."""
        if key is None:
            if len(self.disks) != 1:
                raise SimulatorError(f"{self.name} has {len(self.disks)} disks: give a key")
            return self.disks[0]
        for d in self.disks:
            if d.key == key:
                return d
        raise SimulatorError(f"{self.name} has no disk {key}")


@dataclass(frozen=True)
class CbtConfig:
    max_extents: int
    max_bytes: int
    star_whole_disk: bool


@dataclass(frozen=True)
class Fault:
    id: int
    kind: str
    remaining: int
    """Firings left; -1: until cleared."""
    hits: int
    method: str | None = None
    path_contains: str | None = None
    http_method: str | None = None
    after_bytes: int | None = None
    seconds: float | None = None
    status: int | None = None
    fault: str | None = None
    message: str | None = None


def _str(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


def _fault(d: Mapping[str, Any]) -> Fault:
    return Fault(
        id=int(d["id"]),
        kind=str(d["kind"]),
        remaining=int(d["remaining"]),
        hits=int(d["hits"]),
        method=_str(d.get("method")),
        path_contains=_str(d.get("path_contains")),
        http_method=_str(d.get("http_method")),
        after_bytes=int(d["after_bytes"]) if "after_bytes" in d else None,
        seconds=float(d["seconds"]) if "seconds" in d else None,
        status=int(d["status"]) if "status" in d else None,
        fault=_str(d.get("fault")),
        message=_str(d.get("message")),
    )


def _vm_state(d: Mapping[str, Any]) -> VmState:
    disks = tuple(
        DiskState(
            key=int(k["key"]),
            uuid=str(k["uuid"]),
            capacity=int(k["capacity"]),
            file=str(k["file"]),
            datastore=str(k["datastore"]),
            flat_path=str(k["flat_path"]),
            change_id=_str(k.get("change_id")),
            allocated_extents=tuple((int(a), int(b)) for a, b in k["allocated_extents"]),
            layers=tuple(
                LayerState(
                    file=str(layer["file"]),
                    flat_path=str(layer["flat_path"]),
                    snapshot=_str(layer.get("snapshot")),
                    change_id=_str(layer.get("change_id")),
                    capacity=int(layer["capacity"]),
                )
                for layer in k["layers"]
            ),
        )
        for k in d["disks"]
    )
    return VmState(
        vm=str(d["vm"]),
        name=str(d["name"]),
        power_state=str(d["power_state"]),
        cbt_enabled=bool(d["cbt_enabled"]),
        cbt_active=bool(d["cbt_active"]),
        cbt_pending=bool(d["cbt_pending"]),
        snapshots=tuple(str(s) for s in d["snapshots"]),
        disks=disks,
    )


class SimulatorTestApi:
    """Client for the simulator's test-only endpoints under ``/vmkeep-test/``.

    ``vm`` arguments take a moref value (``"vm-42"``) or a VM name; ``key`` may be
    left out for a VM with a single disk.
    """

    def __init__(self, base_url: str, *, verify: bool | str = True, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/") + "/vmkeep-test"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        self.session.verify = verify

    def close(self) -> None:
        self.session.close()

    def _call(
        self,
        method: str,
        endpoint: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Mapping[str, Any] | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        resp = self.session.request(
            method,
            f"{self.base_url}/{endpoint}",
            params=params,
            json=json_body,
            data=data,
            timeout=self.timeout,
        )
        if resp.status_code >= 400:
            try:
                msg = str(resp.json()["error"])
            except (ValueError, KeyError, TypeError):
                msg = resp.text
            raise SimulatorError(f"{method} /vmkeep-test/{endpoint}: {resp.status_code} {msg}")
        return resp

    @staticmethod
    def _disk_params(vm: str, key: int | None, **more: int) -> dict[str, str | int]:
        params: dict[str, str | int] = {"vm": vm, **more}
        if key is not None:
            params["key"] = key
        return params

    # guest I/O
    def write(self, vm: str, offset: int, data: bytes, *, key: int | None = None) -> None:
        """Write bytes into the VM's running disk layer, as its guest would; marks the blocks changed."""
        self._call("POST", "write", params=self._disk_params(vm, key, offset=offset), data=data)

    def read(self, vm: str, offset: int, length: int, *, key: int | None = None) -> bytes:
        """Read the VM's running disk layer (what the guest sees now)."""
        resp = self._call("GET", "read", params=self._disk_params(vm, key, offset=offset, length=length))
        return resp.content

    # state
    def state(self, vm: str) -> VmState:
        return _vm_state(self._call("GET", "state", params={"vm": vm}).json()["vms"][0])

    def states(self) -> list[VmState]:
        return [_vm_state(v) for v in self._call("GET", "state").json()["vms"]]

    def block_size(self) -> int:
        """The change tracking granularity in bytes."""
        return int(self._call("GET", "state").json()["block_size"])

    def folder_bytes_served(self) -> int:
        """Body bytes that GET requests on ``/folder`` have sent since the simulator started."""
        return int(self._call("GET", "traffic").json()["folder_get_bytes"])

    # change tracking
    def cbt_reset(self, vm: str, *, key: int | None = None) -> dict[int, str]:
        """Start a new CBT epoch (as after a crash): every older changeId then gives FileFault."""
        params: dict[str, str | int] = {"vm": vm}
        if key is not None:
            params["key"] = key
        got = self._call("POST", "cbt-reset", params=params).json()["change_ids"]
        return {int(k): str(v) for k, v in got.items()}

    def config(self) -> CbtConfig:
        return CbtConfig(**self._call("GET", "config").json())

    def set_config(
        self,
        *,
        max_extents: int | None = None,
        max_bytes: int | None = None,
        star_whole_disk: bool | None = None,
    ) -> CbtConfig:
        """Change QueryChangedDiskAreas paging limits (0: none) or what ``*`` answers."""
        body: dict[str, Any] = {}
        if max_extents is not None:
            body["max_extents"] = max_extents
        if max_bytes is not None:
            body["max_bytes"] = max_bytes
        if star_whole_disk is not None:
            body["star_whole_disk"] = star_whole_disk
        return CbtConfig(**self._call("POST", "config", json_body=body).json())

    # faults
    def add_fault(self, spec: Mapping[str, Any]) -> Fault:
        """Arm a fault given as the JSON the endpoint takes (see vcsim/README.md)."""
        return _fault(self._call("POST", "fault", json_body=spec).json())

    def fail_task(
        self, method: str, *, fault: str = "SystemError", message: str | None = None, count: int = 1
    ) -> Fault:
        """The next ``count`` calls of a ``*_Task`` method return an already failed task."""
        spec: dict[str, Any] = {"kind": "task", "method": method, "fault": fault, "count": count}
        if message:
            spec["message"] = message
        return self.add_fault(spec)

    def soap_fault(
        self, method: str, *, fault: str = "SystemError", message: str | None = None, count: int = 1
    ) -> Fault:
        """The next ``count`` calls of a SOAP method answer a SOAP fault."""
        spec: dict[str, Any] = {"kind": "soap", "method": method, "fault": fault, "count": count}
        if message:
            spec["message"] = message
        return self.add_fault(spec)

    def delay(
        self, seconds: float, *, method: str | None = None, path_contains: str | None = None, count: int = 1
    ) -> Fault:
        """Slow down a SOAP method or HTTP path."""
        spec: dict[str, Any] = {"kind": "delay", "seconds": seconds, "count": count}
        if method:
            spec["method"] = method
        if path_contains:
            spec["path_contains"] = path_contains
        return self.add_fault(spec)

    def drop_connection(
        self, path_contains: str, after_bytes: int, *, http_method: str | None = None, count: int = 1
    ) -> Fault:
        """Cut the connection after ``after_bytes`` bytes of a matching /folder answer or upload."""
        spec: dict[str, Any] = {
            "kind": "drop",
            "path_contains": path_contains,
            "after_bytes": after_bytes,
            "count": count,
        }
        if http_method:
            spec["http_method"] = http_method
        return self.add_fault(spec)

    def http_status(
        self, status: int, *, method: str | None = None, path_contains: str | None = None, count: int = 1
    ) -> Fault:
        """Answer a bare HTTP status (e.g. 503) to a SOAP method or HTTP path."""
        spec: dict[str, Any] = {"kind": "status", "status": status, "count": count}
        if method:
            spec["method"] = method
        if path_contains:
            spec["path_contains"] = path_contains
        return self.add_fault(spec)

    def snapshots(self) -> dict[str, tuple[int, int]]:
        """Snapshots per host (moref): (existing now, most at once since start or the last reset)."""
        hosts = self._call("GET", "snapshots").json()["hosts"]
        return {h: (int(v["current"]), int(v["max"])) for h, v in hosts.items()}

    def reset_snapshot_record(self) -> None:
        """Each host's maximum becomes its current count."""
        self._call("DELETE", "snapshots")

    def faults(self) -> list[Fault]:
        return [_fault(f) for f in self._call("GET", "fault").json()["faults"]]

    def clear_faults(self) -> None:
        self._call("DELETE", "fault")


# --------------------------------------------------------------------------- process


@dataclass
class Simulator:
    """One simulator process. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    options: SimulatorOptions = field(default_factory=SimulatorOptions)
    source_dir: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _stderr: IO[bytes] | None = field(default=None, init=False, repr=False)
    _endpoint: Endpoint | None = field(default=None, init=False, repr=False)
    _api: SimulatorTestApi | None = field(default=None, init=False, repr=False)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            raise SimulatorError("the simulator is not running")
        return self._endpoint

    @property
    def api(self) -> SimulatorTestApi:
        if self._api is None:
            raise SimulatorError("the simulator is not running")
        return self._api

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log(self) -> str:
        """What the simulator wrote on stderr so far."""
        if self._stderr is None:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace")
        self._stderr.seek(0, os.SEEK_END)
        return text

    def start(self) -> Endpoint:
        if self._proc is not None:
            raise SimulatorError("already started")
        opts = self.options
        binary = build(source_dir=self.source_dir)
        password = opts.password if opts.password is not None else secrets.token_urlsafe(18)
        env = {k: v for k, v in os.environ.items() if k != PASSWORD_ENV}
        env[PASSWORD_ENV] = password
        # Lives as long as the process, closed in stop().
        self._stderr = tempfile.TemporaryFile(prefix="vmkeep-vcsim-log-")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                [str(binary), *opts.args()],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                env=env,
                close_fds=True,
            )
            info = self._read_ready(opts.startup_timeout)
        except BaseException:
            self.stop()
            raise

        ca: Path | None = None
        sha1 = sha256 = None
        if opts.tls_cert is not None:
            ca = opts.tls_ca or opts.tls_cert
            sha1 = thumbprint(opts.tls_cert, "sha1")
            sha256 = thumbprint(opts.tls_cert, "sha256")
        self._endpoint = Endpoint(
            url=str(info["url"]),
            scheme=str(info["scheme"]),
            host=str(info["host"]),
            port=int(info["port"]),
            user=opts.user,
            password=password,
            pid=int(info["pid"]),
            datastore_dir=Path(str(info["dir"])),
            test_api_url=str(info.get("test_api", "")),
            block_size=int(info["block_size"]),
            ca_file=ca,
            thumbprint_sha1=sha1,
            thumbprint_sha256=sha256,
        )
        verify: bool | str = str(ca) if ca is not None else self._endpoint.scheme == "http"
        self._api = SimulatorTestApi(self._endpoint.base_url, verify=verify)
        return self._endpoint

    def _read_ready(self, timeout: float) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SimulatorError(f"the simulator did not start within {timeout:.0f} s:\n{self.log()}")
                if not sel.select(left):
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    proc.wait(timeout=5)
                    raise SimulatorError(f"the simulator exited ({proc.returncode}) while starting:\n{self.log()}")
                buf += chunk
        line = buf.split(b"\n", 1)[0]
        try:
            info = json.loads(line)
        except ValueError as exc:
            raise SimulatorError(f"unexpected first line from the simulator: {line!r}") from exc
        if not isinstance(info, dict):
            raise SimulatorError(f"unexpected first line from the simulator: {line!r}")
        return info

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (EOF on stdin, then SIGTERM, then SIGKILL) and remove its directory."""
        proc, self._proc = self._proc, None
        endpoint = self._endpoint
        if self._api is not None:
            self._api.close()
            self._api = None
        if proc is not None:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if endpoint is not None and endpoint.datastore_dir.exists():
            shutil.rmtree(endpoint.datastore_dir, ignore_errors=True)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


@contextlib.contextmanager
def running(options: SimulatorOptions | None = None) -> Iterator[Simulator]:
    """``with running(SimulatorOptions(...)) as sim:`` starts a simulator and always stops it."""
    sim = Simulator(options or SimulatorOptions())
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
