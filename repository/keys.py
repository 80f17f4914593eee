"""The repository's secret keys, and their wrapping by a passphrase.

Two keys of 32 bytes each:
- the *id key* keys BLAKE3 block ids, so ids reveal nothing about content to someone who
  can list the repository, and a hostile guest cannot craft colliding blocks;
- the *data key* encrypts frames and sealed files with AES-256-GCM (encrypted repositories only).

In an unencrypted repository the id key is stored in clear in ``keys``. In an encrypted one both
keys are wrapped with AES-256-GCM under a key derived from the passphrase by Argon2id.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from .exceptions import CorruptRepository, PassphraseRequired, WrongPassphrase
from .format import FORMAT

ENCRYPTION_NONE = "none"
ENCRYPTION_AES_GCM = "aes-256-gcm"
_WRAP_AAD = b"vmkeep keys v1"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters (RFC 9106's second recommended option, 64 MiB)."""

    salt: bytes
    iterations: int = 3
    memory_kib: int = 64 * 1024
    lanes: int = 4

    def derive(self, passphrase: bytes) -> bytes:
        return Argon2id(
            salt=self.salt,
            length=FORMAT.KEY_SIZE,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        ).derive(passphrase)

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": "argon2id",
            "salt": _b64(self.salt),
            "iterations": self.iterations,
            "memory_kib": self.memory_kib,
            "lanes": self.lanes,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> KdfParams:
        if obj.get("algorithm") != "argon2id":
            raise CorruptRepository(f"keys: unknown KDF {obj.get('algorithm')!r}")
        return cls(
            salt=_unb64(obj["salt"]),
            iterations=int(obj["iterations"]),
            memory_kib=int(obj["memory_kib"]),
            lanes=int(obj["lanes"]),
        )


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


def dump_keys(keys: Keys, passphrase: bytes | None) -> bytes:
    """The content of the ``keys`` file."""
    if keys.data_key is None:
        doc: dict[str, Any] = {"version": 1, "encryption": ENCRYPTION_NONE, "id_key": _b64(keys.id_key)}
    else:
        if not passphrase:
            raise PassphraseRequired("an encrypted repository needs a passphrase")
        kdf = KdfParams(salt=os.urandom(16))
        nonce = os.urandom(FORMAT.NONCE_SIZE)
        secret = json.dumps({"id_key": _b64(keys.id_key), "data_key": _b64(keys.data_key)}).encode()
        wrapped = nonce + AESGCM(kdf.derive(passphrase)).encrypt(nonce, secret, _WRAP_AAD)
        doc = {"version": 1, "encryption": ENCRYPTION_AES_GCM, "kdf": kdf.to_json(), "wrapped": _b64(wrapped)}
    return (json.dumps(doc, indent=2) + "\n").encode()


def load_keys(content: bytes, passphrase: bytes | None) -> Keys:
    """Parse the ``keys`` file, unwrapping with the passphrase when encrypted."""
    try:
        doc = json.loads(content)
        encryption = doc["encryption"]
        if encryption == ENCRYPTION_NONE:
            return Keys(_unb64(doc["id_key"]), None)
        if encryption != ENCRYPTION_AES_GCM:
            raise CorruptRepository(f"keys: unknown encryption {encryption!r}")
        kdf = KdfParams.from_json(doc["kdf"])
        wrapped = _unb64(doc["wrapped"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptRepository(f"keys file is unreadable: {exc}") from exc
    if not passphrase:
        raise PassphraseRequired("the repository is encrypted: set VMKEEP_PASSPHRASE or pass --passphrase-file")
    nonce, sealed = wrapped[: FORMAT.NONCE_SIZE], wrapped[FORMAT.NONCE_SIZE :]
    try:
        secret = AESGCM(kdf.derive(passphrase)).decrypt(nonce, sealed, _WRAP_AAD)
    except InvalidTag:
        raise WrongPassphrase("wrong passphrase for this repository") from None
    inner = json.loads(secret)
    return Keys(_unb64(inner["id_key"]), _unb64(inner["data_key"]))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
