"""The job file's schema (pydantic v2, strict: a string is never taken for a number).

Every model forbids unknown keys, so a misspelt key is an error rather than a default quietly
used. Checks that span sections (a job's source and repository exist, an exact VM name is in
one job only) run on the whole file, and every problem is reported with its key path.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vmkeep.repository.retention import RetentionPolicy

from ..engine.limits import CONCURRENCY, SNAPSHOTS_PER_DATASTORE, SNAPSHOTS_PER_HOST
from .kinds import ExecutorType, LogFormat, Routing, SourceType
from .schedule import Schedule

Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _expand(path: str) -> Path:
    """``~`` and ``$VARS`` expanded: ``${CREDENTIALS_DIRECTORY}/vc1`` works under systemd."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


class SourceConfig(_Strict):
    """A vCenter or ESXi host. The password comes from a file, the environment or the keyring."""

    type: Annotated[SourceType, Field(strict=False)] = SourceType.VSPHERE  # a TOML string names the enum
    url: str = Field(min_length=1)
    user: str = Field(min_length=1)
    password_file: str | None = None
    password_env: str | None = None
    keyring: bool = False
    ca_file: str | None = None
    thumbprint: str | None = None
    allow_cleartext: bool = False  # accept an http:// url (simulators on loopback), loudly
    # Hyper-V only: where the host's files are on SMB ("C:\\VMs=vms"; default: drive X: on share X$), its port
    smb_shares: list[str] = Field(default_factory=list)
    smb_port: Annotated[int, Field(ge=1, le=65535)] = 445

    @model_validator(mode="after")
    def _no_accidental_cleartext(self) -> Self:
        """The rule of the command line's --allow-cleartext, checked when the file is loaded."""
        from vmkeep.hypervisors.tls import TlsPolicy, cleartext_problem

        if self.type is SourceType.HYPERV:
            return self._hyperv_address()
        scheme = self.url.split("://", 1)[0].lower() if "://" in self.url else "https"
        policy = TlsPolicy(ca_file=self.ca_path, thumbprint=self.thumbprint, allow_cleartext=self.allow_cleartext)
        problem = cleartext_problem(policy, scheme, self.url, "vCenter")
        if problem:
            raise ValueError(problem.replace("--allow-cleartext", "allow_cleartext = true").replace("--", ""))
        return self

    def _hyperv_address(self) -> Self:
        """Over http:// NTLM seals every WinRM message; TLS options are for https:// only (as --hyperv)."""
        from vmkeep.hypervisors.hyperv.shares import ShareMap

        https = self.url.lower().startswith("https://")
        if not https and (self.ca_file or self.thumbprint):
            raise ValueError("ca_file and thumbprint are for an https:// url; over http NTLM seals the traffic")
        ShareMap.parse(self.smb_shares)  # ValueError names a malformed entry
        return self

    @model_validator(mode="after")
    def _one_password_source(self) -> Self:
        given = [k for k in ("password_file", "password_env") if getattr(self, k)] + (
            ["keyring"] if self.keyring else []
        )
        if not given:
            raise ValueError("no password source: give password_file, password_env or keyring = true")
        if len(given) > 1:
            raise ValueError(f"give one password source, not {' and '.join(given)}")
        if self.ca_file and self.thumbprint:
            raise ValueError("give ca_file or thumbprint, not both")
        return self

    @field_validator("thumbprint")
    @classmethod
    def _thumbprint(cls, value: str | None) -> str | None:
        if value is not None:
            from vmkeep.hypervisors.tls import normalise_thumbprint

            normalise_thumbprint(value)  # ValueError names the problem
        return value

    @property
    def password_path(self) -> Path | None:
        return _expand(self.password_file) if self.password_file else None

    @property
    def ca_path(self) -> Path | None:
        return _expand(self.ca_file) if self.ca_file else None


class RepositoryConfig(_Strict):
    path: str = Field(min_length=1)
    passphrase_file: str | None = None
    passphrase_env: str | None = None

    @model_validator(mode="after")
    def _one_passphrase_source(self) -> Self:
        if self.passphrase_file and self.passphrase_env:
            raise ValueError("give passphrase_file or passphrase_env, not both")
        return self

    @property
    def location(self) -> Path:
        return _expand(self.path)

    @property
    def passphrase_path(self) -> Path | None:
        return _expand(self.passphrase_file) if self.passphrase_file else None


class RetentionConfig(_Strict):
    """How many points to keep per VM (``vmkeep forget --keep-*``)."""

    last: Count = 0
    hourly: Count = 0
    daily: Count = 0
    weekly: Count = 0
    monthly: Count = 0
    yearly: Count = 0

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.policy().empty():
            raise ValueError("keeps nothing: set at least one of last, hourly, daily, weekly, monthly, yearly")
        return self

    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)


class RetryConfig(_Strict):
    count: Count = 0
    delay: Annotated[float, Field(ge=0)] = 60.0


class JobConfig(_Strict):
    source: str
    repository: str
    schedule: str
    vms: list[str] = Field(default_factory=list)  # exact names or glob patterns
    folders: list[str] = Field(default_factory=list)  # inventory folders, e.g. "/DC0/vm/prod" (and below)
    retention: RetentionConfig | None = None
    full_every: Positive | None = None
    sanity_sample: Count | None = None  # windows per disk the sanity checks compare (0: off)
    concurrency: Positive = CONCURRENCY
    retries: RetryConfig = Field(default_factory=RetryConfig)
    webhook: str | None = None
    quiesce: bool = True
    workers: Positive = 4

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        problem = Schedule.problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("a webhook is an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _some_vm(self) -> Self:
        if not self.vms and not self.folders:
            raise ValueError("selects no VM: give vms (names or patterns) or folders")
        return self

    @property
    def exact_names(self) -> set[str]:
        return {v for v in self.vms if not is_pattern(v)}

    def matches(self, vm: str, folder: str) -> bool:
        """Whether this job backs up the VM ``vm`` found in inventory folder ``folder``."""
        if any(fnmatch.fnmatchcase(vm, p) for p in self.vms):
            return True
        return any(folder == f.rstrip("/") or folder.startswith(f.rstrip("/") + "/") for f in self.folders)


class AgentConfig(_Strict):
    listen: str | None = None  # "127.0.0.1:9180": /metrics and /status; off when unset
    gc_schedule: str | None = None  # cron; no gc when unset
    snapshots_per_host: Positive = SNAPSHOTS_PER_HOST
    snapshots_per_datastore: Positive = SNAPSHOTS_PER_DATASTORE
    log_format: LogFormat = LogFormat.TEXT

    @field_validator("gc_schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        problem = Schedule.problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            host, sep, port = value.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ValueError(f"listen is HOST:PORT, e.g. 127.0.0.1:9180; got {value!r}")
        return value


class ExecutorConfig(_Strict):
    """Where the tasks of a run execute. With ``celery``, the broker's password comes from a file or
    the environment, never from the URL (which is logged and may show on a command line)."""

    type: Annotated[ExecutorType, Field(strict=False)] = ExecutorType.LOCAL  # from the file's string
    broker: str | None = None  # redis://HOST:PORT/DB, without a password
    password_file: str | None = None
    password_env: str | None = None
    routing: Annotated[Routing, Field(strict=False)] = Routing.HOST
    visibility_timeout: Annotated[float, Field(gt=0)] = 3600.0  # a task unacknowledged this long is redelivered
    slot_ttl: Annotated[float, Field(gt=0)] = 60.0  # a snapshot slot not refreshed this long is free again
    claim_ttl: Annotated[float, Field(gt=0)] = 60.0  # a task not refreshed by its worker this long may be retried
    result_timeout: Annotated[float, Field(gt=0)] = 86400.0  # the agent gives up waiting for a task after this

    @model_validator(mode="after")
    def _celery_settings(self) -> Self:
        if self.type != ExecutorType.CELERY:
            return self
        if not self.broker:
            raise ValueError('type = "celery" needs broker = "redis://HOST:PORT/DB"')
        scheme, sep, rest = self.broker.partition("://")
        if not sep or scheme not in ("redis", "rediss"):
            raise ValueError(f"broker is a redis:// or rediss:// URL, e.g. redis://127.0.0.1:6379/0; got {scheme!r}")
        if "@" in rest.split("/", 1)[0]:
            raise ValueError("broker: no user or password in the URL; give password_file or password_env")
        if self.password_file and self.password_env:
            raise ValueError("give password_file or password_env, not both")
        return self

    @property
    def password_path(self) -> Path | None:
        return _expand(self.password_file) if self.password_file else None


class Config(_Strict):
    state_dir: str | None = None
    agent: AgentConfig = Field(default_factory=AgentConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    repositories: dict[str, RepositoryConfig] = Field(default_factory=dict)
    jobs: dict[str, JobConfig] = Field(default_factory=dict)

    def problems(self) -> list[str]:
        """What is wrong across sections: references to nothing, a VM named in two jobs."""
        problems: list[str] = []
        for name, job in self.jobs.items():
            if job.source not in self.sources:
                problems.append(f"jobs.{name}.source: no source named {job.source!r} in [sources]")
            if job.repository not in self.repositories:
                problems.append(f"jobs.{name}.repository: no repository named {job.repository!r} in [repositories]")
        owner: dict[tuple[str, str], str] = {}
        for name, job in self.jobs.items():
            for vm in sorted(job.exact_names):
                first = owner.setdefault((job.source, vm), name)
                if first != name:
                    problems.append(f"jobs.{name}.vms: VM {vm!r} is also in job {first!r}; a VM belongs to one job")
                for other_name, other in self.jobs.items():
                    patterns = [p for p in other.vms if is_pattern(p) and fnmatch.fnmatchcase(vm, p)]
                    if other_name != name and other.source == job.source and patterns:
                        problems.append(
                            f"jobs.{name}.vms: VM {vm!r} also matches {patterns[0]!r} of job {other_name!r}; "
                            "a VM belongs to one job"
                        )
        return problems


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")
