"""The job file's kinds (log formats, source and executor types, task routing), without pydantic.

The command line offers them as choices, so they load in a core install, where the agent extra
(and with it pydantic, which validates the job file in ``model.py``) may be missing.
"""

from __future__ import annotations

from enum import StrEnum


class SourceType(StrEnum):
    VSPHERE = "vsphere"
    HYPERV = "hyperv"


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class ExecutorType(StrEnum):
    LOCAL = "local"  # in the agent's process (the default)
    CELERY = "celery"  # on `vmkeep worker` processes, through Celery and Redis


class Routing(StrEnum):
    HOST = "host"  # each VM's task goes to the queue of its host: vmkeep.host.<moref>
    DATASTORE = "datastore"  # to the queue of its first datastore: vmkeep.datastore.<moref>
    NONE = "none"  # every task to one queue, vmkeep
