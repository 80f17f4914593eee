"""Each command imports only what it uses: an image backup loads no hypervisor client, no job-file
or task-queue library. Checked in a fresh interpreter, where sys.modules tells the truth."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.fixtures.images import make_image
from tests.fixtures.repos import run_vmkeep
from vmkeep.agent import launch
from vmkeep.agent.cli import COMMAND_MODULES, build_parser

# Libraries an image backup or a restore to a directory has no use for.
NOT_FOR_IMAGES = ("pyVmomi", "requests", "urllib3", "winrm", "spnego", "smbprotocol", "celery", "kombu", "pydantic")
NOT_FOR_IMAGES += ("croniter", "tomllib", "tenacity", "tqdm", "importlib.metadata")

PROBE = """
import json, sys
from vmkeep.agent import cli
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def _loaded(*args: str | Path) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )
    doc = json.loads(proc.stderr.strip().splitlines()[-1])
    assert doc["code"] == 0, proc.stderr
    return set(doc["modules"])


def _heavy(modules: set[str]) -> set[str]:
    return {m for m in modules for name in NOT_FOR_IMAGES if m == name or m.startswith(name + ".")}


def test_an_image_backup_and_a_restore_import_no_hypervisor_or_job_file_library(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    image = make_image(tmp_path / "web01.img", 3_000_000, seed=1)
    assert _heavy(_loaded("backup-image", image, "--repo", repo, "--quiet")) == set()
    assert _heavy(_loaded("points", "--repo", repo)) == set()
    assert _heavy(_loaded("restore", "latest", "--repo", repo, "--to-dir", tmp_path / "out", "--quiet")) == set()


# What a command on a repository needs only once its arguments are parsed: loading it meanwhile is
# what the passphrase's key derivation, started right after parsing, overlaps with (cli.main).
STORAGE = (
    "vmkeep.repository.repo",
    "vmkeep.repository.codec",
    "vmkeep.agent.engine.jobs",
    "vmkeep.agent.engine.restore",
)
STORAGE += ("zstandard", "blake3", "cryptography")

PARSE_PROBE = """
import json, sys
from vmkeep.agent import cli
cli.build_parser(cli.command_of(sys.argv[1:])).parse_args(sys.argv[1:])
print(json.dumps(sorted(sys.modules)))
"""


def test_parsing_a_repository_command_loads_no_storage_module(tmp_path: Path) -> None:
    for argv in (
        ["backup-image", "web01.img", "--repo", "r", "--hints", "h.json"],
        ["restore", "latest", "--repo", "r", "--to-dir", "out"],
        ["points", "--repo", "r"],
        ["verify", "--repo", "r"],
    ):
        proc = subprocess.run([sys.executable, "-c", PARSE_PROBE, *argv], capture_output=True, text=True, check=True)
        loaded = set(json.loads(proc.stdout))
        assert {m for m in loaded for name in STORAGE if m == name or m.startswith(name + ".")} == set(), argv[0]


def test_the_command_table_names_what_each_module_registers() -> None:
    """cli.COMMAND_MODULES decides which module a command imports; it must match the modules."""
    for module, commands in COMMAND_MODULES.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"vmkeep.agent.commands.{module}").add_parsers(sub)
        assert tuple(sub.choices) == commands, module
    full = build_parser()
    [action] = [a for a in full._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(action.choices) == [c for commands in COMMAND_MODULES.values() for c in commands]


def test_version_and_help_still_work_without_a_command() -> None:
    version = run_vmkeep("--version")
    assert version.code == 0 and version.out.startswith("vmkeep ")
    helped = run_vmkeep("--help")
    assert helped.code == 0 and "backup-image" in helped.out and "history" in helped.out
    assert run_vmkeep("-v", "points", "--help").code == 0


# The program's quick exit (cli.run): exit functions run, output is flushed whole, a non-daemon
# thread is waited for, and the status is main's.
EXIT_PROBE = """
import atexit, sys, threading, time
from pathlib import Path
from vmkeep.agent import cli
atexit.register(lambda: print("exit functions ran"))  # on stdout, buffered: flushed after them
marker = Path(sys.argv.pop(1))
if marker.name != "-":
    def late() -> None:
        time.sleep(0.3)
        marker.write_text("done")
    threading.Thread(target=late, daemon=False).start()
cli.run()
"""


def _run_program(marker: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", EXIT_PROBE, marker, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        # Piped and buffered, as in a script: what is not flushed before the exit is lost.
        env={k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_") and k != "PYTHONUNBUFFERED"},
    )


def test_the_programs_exit_runs_the_exit_functions_flushes_and_waits_for_threads(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    for n in range(3):
        image = make_image(tmp_path / f"vm{n}.img", 1_000_000, seed=n)
        assert run_vmkeep("backup-image", image, "--repo", repo, "--quiet").code == 0

    listed = _run_program("-", "points", "--repo", repo, "--json")
    assert listed.returncode == 0, listed.stderr
    document, _, last = listed.stdout.rstrip().rpartition("\n")
    assert sorted(p["vm"] for p in json.loads(document)) == ["vm0", "vm1", "vm2"]
    assert last == "exit functions ran"

    missing = _run_program("-", "points", "--repo", tmp_path / "nowhere")
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert missing.stdout == "exit functions ran\n"

    marker = tmp_path / "late-thread"
    waited = _run_program(str(marker), "points", "--repo", repo)
    assert waited.returncode == 0 and marker.read_text() == "done"


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_the_launchers_table_names_the_commands_whose_r_is_the_repository() -> None:
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    taking_repo = set()
    for name, parser in commands.choices.items():
        actions = [a for p in _parsers(parser) for a in p._actions]
        if any("--repo" in a.option_strings for a in actions):
            taking_repo.add(name)
            assert all(a.dest == "repo" for a in actions if "-r" in a.option_strings), name
    assert taking_repo == launch.REPOSITORY_COMMANDS


def test_the_launcher_guesses_only_the_plain_cases() -> None:
    env = {"VMKEEP_PASSPHRASE": "secret"}
    guess = launch.early_unlock
    assert guess(["backup-image", "a.img", "--repo", "r1", "-q"], env) == (Path("r1"), b"secret")
    assert guess(["-v", "points", "-r", "r2"], env) == (Path("r2"), b"secret")
    assert guess(["restore", "latest", "--repo=r3"], env) == (Path("r3"), b"secret")
    assert guess(["points"], {**env, "VMKEEP_REPO": "r4"}) == (Path("r4"), b"secret")
    assert guess(["points", "--repo", "r5"], {**env, "VMKEEP_REPO": "r4"}) == (Path("r5"), b"secret")
    # Nothing to start: no passphrase in the environment, a file that overrides it, a command
    # without a repository (or init, whose repository has no key yet), argparse's harder forms.
    assert guess(["points", "--repo", "r1"], {}) is None
    assert guess(["points", "--repo", "r1", "--passphrase-file", "pw"], env) is None
    assert guess(["init", "r1"], {**env, "VMKEEP_REPO": "r1"}) is None
    assert guess(["agent", "--config", "a.toml"], {**env, "VMKEEP_REPO": "r1"}) is None
    assert guess(["points", "-rr1"], env) is None
    assert guess(["points", "--repo"], env) is None


LAUNCH_PROBE = """
import atexit, sys
from vmkeep.repository import kdf
starts, derivations = [], []
start, compute = kdf.start_deriving, kdf.KdfParams.compute
def counted_start(*args):
    starts.append("vmkeep.agent.cli" in sys.modules)
    start(*args)
def counted_compute(self, passphrase):
    derivations.append(1)
    return compute(self, passphrase)
kdf.start_deriving, kdf.KdfParams.compute = counted_start, counted_compute
atexit.register(lambda: print("STARTS", starts, "DERIVATIONS", len(derivations), file=sys.stderr))
from vmkeep.agent.launch import run
run()
"""


def test_the_launchers_head_start_is_the_derivation_the_command_uses(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMKEEP_")} | {"VMKEEP_PASSPHRASE": "pw"}
    assert run_vmkeep("init", repo, "--encrypt", env={"VMKEEP_PASSPHRASE": "pw"}).code == 0

    def program(*args: str | Path) -> str:
        proc = subprocess.run(
            [sys.executable, "-c", LAUNCH_PROBE, *map(str, args)], capture_output=True, text=True, env=env, check=False
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stderr.strip().splitlines()[-1]

    # Begun before the command line was loaded, then taken by the command: one derivation.
    assert program("points", "--repo", repo) == "STARTS [False, True] DERIVATIONS 1"
    (tmp_path / "pw").write_text("pw\n")
    # With a passphrase file the launcher starts nothing; the command starts it after parsing.
    assert program("points", "--repo", repo, "--passphrase-file", tmp_path / "pw") == "STARTS [True] DERIVATIONS 1"
