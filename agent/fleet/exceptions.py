"""What can go wrong between the agent, Redis and the workers."""

from __future__ import annotations

from ..exceptions import AgentError, ConfigError


class FleetError(AgentError):
    """Redis cannot be reached, a task cannot be handed out or its answer read."""


class FleetConfigError(ConfigError):
    """The job file's [executor] cannot be used as asked (no celery extra, no password...)."""
