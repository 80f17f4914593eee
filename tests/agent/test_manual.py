"""Shell completion and the manual page, generated from the parser (run in real bash and groff)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.repos import run_vmkeep
from vmkeep.agent.cli import build_parser
from vmkeep.agent.commands.common import EXIT_CODES
from vmkeep.agent.manual import commands


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = run_vmkeep("completion", "bash")
    assert result.code == 0, result.err
    path = tmp_path_factory.mktemp("completion") / "vmkeep"
    path.write_text(result.out)
    return path


def _complete(script: Path, *words: str, cwd: Path | None = None) -> list[str]:
    """What bash offers for ``vmkeep WORDS...`` (the last word is the one being completed)."""
    array = " ".join(f"'{w}'" for w in ("vmkeep", *words))
    program = (
        f'source "{script}"; COMP_WORDS=({array}); COMP_CWORD={len(words)}; _vmkeep; printf "%s\\n" "${{COMPREPLY[@]}}"'
    )
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, check=True, cwd=cwd).stdout
    return sorted(line for line in out.splitlines() if line)


def test_bash_completes_commands_subcommands_and_options(script: Path) -> None:
    assert _complete(script, "re") == ["repair", "restore"]
    assert _complete(script, "key", "ex") == ["export"]
    assert _complete(script, "key", "export", "--pa") == ["--paper", "--passphrase-file"]
    assert _complete(script, "restore", "--to") == ["--to-dir", "--to-host", "--to-hyperv"]
    assert _complete(script, "-v", "backup", "--vm", "web01", "--fu") == ["--full", "--full-every"]
    assert _complete(script, "completion", "") == ["bash"]
    assert _complete(script, "--ver") == ["--verbose", "--version"]


def test_bash_completes_file_names_where_a_path_goes(script: Path, tmp_path: Path) -> None:
    (tmp_path / "repo-a").mkdir()
    (tmp_path / "repo-b").mkdir()
    assert _complete(script, "points", "--repo", "repo-", cwd=tmp_path) == ["repo-a", "repo-b"]
    assert _complete(script, "restore", "latest:web01", "--user", "re", cwd=tmp_path) == []  # a user name


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_man_page_is_valid_roff_and_documents_every_command_and_option() -> None:
    result = run_vmkeep("man")
    assert result.code == 0, result.err
    page = result.out
    lint = ["groff", "-man", "-Tutf8", "-ww", "-z"]
    check = subprocess.run(lint, input=page, capture_output=True, text=True, check=False)
    assert check.returncode == 0 and check.stderr == "", check.stderr
    # Rendered without hyphenation, on long lines, whitespace folded: text as a reader sees it.
    render = ["groff", "-man", "-Tascii", "-rHY=0", "-rLL=400n", "-P-c", "-P-b", "-P-u"]
    rendered = " ".join(subprocess.run(render, input=page, capture_output=True, text=True, check=True).stdout.split())
    for command in commands(build_parser()):
        assert f".SS {' '.join(command.words)}" in page
        for action in command.parser._actions:
            for option in action.option_strings:
                assert option in rendered, f"{option} of {' '.join(command.words)} is missing"
    for _cls, code, what in EXIT_CODES:
        assert f"{code} {' '.join(what.split())}" in rendered
    assert "VMKEEP_PASSPHRASE" in rendered
