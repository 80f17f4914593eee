"""Finding, reading and validating the job file; every problem named by its key path and line.

The file is found through ``--config``, ``$VMKEEP_CONFIG``, ``~/.config/vmkeep/vmkeep.toml`` and
``/etc/vmkeep/vmkeep.toml``, in that order. It is read with the standard library's tomllib and
validated as a whole: every mistake of the file is reported at once, and nothing that uses the
file starts on an invalid one.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..exceptions import ConfigError
from ..extras import extra_error

CONFIG_ENV = "VMKEEP_CONFIG"
STATE_ENV = "STATE_DIRECTORY"  # set by systemd's StateDirectory=


class InvalidConfig(ConfigError):
    """The job file cannot be used; ``problems`` lists each mistake with its key path."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


@dataclass(frozen=True)
class LoadedConfig:
    path: Path
    config: Any  # model.Config (imported lazily: pydantic is part of the agent extra)
    state_dir: Path


def default_paths() -> list[Path]:
    return [Path.home() / ".config" / "vmkeep" / "vmkeep.toml", Path("/etc/vmkeep/vmkeep.toml")]


def find_config(explicit: Path | None) -> Path:
    """The job file to use; ConfigError naming every place looked at if there is none."""
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    for candidate in default_paths():
        if candidate.is_file():
            return candidate
    places = ", ".join(str(p) for p in default_paths())
    raise ConfigError(f"no job file: pass --config FILE, set ${CONFIG_ENV}, or create one of {places}")


def load_config(path: Path, state_dir: Path | None = None) -> LoadedConfig:
    """Read and validate the whole file; InvalidConfig lists every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"job file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read job file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_config(text, path, state_dir)


def parse_config(text: str, path: Path, state_dir: Path | None = None) -> LoadedConfig:
    try:
        from pydantic import ValidationError

        from .model import Config
    except ImportError as exc:
        raise extra_error("agent", exc, "the job file") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(path, [f"not valid TOML: {exc}"]) from None
    try:
        config = Config.model_validate(doc)
    except ValidationError as exc:
        raise InvalidConfig(path, [_problem(text, err) for err in exc.errors()]) from None
    problems = config.problems()
    if problems:
        located = []
        for problem in problems:
            key = problem.split(":", 1)[0].split(".")
            line = _line_of(text, key)
            located.append(problem.replace(":", f" (line {line}):", 1) if line else problem)
        raise InvalidConfig(path, located)
    chosen = state_dir or (Path(os.path.expanduser(config.state_dir)) if config.state_dir else None)
    return LoadedConfig(path, config, chosen or default_state_dir(path))


def default_state_dir(config_path: Path) -> Path:
    """systemd's $STATE_DIRECTORY; else next to the job file if we may write there (not in /etc);
    else $XDG_STATE_HOME/vmkeep (~/.local/state/vmkeep)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV].split(":")[0])
    folder = config_path.absolute().parent
    if not folder.is_relative_to("/etc") and os.access(folder, os.W_OK):
        return folder
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "vmkeep"


def _problem(text: str, err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key"
    elif err["type"] == "missing":
        message = "missing (required)"
    where = ".".join(loc) or "the file"
    line = _line_of(text, loc)
    return f"{where}{f' (line {line})' if line else ''}: {message}"


def _line_of(text: str, loc: list[str]) -> int | None:
    """Best effort: the line that sets the key at ``loc`` (or opens its table). tomllib gives none."""
    if not loc:
        return None
    header: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            header = [k.strip().strip("\"'") for k in line.strip("[]").split(".")]
            if header == loc:
                return number
            continue
        key, eq, _ = line.partition("=")
        if not eq:
            continue
        path = header + [k.strip().strip("\"'") for k in key.split(".")]
        if loc[: len(path)] == path:
            return number
    return None
