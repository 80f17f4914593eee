"""The optional parts of vmkeep (pip extras) and the one-line error when one is not installed.

The core install backs up and restores disk images and vSphere VMs. The scheduled agent, Hyper-V,
the fleet and the OS keyring each need an extra (``pip install 'vmkeep[agent]'``). Every command
parses and prints its ``--help`` without them; a command that needs a missing one ends with an
error that names the extra, not a traceback.
"""

from __future__ import annotations

from .exceptions import ConfigError

# The top-level modules of each extra's distributions, as pyproject.toml lists them (the names
# differ: pywinrm is imported as winrm). tests/agent/test_extras.py checks this table against the
# installed distributions' metadata.
EXTRA_MODULES: dict[str, str] = {
    "pydantic": "agent",
    "pydantic_core": "agent",
    "croniter": "agent",
    "prometheus_client": "agent",
    "winrm": "hyperv",
    "spnego": "hyperv",
    "smbprotocol": "hyperv",
    "smbclient": "hyperv",
    "dissect": "hyperv",
    "celery": "fleet",
    "kombu": "fleet",
    "redis": "fleet",
    "keyring": "keyring",
}


class MissingExtra(ConfigError):
    """A command needs an optional dependency that is not installed."""


def missing_extra(exc: BaseException, what: str) -> MissingExtra | None:
    """The error to report for ``exc`` if it is an extra's module not found, else None (a bug)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    extra = EXTRA_MODULES.get(exc.name.partition(".")[0])
    return None if extra is None else extra_error(extra, exc, what)


def extra_error(extra: str, exc: ImportError, what: str) -> MissingExtra:
    """``what`` cannot run because importing ``extra``'s dependencies failed with ``exc``."""
    cause = f"no module named {exc.name!r}" if isinstance(exc, ModuleNotFoundError) and exc.name else str(exc)
    return MissingExtra(f"{what} needs vmkeep's {extra} extra: pip install 'vmkeep[{extra}]' ({cause})")
