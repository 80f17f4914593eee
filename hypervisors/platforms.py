"""Platforms (vSphere, Hyper-V, a disk image) and the one registry that chooses among them.

A :class:`Platform` is a connection to where VMs live: it lists them, opens a backup session
on one (hypervisors/base.py has the session's contract), and restores a disk set as a new VM.
Callers choose a platform by its :class:`PlatformKind` (a point records it as
``source["type"]``) through :func:`platform_class` / :func:`open_platform`, never by comparing
strings. A platform's module is imported only when that platform is used: an image backup
never imports pyVmomi, and a machine without the Hyper-V extra can still back up vSphere.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

from .base import BackupSession, DiskImage
from .exceptions import PlatformNotInstalled, SourceError

if TYPE_CHECKING:
    from .tls import TlsPolicy  # ssl costs start-up time an image backup does not need


class PlatformKind(StrEnum):
    """The kind of a source: a point's ``source["type"]`` and a job file source's ``type``."""

    IMAGE = "image"
    VSPHERE = "vsphere"
    HYPERV = "hyperv"


@dataclass(frozen=True)
class Endpoint:
    """Where a platform is and how to log in: a host (and user) or, for an image, its path."""

    address: str  # vCenter/ESXi URL, Hyper-V host, or an image's path
    user: str = ""
    password: str = field(default="", repr=False)
    tls: TlsPolicy | None = None  # None: verify against the system's CAs


@dataclass(frozen=True)
class SessionOptions:
    """How a session is opened (plain values, as in a task description)."""

    quiesce: bool = True  # an application-consistent snapshot/checkpoint if the guest allows
    change_hints: Path | None = None  # changed extents given by the caller (image sources)


@dataclass(frozen=True)
class VmDisk:
    key: str  # as the key of a point's disk record
    label: str
    capacity: int


@dataclass(frozen=True)
class VmSummary:
    """One VM of a platform's inventory, in the terms every platform shares.

    ``details`` holds the platform's own fields; ``to_json`` prints them over the shared ones.
    """

    name: str
    power_state: str = ""
    tracking: str = ""  # change tracking: "on", "off" or "unsupported"
    snapshots: tuple[str, ...] = ()  # snapshots or checkpoints it has now
    disks: tuple[VmDisk, ...] = ()
    template: bool = False
    host: str = ""  # where it runs (for per-host snapshot limits)
    datastores: tuple[str, ...] = ()  # where its disks are (for per-datastore limits)
    folder: str = ""  # its inventory folder ("/DC0/vm/prod"), "" where the platform has none
    details: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> dict[str, Any]:
        shared = {
            "name": self.name,
            "power_state": self.power_state,
            "template": self.template,
            "tracking": self.tracking,
            "snapshots": list(self.snapshots),
            "disks": [vars(d) for d in self.disks],
            "host": self.host,
            "datastores": list(self.datastores),
            "folder": self.folder,
        }
        return {**shared, **self.details}


@dataclass(frozen=True)
class RestoreTarget:
    """Where and how to restore a point as a new VM; each platform adds its own fields."""

    name: str  # the new VM's name; an existing VM of that name is never overwritten
    power_on: bool = field(default=False, kw_only=True)
    verify: bool = field(default=True, kw_only=True)  # read the uploaded disks back and compare


@dataclass(frozen=True)
class RestoredVm:
    """The VM a restore created."""

    name: str
    id: str  # the platform's id of the new VM (vSphere moref, Hyper-V VM id)
    disks: list[dict[str, Any]]  # key (recorded), file, size, sha256
    powered_on: bool
    id_name: str = "id"  # what the platform calls that id, the key in --json output ("moref")

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.name, self.id_name: self.id, "disks": self.disks, "powered_on": self.powered_on}


class Platform(ABC):
    """A connection to where VMs live. Use as a context manager: ``close`` always runs."""

    kind: ClassVar[PlatformKind]

    @classmethod  # noqa: B027 (nothing to check by default)
    def check_address(cls, address: str, tls: TlsPolicy | None) -> None:
        """Refuse a bad address or a TLS choice that does not fit it (SourceError), before a password is asked."""

    @classmethod
    @abstractmethod
    def connect(cls, endpoint: Endpoint) -> Self:
        """Log in (or open the image); SourceError with a one-line message if it cannot."""

    @abstractmethod
    def list_vms(self) -> list[VmSummary]:
        """Every VM the user can see, sorted by name."""

    @abstractmethod
    def open_session(self, vm: str, options: SessionOptions) -> BackupSession:
        """Freeze ``vm`` for a backup (its snapshot or checkpoint is removed by the session's ``close``)."""

    @abstractmethod
    def restore_to_host(
        self,
        hardware: dict[str, Any],
        disks: list[DiskImage],
        target: RestoreTarget,
        progress: Callable[[int], None] | None = None,
    ) -> RestoredVm:
        """Create a new VM with the recorded ``hardware`` and these disks; ``progress`` gets byte counts."""

    def close(self) -> None:  # noqa: B027 (nothing to release by default)
        """Log out. Safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class _Entry:
    target: str  # "module:Class"
    label: str  # for people: "Hyper-V"
    vm: str  # what a point of it was made from, for people: "a Hyper-V VM"
    extra: str | None = None  # the pip extra that installs its dependencies


# The one place that knows where each platform lives. Modules are imported on first use.
REGISTRY: dict[PlatformKind, _Entry] = {
    PlatformKind.IMAGE: _Entry("vmkeep.hypervisors.image.platform:ImagePlatform", "disk image", "a disk image"),
    PlatformKind.VSPHERE: _Entry("vmkeep.hypervisors.vsphere.platform:VspherePlatform", "vSphere", "a vSphere VM"),
    PlatformKind.HYPERV: _Entry(
        "vmkeep.hypervisors.hyperv.platform:HypervPlatform", "Hyper-V", "a Hyper-V VM", extra="hyperv"
    ),
}


def platform_kind(value: object) -> PlatformKind:
    """The kind a point's ``source["type"]`` (or a config value) names; SourceError if none."""
    try:
        return PlatformKind(str(value))
    except ValueError:
        known = ", ".join(k.value for k in PlatformKind)
        raise SourceError(f"unknown kind of source {value!r} (known: {known})") from None


def platform_label(kind: PlatformKind) -> str:
    """The platform's name for people: "vSphere"."""
    return REGISTRY[kind].label


def platform_vm(kind: PlatformKind) -> str:
    """What a point of the platform was made from, for people: "a vSphere VM"."""
    return REGISTRY[kind].vm


def platform_class(kind: PlatformKind) -> type[Platform]:
    """The platform of ``kind``, its module imported now; PlatformNotInstalled if it cannot be."""
    entry = REGISTRY[kind]
    module_name, _, class_name = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        how = f": pip install 'vmkeep[{entry.extra}]'" if entry.extra else ""
        raise PlatformNotInstalled(
            f"{entry.label} support is not installed{how} (no module named {exc.name!r})"
        ) from None
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, Platform)):
        raise TypeError(f"{entry.target} is not a Platform")
    return cls


def open_platform(kind: PlatformKind, endpoint: Endpoint) -> Platform:
    """Connect to the platform of ``kind`` at ``endpoint``."""
    return platform_class(kind).connect(endpoint)


@contextmanager
def login_and_open(kind: PlatformKind, endpoint: Endpoint, vm: str, options: SessionOptions) -> Iterator[BackupSession]:
    """A login of its own and a backup session on ``vm``: what one of several concurrent tasks runs
    with (a login is not shared between threads). The session ends, then the login, also on failure."""
    with open_platform(kind, endpoint) as platform, platform.open_session(vm, options) as session:
        yield session
