"""Errors of the agent itself (configuration, command-line use)."""

from __future__ import annotations


class AgentError(Exception):
    """A problem with how vmkeep was asked to run; the message is fit for a one-line error."""

    json_reported = False  # the command printed its own --json document about it: print no other


class ConfigError(AgentError):
    """A bad option value, configuration file or environment setting."""


class PromptCancelled(AgentError):
    """Ctrl-C or Ctrl-D at a prompt for a secret: the command ends at once."""
