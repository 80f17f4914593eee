"""The PowerShell templates: real PowerShell grammar, the command-line limit, data never code."""

from __future__ import annotations

import base64
import json
from importlib import resources

import pytest
import tree_sitter
import tree_sitter_powershell

from vmkeep.hypervisors.hyperv.exceptions import TemplateError
from vmkeep.hypervisors.hyperv.simulator.host import PINNED, SimFault, recognise
from vmkeep.hypervisors.hyperv.templates import (
    COMMAND_LINE_LIMIT,
    PARAMS_LINE,
    Template,
    command_line_length,
    load,
    parse_header,
    render,
)

HOSTILE = "web'01\"; $(Remove-Item C:\\ -Recurse) `n\n}) # ' + \"$env:USERNAME\" @'\n'@ ${x} ’‘"


def _parser() -> tree_sitter.Parser:
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def _errors(node: tree_sitter.Node) -> list[str]:
    found = []
    if node.is_error or node.is_missing:
        found.append(f"{node.type} at line {node.start_point[0] + 1}: {node.text!r}"[:200])
    for child in node.children:
        found.extend(_errors(child))
    return found


def test_every_template_file_is_known_and_loads() -> None:
    files = {
        p.name for p in resources.files("vmkeep.hypervisors.hyperv.templates").iterdir() if p.name.endswith(".ps1")
    }
    assert files == {f"{t.value}.ps1" for t in Template}
    for t in Template:
        text = load(t)
        assert (text.name, text.version) in PINNED


@pytest.mark.parametrize("template", list(Template))
def test_template_parses_as_powershell(template: Template) -> None:
    script = render(template, {"vm": HOSTILE})
    tree = _parser().parse(script.encode("utf-8"))
    assert _errors(tree.root_node) == []


def test_the_parser_catches_a_syntax_error() -> None:
    broken = load(Template.GET_CHANGES).text.replace("} elseif", "elseif", 1)
    assert _errors(_parser().parse(broken.encode()).root_node)


SNAPSHOT = "Microsoft:" + "A" * 36
VHDX = "C:\\ClusterStorage\\Volume1\\" + "p" * 200 + ".vhdx"
REALISTIC: dict[Template, dict[str, object]] = {
    Template.LIST_VMS: {"vm": "v" * 100},
    Template.BEGIN_BACKUP: {"vm": "v" * 100, "consistency": 1},
    Template.CHECKPOINT_DISKS: {"snapshot": SNAPSHOT},
    Template.GET_CHANGES: {
        "snapshot": SNAPSHOT,
        "path": VHDX,
        "limit_id": "rctX:5bfde23b:ce75:4303:b54f:6c18394f105c:00000001",
        "offset": 2**40,
        "length": 2**40,
    },
    Template.READ_DISK: {"path": VHDX, "offset": 2**40, "length": 2**20},
    Template.CONVERT_CHECKPOINT: {"snapshot": SNAPSHOT},
    Template.DESTROY_REFERENCE_POINT: {"reference_point": SNAPSHOT},
    Template.REMOVE_CHECKPOINT: {"snapshot": SNAPSHOT},
    Template.CREATE_VM: {
        "name": "n" * 100,
        "generation": 2,
        "cpu": 64,
        "memory_mb": 2**20,
        "nics": [{"name": "Network Adapter", "switch": "s" * 40}] * 8,
    },
    Template.ATTACH_DISK: {
        "vm_id": SNAPSHOT,
        "controller": "SCSI",
        "controller_number": 3,
        "location": 63,
        "path": VHDX,
    },
    Template.REMOVE_VM: {"vm_id": SNAPSHOT},
    Template.START_VM: {"vm_id": SNAPSHOT},
}


@pytest.mark.parametrize("template", list(Template))
def test_template_fits_the_command_line_with_realistic_parameters(template: Template) -> None:
    """A 230-character VHDX path, a 100-character VM name, eight NICs."""
    assert command_line_length(render(template, REALISTIC[template])) <= COMMAND_LINE_LIMIT


def test_parameters_are_only_a_base64_literal_and_round_trip_as_data() -> None:
    script = render(Template.LIST_VMS, {"vm": HOSTILE})
    template = load(Template.LIST_VMS).text
    # The rendered script differs from the template only inside the one literal, which holds no quote.
    before, after = template.split("{{PARAMS}}")
    assert script.startswith(before) and script.endswith(after)
    literal = script[len(before) : len(script) - len(after)]
    assert set(literal) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    assert json.loads(base64.b64decode(literal)) == {"vm": HOSTILE}
    # The hostile name reaches the host as the same string, and the script as the pinned text.
    assert recognise(script) == ("list-vms", 1, {"vm": HOSTILE})
    assert PARAMS_LINE in template


def test_the_simulator_refuses_an_edited_template_of_the_same_version() -> None:
    script = render(Template.REMOVE_CHECKPOINT, {"snapshot": "x"}).replace(
        "Start-Sleep -Milliseconds 200", "Remove-Item C:\\"
    )
    with pytest.raises(SimFault, match="does not match the pinned version"):
        recognise(script)


def test_the_simulator_refuses_scripts_that_are_not_templates() -> None:
    with pytest.raises(SimFault, match="not a vmkeep template"):
        recognise("Get-Process")
    with pytest.raises(SimFault, match="unknown template"):
        recognise("# vmkeep-template: list-vms/99\n")
    two = render(Template.LIST_VMS, {}) + "\nFromBase64String('AAAA')"
    with pytest.raises(SimFault, match="exactly one parameter literal"):
        recognise(two)


def test_header_parsing() -> None:
    assert parse_header("# vmkeep-template: get-changes/12\r\n...") == ("get-changes", 12)
    for bad in ("# vmkeep-template: x", "# other\n", "# vmkeep-template: x/y"):
        with pytest.raises(TemplateError):
            parse_header(bad)
