"""The repository's secret keys, the ``keys`` document that holds them, and its second copy.

Two keys of 32 bytes each:
- the *id key* keys BLAKE3 block ids, so ids reveal nothing about content to someone who
  can list the repository, and a hostile guest cannot craft colliding blocks;
- the *data key* encrypts frames and sealed files with AES-256-GCM (encrypted repositories only).

In an unencrypted repository the id key is stored in clear in ``keys``. In an encrypted one both
keys are wrapped with AES-256-GCM under a key derived from the passphrase by Argon2id.

The document is parsed into a typed record (``KeysDocument``) and checked field by field before
anything is unwrapped. Version 2 documents carry the repository id and a SHA-256 checksum over
their other fields, so a damaged file is told apart from a wrong passphrase; version 1 documents
(no checksum, no repository id) are still read. Every repository since version 2 keeps a second
copy, ``keyscopy``; opening falls back to it when ``keys`` is missing or damaged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .backend import Backend
from .exceptions import CorruptRepository, PassphraseRequired, RepositoryError, WrongPassphrase
from .format import FORMAT, Encryption
from .kdf import KEYS_FILE, SALT_SIZE, KdfParams
from .validate import base64_field, hex_id, json_document, json_object, obj, typed

KEYS_COPY_FILE = "keyscopy"  # the second copy (the backend's top-level names are letters only)
KEYS_VERSION = 2  # written; version 1 (no checksum, no repo_id) is still read
_WRAP_AAD = b"vmkeep keys v1"
_REWRITE = "'vmkeep key export --file F' then 'vmkeep key import F'"

log = logging.getLogger(__name__)


# The names older code imported.
ENCRYPTION_NONE = Encryption.NONE
ENCRYPTION_AES_GCM = Encryption.AES_256_GCM


@dataclass(frozen=True)
class Keys:
    id_key: bytes
    data_key: bytes | None  # None: the repository is not encrypted

    @classmethod
    def generate(cls, encrypted: bool) -> Keys:
        return cls(os.urandom(FORMAT.KEY_SIZE), os.urandom(FORMAT.KEY_SIZE) if encrypted else None)

    @property
    def encrypted(self) -> bool:
        return self.data_key is not None


@dataclass(frozen=True)
class KeysDocument:
    """A parsed, checked ``keys`` document; its secrets still wrapped when encrypted."""

    version: int
    repo_id: str | None  # None only in version 1 documents
    encryption: Encryption
    id_key: bytes | None = None  # unencrypted repositories: the id key, in clear
    kdf: KdfParams | None = None  # encrypted repositories: how the wrapping key is derived
    wrapped: bytes | None = None  # encrypted repositories: nonce || AES-256-GCM(id and data keys) || tag

    @property
    def encrypted(self) -> bool:
        return self.encryption is Encryption.AES_256_GCM

    @classmethod
    def wrap(cls, keys: Keys, passphrase: bytes | None, repo_id: str) -> KeysDocument:
        """A new document holding ``keys``, wrapped under ``passphrase`` when they include a data key."""
        if keys.data_key is None:
            return cls(KEYS_VERSION, repo_id, Encryption.NONE, id_key=keys.id_key)
        if not passphrase:
            raise PassphraseRequired("an encrypted repository needs a passphrase")
        kdf = KdfParams(salt=os.urandom(SALT_SIZE))
        nonce = os.urandom(FORMAT.NONCE_SIZE)
        secret = json.dumps({"id_key": _b64(keys.id_key), "data_key": _b64(keys.data_key)}).encode()
        wrapped = nonce + AESGCM(kdf.derive(passphrase)).encrypt(nonce, secret, _WRAP_AAD)
        return cls(KEYS_VERSION, repo_id, Encryption.AES_256_GCM, kdf=kdf, wrapped=wrapped)

    def unwrap(self, passphrase: bytes | None, where: str = KEYS_FILE) -> Keys:
        if self.id_key is not None:
            return Keys(self.id_key, None)
        assert self.kdf is not None and self.wrapped is not None  # parse() guarantees it
        if not passphrase:
            raise PassphraseRequired("the repository is encrypted: set VMKEEP_PASSPHRASE or pass --passphrase-file")
        nonce, sealed = self.wrapped[: FORMAT.NONCE_SIZE], self.wrapped[FORMAT.NONCE_SIZE :]
        try:
            secret = AESGCM(self.kdf.derive(passphrase)).decrypt(nonce, sealed, _WRAP_AAD)
        except InvalidTag:
            if self.version == 1:
                raise WrongPassphrase(
                    f"wrong passphrase for this repository (or {where} is damaged: "
                    "this old keys format has no checksum to tell)"
                ) from None
            raise WrongPassphrase("wrong passphrase for this repository") from None
        try:  # authenticated: only a bug could have written it wrong, but still no TypeError
            inner = json_object(secret)
            size = FORMAT.KEY_SIZE
            return Keys(base64_field(inner, "id_key", size), base64_field(inner, "data_key", size))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptRepository(f"{where}: the wrapped keys are malformed ({_reason(exc)})") from None

    def for_repository(self, repo_id: str) -> KeysDocument:
        """This document in the current version, naming ``repo_id`` (upgrades a version 1 document)."""
        return replace(self, version=KEYS_VERSION, repo_id=repo_id)

    def check_repository(self, repo_id: str, where: str) -> None:
        if self.repo_id is not None and self.repo_id != repo_id:
            raise CorruptRepository(f"{where}: belongs to repository {self.repo_id}, not to this one ({repo_id})")

    # -- serialisation ----------------------------------------------------------------------

    def fields(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"version": self.version}
        if self.repo_id is not None:
            doc["repo_id"] = self.repo_id
        doc["encryption"] = str(self.encryption)
        if self.id_key is not None:
            doc["id_key"] = _b64(self.id_key)
        if self.kdf is not None and self.wrapped is not None:
            doc["kdf"] = self.kdf.to_json()
            doc["wrapped"] = _b64(self.wrapped)
        return doc

    def dump(self) -> bytes:
        """The file's content: the fields and, from version 2, their checksum (pretty-printed JSON)."""
        if self.version < 2 or self.repo_id is None:
            raise ValueError("keys documents are written in version 2, with the repository id")
        doc = self.fields()
        doc["checksum"] = _checksum(doc)
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def parse(cls, content: bytes, where: str) -> KeysDocument:
        """Parse and check a ``keys`` document; CorruptRepository names ``where`` and what is wrong.

        As for every versioned record, fields this version does not know are ignored; a wrong
        type, a missing field or an unknown version is damage. From version 2 the checksum is
        checked first, so any damage is reported as such, whatever field it hit.
        """
        doc = json_document(content, where)
        try:
            version = typed(doc, "version", int)
            if version not in (1, 2):
                raise ValueError(f"unknown keys version {version} (this vmkeep reads 1 and 2)")
            if version >= 2:
                stated = doc.pop("checksum", None)
                if not isinstance(stated, str):
                    raise KeyError("checksum is missing")
                if stated != _checksum(doc):
                    raise ValueError("checksum mismatch: the file is damaged")
            repo_id = hex_id(doc, "repo_id", 16) if version >= 2 else None
            encryption = typed(doc, "encryption", str)
            if encryption == Encryption.NONE:
                return cls(version, repo_id, Encryption.NONE, id_key=base64_field(doc, "id_key", FORMAT.KEY_SIZE))
            if encryption != Encryption.AES_256_GCM:
                raise ValueError(f"unknown encryption {encryption!r}")
            kdf_doc = obj(doc, "kdf")
            try:
                kdf = KdfParams.from_json(kdf_doc)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"kdf: {_reason(exc)}") from None
            wrapped = base64_field(doc, "wrapped", None)
            if len(wrapped) < FORMAT.NONCE_SIZE + FORMAT.TAG_SIZE + 2 * FORMAT.KEY_SIZE:
                raise ValueError(f"wrapped keys are too short ({len(wrapped)} bytes)")
            return cls(version, repo_id, Encryption.AES_256_GCM, kdf=kdf, wrapped=wrapped)
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptRepository(f"{where}: {_reason(exc)}") from None


@dataclass(frozen=True)
class OpenedKeys:
    keys: Keys
    document: KeysDocument
    source: str  # the file they came from: KEYS_FILE, or KEYS_COPY_FILE when keys was damaged


def open_keys(backend: Backend, repo_id: str, passphrase: bytes | None) -> OpenedKeys:
    """The repository's keys, from ``keys`` or, if that is missing or damaged, from ``keyscopy``.

    A fallback is logged as a warning naming the damaged file. PassphraseRequired passes through
    (the caller may prompt and try again); if neither file opens, the error says why for both.
    """
    failures: list[RepositoryError] = []
    seen: set[bytes] = set()
    for name in (KEYS_FILE, KEYS_COPY_FILE):
        try:
            content = backend.read(name)
            if content in seen:  # an identical copy fails in the same way
                continue
            seen.add(content)
            document = KeysDocument.parse(content, name)
            document.check_repository(repo_id, name)
            keys = document.unwrap(passphrase, name)
        except (CorruptRepository, WrongPassphrase) as exc:
            failures.append(exc)
            continue
        if failures:
            log.warning(
                "%s; opened the repository with its second copy %s. Rewrite both from an export: %s",
                "; ".join(map(str, failures)),
                name,
                _REWRITE,
            )
        elif document.version >= 2:
            _check_copy(backend, content)
        return OpenedKeys(keys, document, name)
    wrong = [f for f in failures if isinstance(f, WrongPassphrase)]
    damage = [str(f) for f in failures if not isinstance(f, WrongPassphrase) and str(f) != _missing(KEYS_COPY_FILE)]
    if wrong:
        raise WrongPassphrase(str(wrong[0]) + (f" ({'; '.join(damage)})" if damage else ""))
    raise CorruptRepository(
        "; ".join(map(str, failures)) + ": restore the keys with 'vmkeep key import FILE' from an exported copy"
    )


def _check_copy(backend: Backend, content: bytes) -> None:
    """Warn if ``keyscopy`` is missing or damaged while ``keys`` is fine, before both are."""
    try:
        copy = backend.read(KEYS_COPY_FILE)
        if copy != content:  # may differ legitimately (an import interrupted between the two writes)
            KeysDocument.parse(copy, KEYS_COPY_FILE)
    except CorruptRepository as exc:
        log.warning("%s: the second copy of the keys is lost; rewrite both from an export: %s", exc, _REWRITE)


def write_keys(backend: Backend, document: KeysDocument) -> None:
    """Write ``keys`` and then ``keyscopy``, each atomically and durably."""
    content = document.dump()
    backend.write(KEYS_FILE, [content])
    backend.write(KEYS_COPY_FILE, [content])


def _missing(name: str) -> str:
    return f"{name} is missing"  # Backend.read's message for a missing file


def _checksum(fields: dict[str, Any]) -> str:
    """SHA-256 over the canonical JSON of the other fields (sorted keys, no spaces)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _reason(exc: Exception) -> object:
    return exc.args[0] if isinstance(exc, KeyError) and exc.args else exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
