"""A Hyper-V host as a platform: its VMs, backup sessions on them (RCT), restore as a new VM.

Control goes over WinRM (winrm.py: NTLM with message encryption over HTTP, or HTTPS with the
certificate verified), data over SMB (smbstorage.py). The address is a host name (WinRM on
``http://HOST:5985/wsman``, every message sealed with NTLM's session key) or a URL
(``https://HOST:5986/wsman`` for TLS). The same user and password log in to both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

from ..base import DiskImage
from ..exceptions import CleartextRefused, SourceError
from ..platforms import Endpoint, Platform, PlatformKind, RestoredVm, RestoreTarget, SessionOptions, VmDisk, VmSummary
from ..tls import TlsPolicy
from .control import HostControl
from .restore import HypervRestoreSpec, restore_vm
from .session import DEFAULT_FALLBACK_LIMIT, HypervSession
from .shares import ShareMap
from .smbstorage import SmbStorage
from .winrm import WinrmClient, WinrmSettings


@dataclass(frozen=True)
class HypervEndpoint(Endpoint):
    """A Hyper-V host: the shared endpoint plus where its SMB shares are."""

    smb_port: int = 445
    shares: ShareMap = field(default_factory=ShareMap)
    fallback_limit: int = DEFAULT_FALLBACK_LIMIT  # bytes per disk read through WinRM when SMB is unreachable


@dataclass(frozen=True)
class HypervRestoreTarget(RestoreTarget):
    """A new VM on a Hyper-V host; ``spec`` says where its disks go and how switches map."""

    spec: HypervRestoreSpec = field(default_factory=HypervRestoreSpec, kw_only=True)


def winrm_url(address: str) -> tuple[str, str]:
    """(WinRM URL, host name) of an address: HOST means http://HOST:5985/wsman, HOST:PORT that port."""
    problem = f"{address}: not a Hyper-V host name or WinRM URL (HOST, HOST:PORT or http(s)://host[:port]/wsman)"
    url = address if "://" in address else f"http://{address}"
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise SourceError(problem) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise SourceError(problem)
    if "://" not in address:
        if parts.path or parts.query or parts.fragment:
            raise SourceError(problem)
        url = f"http://{parts.netloc}{'' if port else ':5985'}/wsman"
    return url, parts.hostname


class HypervPlatform(Platform):
    kind = PlatformKind.HYPERV

    def __init__(self, control: HostControl, storage: SmbStorage, client: WinrmClient, fallback_limit: int) -> None:
        self.control = control
        self.storage = storage
        self.client = client
        self.fallback_limit = fallback_limit

    @classmethod
    def check_address(cls, address: str, tls: TlsPolicy | None) -> None:
        url, _ = winrm_url(address)
        if url.lower().startswith("http://") and tls is not None and (tls.ca_file or tls.thumbprint or tls.insecure):
            raise CleartextRefused(
                f"{address}: --ca-file, --thumbprint and --insecure are for https:// WinRM URLs; over http:// "
                "NTLM message encryption protects the traffic"
            )

    @classmethod
    def connect(cls, endpoint: Endpoint) -> Self:
        url, host = winrm_url(endpoint.address)
        if isinstance(endpoint, HypervEndpoint):
            smb_port, shares, limit = endpoint.smb_port, endpoint.shares, endpoint.fallback_limit
        else:
            smb_port, shares, limit = 445, ShareMap(), DEFAULT_FALLBACK_LIMIT
        client = WinrmClient(WinrmSettings(url, endpoint.user, endpoint.password, endpoint.tls or TlsPolicy()))
        control = HostControl(client, host)
        user = endpoint.user.split("\\")[-1]
        storage = SmbStorage(host, user, endpoint.password, smb_port, shares)
        try:
            control.inventory("\x00")  # no VM has this name: a cheap call that logs in, so bad credentials fail here
        except BaseException:
            client.close()
            raise
        return cls(control, storage, client, limit)

    def list_vms(self) -> list[VmSummary]:
        inventory = self.control.inventory()
        return sorted(
            (
                VmSummary(
                    name=v.name,
                    power_state=v.state,
                    tracking="on" if v.version and _version(v.version) >= (6, 2) else "unsupported",
                    snapshots=tuple(f"{c['name']} ({c['type']})" for c in v.checkpoints),
                    disks=tuple(VmDisk(d.key, d.label, d.capacity) for d in v.disks),
                    host=inventory.host,
                    details=v.to_json(),
                )
                for v in inventory.vms
            ),
            key=lambda s: s.name,
        )

    def open_session(self, vm: str, options: SessionOptions) -> HypervSession:
        return HypervSession(
            self.control, vm, self.storage, quiesce=options.quiesce, fallback_limit=self.fallback_limit
        )

    def restore_to_host(
        self,
        hardware: dict[str, Any],
        disks: list[DiskImage],
        target: RestoreTarget,
        progress: Callable[[int], None] | None = None,
    ) -> RestoredVm:
        spec = target.spec if isinstance(target, HypervRestoreTarget) else HypervRestoreSpec()
        vm_id, restored = restore_vm(
            self.control,
            self.storage,
            hardware,
            disks,
            name=target.name,
            spec=spec,
            verify=target.verify,
            power_on=target.power_on,
            progress=progress,
        )
        return RestoredVm(target.name, vm_id, [d.to_json() for d in restored], target.power_on)

    def close(self) -> None:
        self.storage.close()
        self.client.close()


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return (0,)
