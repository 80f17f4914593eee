"""The keys document: typed and checked before unwrapping, damage told apart from a wrong passphrase,
a second copy to fall back on, and old (version 1) documents still read."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.keys import flip_byte_in, resign, write_version_1
from tests.fixtures.repos import small_config
from vmkeep.repository import kdf as kdf_module
from vmkeep.repository.exceptions import CorruptRepository, PassphraseRequired, WrongPassphrase
from vmkeep.repository.kdf import KEYS_FILE
from vmkeep.repository.keys import KEYS_COPY_FILE, KeysDocument
from vmkeep.repository.repo import Repository

PASSPHRASE = b"correct horse"


@pytest.fixture(params=[False, True], ids=["plain", "encrypted"])
def any_repo(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, bytes | None]:
    passphrase = PASSPHRASE if request.param else None
    path = tmp_path / "repo"
    Repository.init(path, small_config(encrypted=request.param), passphrase).close()
    return path, passphrase


@pytest.fixture
def encrypted_repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    Repository.init(path, small_config(encrypted=True), PASSPHRASE).close()
    return path


def test_init_writes_a_checksummed_document_and_its_copy(any_repo: tuple[Path, bytes | None]) -> None:
    path, passphrase = any_repo
    content = (path / KEYS_FILE).read_bytes()
    assert (path / KEYS_COPY_FILE).read_bytes() == content
    doc = json.loads(content)
    config = json.loads((path / "config").read_bytes())
    assert doc["version"] == 2 and doc["repo_id"] == config["repo_id"]
    assert resign(doc) == json.dumps(doc).encode(), "the checksum is SHA-256 over the canonical JSON"
    with Repository.open(path, passphrase) as repo:
        assert repo.keys_document is not None and repo.keys_document.repo_id == config["repo_id"]


@pytest.mark.parametrize("field", ["wrapped", "checksum"])
def test_a_flipped_byte_is_damage_not_a_wrong_passphrase(encrypted_repo: Path, field: str) -> None:
    (encrypted_repo / KEYS_COPY_FILE).unlink()
    flip_byte_in(encrypted_repo / KEYS_FILE, field)
    with pytest.raises(CorruptRepository, match=r"^keys: checksum mismatch: the file is damaged; keyscopy is missing"):
        Repository.open(encrypted_repo, PASSPHRASE)
    # Also without a passphrase: the damage is found before anything is unwrapped.
    with pytest.raises(CorruptRepository, match="keys: checksum mismatch"):
        Repository.open(encrypted_repo, None)


def test_damaged_keys_fall_back_to_the_copy_with_a_warning(
    any_repo: tuple[Path, bytes | None], caplog: pytest.LogCaptureFixture
) -> None:
    path, passphrase = any_repo
    field = "wrapped" if passphrase else "id_key"
    flip_byte_in(path / KEYS_FILE, field)
    with caplog.at_level(logging.WARNING), Repository.open(path, passphrase) as repo:
        assert repo.keys_document is not None
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith("keys: checksum mismatch")
    assert "keyscopy" in record.getMessage()


def test_a_damaged_copy_is_reported_while_keys_still_opens(
    any_repo: tuple[Path, bytes | None], caplog: pytest.LogCaptureFixture
) -> None:
    path, passphrase = any_repo
    with caplog.at_level(logging.WARNING):
        Repository.open(path, passphrase).close()
    assert not caplog.records
    flip_byte_in(path / KEYS_COPY_FILE, "wrapped" if passphrase else "id_key")
    with caplog.at_level(logging.WARNING):
        Repository.open(path, passphrase).close()
    [record] = caplog.records
    assert record.getMessage().startswith("keyscopy: checksum mismatch: the file is damaged: the second copy")
    caplog.clear()
    (path / KEYS_COPY_FILE).unlink()
    with caplog.at_level(logging.WARNING):
        Repository.open(path, passphrase).close()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["keyscopy is missing"]


def test_missing_keys_fall_back_to_the_copy(any_repo: tuple[Path, bytes | None]) -> None:
    path, passphrase = any_repo
    (path / KEYS_FILE).unlink()
    Repository.open(path, passphrase).close()
    (path / KEYS_COPY_FILE).unlink()
    with pytest.raises(CorruptRepository, match=r"keys is missing; keyscopy is missing: .*vmkeep key import"):
        Repository.open(path, passphrase)


def test_wrong_and_missing_passphrase_are_told_apart_from_damage(encrypted_repo: Path) -> None:
    with pytest.raises(WrongPassphrase, match=r"^wrong passphrase for this repository$"):
        Repository.open(encrypted_repo, b"wrong")
    with pytest.raises(PassphraseRequired):
        Repository.open(encrypted_repo, None)
    # keys damaged, the copy intact: a wrong passphrase is still a wrong passphrase, and says keys is damaged.
    flip_byte_in(encrypted_repo / KEYS_FILE, "wrapped")
    with pytest.raises(WrongPassphrase, match=r"wrong passphrase for this repository \(keys: checksum mismatch"):
        Repository.open(encrypted_repo, b"wrong")


def test_keys_of_another_repository_are_refused(tmp_path: Path) -> None:
    for name in ("a", "b"):
        Repository.init(tmp_path / name, small_config(), None).close()
    for name in (KEYS_FILE, KEYS_COPY_FILE):
        (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
    with pytest.raises(CorruptRepository, match=r"keys: belongs to repository [0-9a-f]{32}, not to this one"):
        Repository.open(tmp_path / "a", None)


def _bad(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = {**doc, **changes}
    return {k: v for k, v in out.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 3}, "unknown keys version 3"),
        ({"version": "2"}, "version is str, not int"),
        ({"version": True}, "version is bool, not int"),
        ({"encryption": "rot13"}, "unknown encryption 'rot13'"),
        ({"encryption": ["none"]}, "encryption is list, not str"),
        ({"repo_id": 42}, "repo_id is int, not str"),
        ({"repo_id": "ABC"}, "repo_id is not 16 bytes of lower-case hex"),
        ({"wrapped": None}, "wrapped is missing"),
        ({"wrapped": 12}, "wrapped is int, not str"),
        ({"wrapped": "not base64!"}, "wrapped is not base64"),
        ({"wrapped": "AAAA"}, "wrapped keys are too short"),
        ({"kdf": "argon2id"}, "kdf is str, not dict"),
    ],
)
def test_wrong_types_and_fields_are_corruption(encrypted_repo: Path, changes: dict[str, Any], message: str) -> None:
    doc = json.loads((encrypted_repo / KEYS_FILE).read_bytes())
    content = resign(_bad(doc, **changes))
    with pytest.raises(CorruptRepository, match=f"^keys: {re.escape(message)}"):
        KeysDocument.parse(content, "keys")


def test_no_checksum_is_damage_and_unknown_fields_are_ignored(encrypted_repo: Path) -> None:
    doc = json.loads((encrypted_repo / KEYS_FILE).read_bytes())
    with pytest.raises(CorruptRepository, match=r"^keys: checksum is missing$"):
        KeysDocument.parse(json.dumps({k: v for k, v in doc.items() if k != "checksum"}).encode(), "keys")
    # A field this version does not know is a later minor addition (as for every versioned record),
    # and it is covered by the checksum like the others.
    extended = resign({**doc, "comment": "escrowed 2026-11"})
    assert KeysDocument.parse(extended, "keys") == KeysDocument.parse(json.dumps(doc).encode(), "keys")
    with pytest.raises(CorruptRepository, match="checksum mismatch"):
        KeysDocument.parse(extended.replace(b"2026-11", b"2026-12"), "keys")


@pytest.mark.parametrize(
    ("kdf_changes", "message"),
    [
        ({"algorithm": "scrypt"}, "kdf: unknown KDF 'scrypt'"),
        ({"iterations": "3"}, "kdf: iterations is str, not int"),
        ({"memory_kib": 0}, "kdf: memory_kib is 0, not from 8"),
        ({"salt": "AAAA"}, "kdf: salt is 3 bytes, not 16"),
        ({"lanes": None}, "kdf: lanes is missing"),
    ],
)
def test_wrong_kdf_parameters_are_corruption(encrypted_repo: Path, kdf_changes: dict[str, Any], message: str) -> None:
    doc = json.loads((encrypted_repo / KEYS_FILE).read_bytes())
    doc["kdf"] = _bad(doc["kdf"], **kdf_changes)
    with pytest.raises(CorruptRepository, match=f"^keys: {re.escape(message)}"):
        KeysDocument.parse(resign(doc), "keys")


@pytest.mark.parametrize("content", [b"", b"\xff\xfe", b"[1, 2]", b"null", b'{"version": 2}'])
def test_garbage_is_corruption(content: bytes) -> None:
    with pytest.raises(CorruptRepository, match=r"^keys: "):
        KeysDocument.parse(content, "keys")


def test_version_1_documents_still_open(any_repo: tuple[Path, bytes | None]) -> None:
    path, passphrase = any_repo
    write_version_1(path, passphrase)
    doc = json.loads((path / KEYS_FILE).read_bytes())
    assert doc["version"] == 1 and "checksum" not in doc and "repo_id" not in doc
    with Repository.open(path, passphrase) as repo:
        assert repo.keys_document is not None and repo.keys_document.version == 1
    if passphrase:
        with pytest.raises(WrongPassphrase, match="or keys is damaged: this old keys format has no checksum"):
            Repository.open(path, b"wrong")


def test_opening_writes_nothing(any_repo: tuple[Path, bytes | None]) -> None:
    path, passphrase = any_repo
    before = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    with Repository.open(path, passphrase) as repo:
        repo.points()
    assert {p: p.stat().st_mtime_ns for p in path.rglob("*")} == before


def test_every_flipped_bit_in_keys_is_found_as_damage(encrypted_repo: Path) -> None:
    """No single flipped bit anywhere in a version 2 document passes, or fails as anything but damage."""
    (encrypted_repo / KEYS_COPY_FILE).unlink()
    original = (encrypted_repo / KEYS_FILE).read_bytes()
    for position in range(len(original)):
        for bit in (0x01, 0x20):
            damaged = bytearray(original)
            damaged[position] ^= bit
            (encrypted_repo / KEYS_FILE).write_bytes(damaged)
            with pytest.raises(CorruptRepository, match=r"^keys: "):
                Repository.open(encrypted_repo, PASSPHRASE)


def test_a_derivation_started_early_is_handed_to_open_once(encrypted_repo: Path) -> None:
    """start_deriving (what the CLI calls once its arguments are parsed) hands its key to the next open."""
    kdf_module.start_deriving(encrypted_repo, PASSPHRASE)
    assert len(kdf_module._started) == 1
    with Repository.open(encrypted_repo, PASSPHRASE) as repo:
        assert repo.config.encryption == "aes-256-gcm"
    assert kdf_module._started == {}  # taken, not kept: the next open derives afresh
    Repository.open(encrypted_repo, PASSPHRASE).close()


def test_an_early_derivation_changes_nothing_about_a_wrong_passphrase(encrypted_repo: Path) -> None:
    kdf_module.start_deriving(encrypted_repo, b"wrong")
    with pytest.raises(WrongPassphrase):
        Repository.open(encrypted_repo, b"wrong")
    kdf_module.start_deriving(encrypted_repo, b"wrong")  # derived for one passphrase, opened with another
    Repository.open(encrypted_repo, PASSPHRASE).close()
    kdf_module._started.clear()
    kdf_module.start_deriving(encrypted_repo, PASSPHRASE)
    with pytest.raises(WrongPassphrase):
        Repository.open(encrypted_repo, b"wrong")
    kdf_module._started.clear()


@pytest.mark.parametrize("damage", ["missing", "garbage", "unencrypted", "out of bounds"])
def test_nothing_is_started_for_keys_that_cannot_be_derived(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "repo"
    Repository.init(
        path, small_config(encrypted=damage != "unencrypted"), PASSPHRASE if damage != "unencrypted" else None
    ).close()
    if damage == "missing":
        (path / KEYS_FILE).unlink()
    elif damage == "garbage":
        (path / KEYS_FILE).write_bytes(b"not json")
    elif damage == "out of bounds":  # the early start reads the parameters unchecked by the checksum
        doc = json.loads((path / KEYS_FILE).read_bytes())
        doc["kdf"]["memory_kib"] = 1 << 40
        (path / KEYS_FILE).write_text(json.dumps(doc))
    kdf_module.start_deriving(path, PASSPHRASE)  # never raises: opening reports the problem
    kdf_module.start_deriving(tmp_path / "nowhere", PASSPHRASE)
    assert kdf_module._started == {}


def test_repositories_opened_on_several_threads_at_once_all_open(tmp_path: Path) -> None:
    """Two Argon2id derivations at once hung forever (cryptography 50 / OpenSSL 4): they take turns now.

    What runs them at once in vmkeep: a command's early derivation and the open of another
    repository or keys copy, the daemon and a fleet worker opening repositories for parallel jobs.
    The threads are daemons, so that a regression fails here instead of hanging the test run.
    """
    paths = []
    for n in range(3):
        path = tmp_path / f"repo{n}"
        Repository.init(path, small_config(encrypted=True), PASSPHRASE).close()
        paths.append(path)
    opened: list[str] = []

    def open_one(path: Path) -> None:
        with Repository.open(path, PASSPHRASE) as repo:
            opened.append(repo.config.repo_id)

    threads = [threading.Thread(target=open_one, args=(p,), daemon=True) for p in paths]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30  # about 0.5 s when they take turns
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert len(opened) == 3
