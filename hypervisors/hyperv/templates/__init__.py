"""The PowerShell the agent sends to a Hyper-V host: versioned template files, rendered with data only.

Each template (``NAME.ps1`` in this package) starts with ``# vmkeep-template: NAME/VERSION`` and has
exactly one variable part, the base64 of a JSON document in the line

    $P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))

Base64 has no quote, no ``$``, no backtick and no newline, so nothing a VM name (or any other
value) contains can become PowerShell: it reaches the script as a string inside ``$P``. Each
template answers one JSON object on stdout; a failure is an answer too (``{"error": ...,
"code": ...}``), so it survives any transport. A template's text is fixed per version: the
simulated host recognises it by a pinned SHA-256, so an edit needs a new version.

Each template, rendered with realistic parameters, fits in the 8,191 characters of a Windows
command line once sent as ``powershell -EncodedCommand`` (UTF-16LE, then base64; a test checks
it). A longer one (a VM with a dozen network adapters) still works: the WinRM client then sends
the script on stdin behind a small pinned loader (winrm.py).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Any

from ..exceptions import TemplateError

PLACEHOLDER = "{{PARAMS}}"
HEADER = "# vmkeep-template: "
PARAMS_LINE = "$P = ConvertFrom-Json ([Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{{PARAMS}}')))"
COMMAND_LINE_LIMIT = 8191  # characters of a Windows command line (cmd.exe, CreateProcess via WinRS)
COMMAND_PREFIX = "powershell -NoProfile -NonInteractive -EncodedCommand "


class Template(StrEnum):
    """Every template the agent sends, by file name (without .ps1)."""

    LIST_VMS = "list-vms"
    BEGIN_BACKUP = "begin-backup"
    CHECKPOINT_DISKS = "checkpoint-disks"
    GET_CHANGES = "get-changes"
    READ_DISK = "read-disk"
    CONVERT_CHECKPOINT = "convert-checkpoint"
    DESTROY_REFERENCE_POINT = "destroy-reference-point"
    REMOVE_CHECKPOINT = "remove-checkpoint"
    CREATE_VM = "create-vm"
    ATTACH_DISK = "attach-disk"
    REMOVE_VM = "remove-vm"
    START_VM = "start-vm"


@dataclass(frozen=True)
class TemplateText:
    name: str
    version: int
    text: str  # with the placeholder


@cache
def load(template: Template) -> TemplateText:
    """The template's text as shipped, checked for its header and its one placeholder."""
    text = resources.files(__package__).joinpath(f"{template.value}.ps1").read_text("utf-8")
    name, version = parse_header(text)
    if name != template.value:
        raise TemplateError(f"template file {template.value}.ps1 calls itself {name}")
    if text.count(PLACEHOLDER) != 1 or text.count(PARAMS_LINE) != 1:
        raise TemplateError(f"template {name} must hold the parameter line exactly once")
    return TemplateText(name, version, text)


def parse_header(text: str) -> tuple[str, int]:
    """``(name, version)`` from a template's first line."""
    first = text.split("\n", 1)[0].rstrip("\r")
    if not first.startswith(HEADER):
        raise TemplateError("not a vmkeep template: the first line is not '# vmkeep-template: NAME/VERSION'")
    name, sep, version = first[len(HEADER) :].partition("/")
    if not sep or not name or not version.isdigit():
        raise TemplateError(f"a malformed template header: {first!r}")
    return name, int(version)


def encode_params(params: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(params, separators=(",", ":"), ensure_ascii=False).encode()).decode("ascii")


def command_line_length(script: str) -> int:
    """Characters of ``powershell ... -EncodedCommand <script as UTF-16LE, base64>``."""
    return len(COMMAND_PREFIX) + len(base64.b64encode(script.encode("utf-16-le")))


def render(template: Template, params: dict[str, Any]) -> str:
    """The script to send: the template with ``params`` as its one base64 JSON literal."""
    return load(template).text.replace(PLACEHOLDER, encode_params(params))


def decode_answer(template: Template, stdout: bytes) -> dict[str, Any]:
    """The JSON object a template answered; raises TemplateError for anything else."""
    text = stdout.decode("utf-8", "replace").strip()
    try:
        answer = json.loads(text)
    except ValueError:
        shown = text[:200] + ("..." if len(text) > 200 else "")
        raise TemplateError(f"the host's answer to {template.value} is not JSON: {shown!r}") from None
    if not isinstance(answer, dict):
        raise TemplateError(f"the host's answer to {template.value} is not a JSON object")
    return answer
