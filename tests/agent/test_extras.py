"""A core install (no extras) parses every command and prints every --help; a command that needs a
missing extra names it in one line.

The extras' packages are installed here (the dev extra), so the child process below hides them:
an import hook refuses their top-level modules as an absent package would (ModuleNotFoundError
with the module's name). That is the one thing faked; everything else is the real program.
.ci/core-install checks the same on a real core install, in a fresh virtual environment.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vmkeep.agent.cli import COMMAND_MODULES
from vmkeep.agent.extras import EXTRA_MODULES, missing_extra

ROOT = Path(__file__).resolve().parents[2]

# Runs vmkeep's command line once per argv given as JSON, with the named top-level modules hidden,
# and prints each exit status.
HIDDEN = """
import contextlib, io, json, sys
from importlib.abc import MetaPathFinder
hidden = set(json.loads(sys.argv[1]))

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Absent())
from vmkeep.agent import cli
codes = []
for argv in json.loads(sys.argv[2]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            codes.append(cli.main(argv))
        except SystemExit as exc:
            codes.append(exc.code)
print(json.dumps({"codes": codes, "loaded": sorted(m for m in sys.modules if m.partition(".")[0] in hidden)}))
"""


def _run_without(modules: set[str], *argvs: list[str]) -> tuple[list[int], str]:
    proc = subprocess.run(
        [sys.executable, "-c", HIDDEN, json.dumps(sorted(modules)), json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["loaded"] == []
    return doc["codes"], proc.stderr


def test_every_help_and_the_manual_work_without_any_extra() -> None:
    commands = [c for names in COMMAND_MODULES.values() for c in names]
    argvs = [["--help"], *([c, "--help"] for c in commands), ["completion", "bash"], ["man"]]
    codes, stderr = _run_without(set(EXTRA_MODULES), *argvs)
    assert codes == [0] * len(argvs), stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("argv", "hidden", "who", "extra"),
    [
        (["jobs"], set(EXTRA_MODULES), "vmkeep jobs", "agent"),
        (["agent"], set(EXTRA_MODULES), "vmkeep agent", "agent"),
        (["worker"], {"celery", "kombu", "redis"}, "the celery executor", "fleet"),
    ],
)
def test_a_command_that_needs_a_missing_extra_names_it_in_one_line(
    tmp_path: Path, argv: list[str], hidden: set[str], who: str, extra: str
) -> None:
    config = tmp_path / "vmkeep.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n\n[executor]\ntype = "celery"\nbroker = "redis://127.0.0.1:1/0"\n'
    )
    codes, stderr = _run_without(hidden, [*argv, "--config", str(config)])
    lines = stderr.strip().splitlines()
    assert codes == [2], stderr
    assert len(lines) == 1, stderr
    pattern = rf"vmkeep: error: {who} needs vmkeep's {extra} extra: pip install 'vmkeep\[{extra}\]' "
    assert re.match(pattern + r"\(no module named '\w+'\)$", lines[0]), lines[0]


def test_a_missing_module_of_vmkeep_itself_stays_a_bug() -> None:
    assert missing_extra(ModuleNotFoundError("No module named 'vmkeep.x'", name="vmkeep.x"), "vmkeep x") is None
    assert missing_extra(ImportError("cannot import name 'y'"), "vmkeep x") is None
    found = missing_extra(ModuleNotFoundError("No module named 'winrm.protocol'", name="winrm.protocol"), "vmkeep x")
    assert found is not None and "pip install 'vmkeep[hyperv]'" in str(found)


def test_the_table_holds_every_module_of_every_extra() -> None:
    """Each distribution an extra requires (dev aside) provides modules that the table maps to that extra."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    provided: dict[str, set[str]] = {}
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            provided.setdefault(_canonical(dist), set()).add(module)
    checked = 0
    for extra, requirements in extras.items():
        if extra == "dev":
            continue
        for requirement in requirements:
            dist = _canonical(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0])
            modules = {m for m in provided.get(dist, set()) if not m.startswith("_") and "-" not in m}
            assert modules, f"{dist} ({extra}) is not installed in the test environment"
            for module in modules:
                assert EXTRA_MODULES.get(module) == extra, f"{module} of {dist} is not in EXTRA_MODULES as {extra}"
                checked += 1
    assert checked >= len(set(EXTRA_MODULES.values()))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
