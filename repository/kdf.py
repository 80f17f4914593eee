"""The passphrase's key derivation: Argon2id, its parameters, and starting it before it is needed.

Argon2id takes 0.1-0.3 s of a command's start-up on purpose, and it releases the GIL. So a
command begins it as soon as its arguments are parsed (:func:`start_deriving`), on a thread,
and loads its modules meanwhile; opening the repository then takes the result once
(:meth:`KdfParams.derive`). This module is kept apart from keys.py, and imports only what that
early start needs (``cryptography`` itself is imported by the deriving thread), so that the
derivation starts 20-25 ms sooner: the parameters are a ``NamedTuple`` rather than a dataclass
for the same reason. keys.py checks the whole ``keys`` document, checksum included, before
anything is unwrapped; the early start only reads the parameters, within the same bounds.
"""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any, NamedTuple

from .validate import base64_field, typed

KEYS_FILE = "keys"  # the repository's keys document (keys.py), which holds the parameters
WRAP_KEY_SIZE = 32  # the derived key wraps the repository's keys with AES-256-GCM
SALT_SIZE = 16


class KdfParams(NamedTuple):
    """Argon2id parameters (RFC 9106's second recommended option, 64 MiB), as ``keys`` records them."""

    salt: bytes
    iterations: int = 3
    memory_kib: int = 64 * 1024
    lanes: int = 4

    def derive(self, passphrase: bytes) -> bytes:
        """The wrapping key: taken from a derivation ``start_deriving`` began, else computed now."""
        with _started_lock:
            started = _started.pop((self, passphrase), None)
        if started is not None:
            key = started.wait()
            if key is not None:
                return key
            # The early derivation failed: derive again here, where an error is raised as usual.
        return self.compute(passphrase)

    def compute(self, passphrase: bytes) -> bytes:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        with _argon2_lock:  # one derivation at a time in a process: see _argon2_lock
            return Argon2id(
                salt=self.salt,
                length=WRAP_KEY_SIZE,
                iterations=self.iterations,
                lanes=self.lanes,
                memory_cost=self.memory_kib,
            ).derive(passphrase)

    def to_json(self) -> dict[str, Any]:
        return {
            "algorithm": "argon2id",
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "iterations": self.iterations,
            "memory_kib": self.memory_kib,
            "lanes": self.lanes,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> KdfParams:
        """Checked KDF parameters; ValueError, TypeError or KeyError say which is wrong."""
        if typed(doc, "algorithm", str) != "argon2id":
            raise ValueError(f"unknown KDF {doc['algorithm']!r}")
        params = cls(
            salt=base64_field(doc, "salt", SALT_SIZE),
            iterations=_integer(doc, "iterations", 1, 1000),
            memory_kib=_integer(doc, "memory_kib", 8, 16 * 1024 * 1024),
            lanes=_integer(doc, "lanes", 1, 255),
        )
        if params.memory_kib < 8 * params.lanes:
            raise ValueError("memory_kib is under 8 per lane")
        return params


def _integer(doc: dict[str, Any], key: str, low: int, high: int) -> int:
    value = typed(doc, key, int)
    if not low <= value <= high:
        raise ValueError(f"{key} is {value}, not from {low} to {high}")
    return value


# Two Argon2id derivations running at once in one process never return (seen with cryptography
# 50.0.2 and its OpenSSL 4.0.3: both threads wait forever inside derive()), and each one wants
# 64 MiB and a core anyway. So derivations take turns, whoever starts them: the daemon opening two
# repositories, a fleet worker's threads, or a command and its early derivation (start_deriving).
_argon2_lock = threading.Lock()


class _Derivation:
    """A key being derived on a thread, waited for once by whoever opens the repository."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._key: bytes | None = None

    def run(self, params: KdfParams, passphrase: bytes) -> None:
        try:
            self._key = params.compute(passphrase)
        except Exception:
            self._key = None
        finally:
            self._done.set()

    def wait(self) -> bytes | None:
        self._done.wait()
        return self._key


# Derivations begun early, each taken once by KdfParams.derive: a process-local hand-over, not a
# cache; nothing derived is kept once it was used.
_started: dict[tuple[KdfParams, bytes], _Derivation] = {}
_started_lock = threading.Lock()


def start_deriving(repository: Path, passphrase: bytes) -> None:
    """Begin deriving the wrapping key of the repository at ``repository`` on a thread, and return.

    Best effort: an unreadable file, one without (valid) Argon2id parameters (an unencrypted
    repository, damage) or an empty passphrase starts nothing, and opening the repository reads
    and checks the file as always; a wrong passphrase fails there as always.
    """
    if not passphrase:
        return
    try:
        doc = json.loads((repository / KEYS_FILE).read_bytes())
        params = KdfParams.from_json(doc["kdf"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    derivation = _Derivation()
    with _started_lock:
        if (params, passphrase) in _started:
            return
        _started[(params, passphrase)] = derivation
    threading.Thread(target=derivation.run, args=(params, passphrase), name="vmkeep-kdf", daemon=True).start()
