"""`vmkeep key export` / `key import`, and a damaged keys file, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.images import make_image
from tests.fixtures.keys import flip_byte_in, write_version_1
from tests.fixtures.repos import assert_one_line_error, run_vmkeep

PASSPHRASE = {"VMKEEP_PASSPHRASE": "escrow test"}


@pytest.fixture
def backed_up(tmp_path: Path) -> tuple[Path, Path]:
    """An encrypted repository holding one backup of an image."""
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo, "--encrypt", "--block-size", "64K", env=PASSPHRASE).code == 0
    image = make_image(tmp_path / "web01.img", 700_000, seed=3)
    assert run_vmkeep("backup-image", image, "--repo", repo, "-q", env=PASSPHRASE).code == 0
    return repo, image


def restore_matches(repo: Path, image: Path, out: Path) -> bool:
    result = run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", out, "--json", env=PASSPHRASE)
    assert result.code == 0, result.err
    return Path(json.loads(result.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()


@pytest.mark.parametrize("paper", [False, True], ids=["json", "paper"])
def test_lost_keys_come_back_from_an_export(backed_up: tuple[Path, Path], tmp_path: Path, paper: bool) -> None:
    repo, image = backed_up
    exported = tmp_path / "escrow.txt"
    result = run_vmkeep("key", "export", "--repo", repo, "--file", exported, *(["--paper"] * paper), env=PASSPHRASE)
    assert result.code == 0, result.err
    assert exported.stat().st_mode & 0o777 == 0o600
    assert b"id_key" not in exported.read_bytes() and b"data_key" not in exported.read_bytes()

    for name in ("keys", "keyscopy"):
        (repo / name).unlink()
    lost = run_vmkeep("points", "--repo", repo, env=PASSPHRASE)
    assert_one_line_error(lost, "corrupt repository: keys is missing; keyscopy is missing", "vmkeep key import")
    assert lost.code == 3

    imported = run_vmkeep("key", "import", exported, "--repo", repo, "--json", env=PASSPHRASE)
    assert imported.code == 0, imported.err
    doc = json.loads(imported.out)
    assert doc["checked_against_data"] and doc["encrypted"]
    assert (repo / "keys").read_bytes() == (repo / "keyscopy").read_bytes()
    assert restore_matches(repo, image, tmp_path / "out")


def test_export_refuses_to_overwrite_and_stdout_is_the_document(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    repo, _image = backed_up
    target = tmp_path / "precious"
    target.write_text("precious")
    assert_one_line_error(run_vmkeep("key", "export", "--repo", repo, "--file", target, env=PASSPHRASE), "exists")
    assert target.read_text() == "precious"
    out = run_vmkeep("key", "export", "--repo", repo, env=PASSPHRASE)
    assert out.code == 0 and json.loads(out.out) == json.loads((repo / "keys").read_bytes())
    assert_one_line_error(run_vmkeep("key", "export", "--repo", repo, env={"VMKEEP_PASSPHRASE": "no"}), "wrong")


def test_import_checks_repository_passphrase_and_file(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    repo, _image = backed_up
    exported = tmp_path / "escrow.json"
    assert run_vmkeep("key", "export", "--repo", repo, "--file", exported, env=PASSPHRASE).code == 0
    keys_before = (repo / "keys").read_bytes()

    other = tmp_path / "other"
    assert run_vmkeep("init", other, "--encrypt", env=PASSPHRASE).code == 0
    other_keys = (other / "keys").read_bytes()
    assert_one_line_error(
        run_vmkeep("key", "import", exported, "--repo", other, env=PASSPHRASE), "holds the keys of repository"
    )
    assert (other / "keys").read_bytes() == other_keys

    wrong = run_vmkeep("key", "import", exported, "--repo", repo, env={"VMKEEP_PASSPHRASE": "not it"})
    assert_one_line_error(wrong, "wrong passphrase")

    flip_byte_in(exported, "wrapped")
    assert_one_line_error(
        run_vmkeep("key", "import", exported, "--repo", repo, env=PASSPHRASE),
        "not a usable vmkeep keys file",
        "checksum mismatch",
    )
    assert (repo / "keys").read_bytes() == keys_before


def test_a_typo_on_paper_names_its_line(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    repo, _image = backed_up
    paper = run_vmkeep("key", "export", "--repo", repo, "--paper", env=PASSPHRASE)
    assert paper.code == 0
    lines = paper.out.splitlines()
    line = next(i for i, text in enumerate(lines) if text.strip().startswith("5:"))
    digits = lines[line].split(":", 1)[1]
    typo = digits.replace(digits.strip()[0], "f" if digits.strip()[0] != "f" else "e", 1)
    lines[line] = lines[line].split(":", 1)[0] + ":" + typo
    typed = tmp_path / "typed.txt"
    typed.write_text("\n".join(lines) + "\n")
    assert_one_line_error(
        run_vmkeep("key", "import", typed, "--repo", repo, env=PASSPHRASE), "line 5: its check does not match"
    )


def test_damaged_keys_file_is_exit_3_not_a_wrong_passphrase(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    repo, image = backed_up
    flip_byte_in(repo / "keys", "wrapped")
    # The copy opens the repository, with a warning naming the damaged file.
    result = run_vmkeep("points", "--repo", repo, env=PASSPHRASE)
    assert result.code == 0, result.err
    assert "WARNING: keys: checksum mismatch: the file is damaged" in result.err and "keyscopy" in result.err
    assert restore_matches(repo, image, tmp_path / "out")

    (repo / "keyscopy").unlink()
    damaged = run_vmkeep("points", "--repo", repo, env=PASSPHRASE)
    assert_one_line_error(damaged, "corrupt repository: keys: checksum mismatch: the file is damaged")
    assert damaged.code == 3
    wrong = run_vmkeep("points", "--repo", repo, env={"VMKEEP_PASSPHRASE": "not it"})
    assert_one_line_error(wrong, "corrupt repository: keys: checksum mismatch")


def test_an_old_repository_is_upgraded_by_export_and_import(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    repo, image = backed_up
    write_version_1(repo, PASSPHRASE["VMKEEP_PASSPHRASE"].encode())
    # A copy of an old keys file, kept by hand, imports too (checked against the data: it names no repository).
    saved = tmp_path / "old-keys"
    saved.write_bytes((repo / "keys").read_bytes())
    result = run_vmkeep("key", "import", saved, "--repo", repo, "--json", env=PASSPHRASE)
    assert result.code == 0, result.err
    assert json.loads(result.out)["upgraded"] is True
    write_version_1(repo, PASSPHRASE["VMKEEP_PASSPHRASE"].encode())
    exported = tmp_path / "escrow.json"
    assert run_vmkeep("key", "export", "--repo", repo, "--file", exported, env=PASSPHRASE).code == 0
    assert json.loads(exported.read_bytes())["version"] == 2
    result = run_vmkeep("key", "import", exported, "--repo", repo, "--json", env=PASSPHRASE)
    assert result.code == 0, result.err
    assert json.loads(result.out)["upgraded"] is False  # the export was already version 2
    assert json.loads((repo / "keys").read_bytes())["version"] == 2
    assert (repo / "keyscopy").read_bytes() == (repo / "keys").read_bytes()
    assert restore_matches(repo, image, tmp_path / "out")


def test_unencrypted_export_warns_that_it_holds_the_id_key(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_vmkeep("init", repo).code == 0
    result = run_vmkeep("key", "export", "--repo", repo)
    assert result.code == 0
    assert "not encrypted" in result.err and "id key in clear" in result.err
    assert json.loads(result.out)["id_key"] == json.loads((repo / "keys").read_bytes())["id_key"]


def test_passwd_rewraps_both_files_and_old_exports_still_open(backed_up: tuple[Path, Path], tmp_path: Path) -> None:
    repo, image = backed_up
    old_export = tmp_path / "before.json"
    assert run_vmkeep("key", "export", "--repo", repo, "--file", old_export, env=PASSPHRASE).code == 0
    new_file = tmp_path / "new"
    new_file.write_text("a new passphrase\n")
    changed = run_vmkeep("key", "passwd", "--repo", repo, "--new-passphrase-file", new_file, "--json", env=PASSPHRASE)
    assert changed.code == 0, changed.err
    assert json.loads(changed.out)["written"] == ["keys", "keyscopy"]
    assert (repo / "keys").read_bytes() == (repo / "keyscopy").read_bytes()
    assert b"a new passphrase" not in (repo / "keys").read_bytes()

    new_env = {"VMKEEP_PASSPHRASE": "a new passphrase"}
    assert_one_line_error(run_vmkeep("points", "--repo", repo, env=PASSPHRASE), "wrong passphrase")
    out = tmp_path / "out"
    restored = run_vmkeep("restore", "latest", "--repo", repo, "--to-dir", out, "--json", env=new_env)
    assert restored.code == 0, restored.err
    assert Path(json.loads(restored.out)["disks"][0]["path"]).read_bytes() == image.read_bytes()
    # The data keys did not change: an export made before still opens, with the old passphrase.
    assert run_vmkeep("key", "import", old_export, "--repo", repo, env=PASSPHRASE).code == 0
    assert run_vmkeep("points", "--repo", repo, env=PASSPHRASE).code == 0

    assert_one_line_error(run_vmkeep("key", "passwd", "--repo", repo, env=PASSPHRASE), "a new passphrase is needed")
    plain = tmp_path / "plain"
    assert run_vmkeep("init", plain).code == 0
    assert_one_line_error(
        run_vmkeep("key", "passwd", "--repo", plain, env={**PASSPHRASE, "VMKEEP_NEW_PASSPHRASE": "x"}),
        "not encrypted",
    )
