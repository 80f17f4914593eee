"""The repository's ``config`` file: parameters fixed at ``init``.

Parsed into a typed record and checked field by field: a wrong type, a missing or unknown field,
or an unknown format version is a CorruptRepository naming ``config`` and what is wrong.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from .exceptions import CorruptRepository
from .format import FORMAT, Encryption
from .validate import hex_id, json_document, typed

CONFIG_FILE = "config"
_REPO_ID = re.compile(r"^[0-9a-f]{32}$")

MIN_BLOCK_SIZE = 4 * 1024
MAX_BLOCK_SIZE = 64 * 1024 * 1024
DEFAULT_BLOCK_SIZE = 1024 * 1024
DEFAULT_PACK_SIZE = 32 * 1024 * 1024
DEFAULT_TREE_FANOUT = 128
DEFAULT_COMPRESSION_LEVEL = 1  # level 3 stores ~5% less for twice the CPU (bench/)


@dataclass(frozen=True)
class RepoConfig:
    repo_id: str
    block_size: int
    tree_fanout: int
    pack_size: int
    compression_level: int
    encryption: Encryption
    created: str
    version: int = FORMAT.VERSION

    @classmethod
    def new(
        cls,
        block_size: int = DEFAULT_BLOCK_SIZE,
        encrypted: bool = False,
        compression_level: int = DEFAULT_COMPRESSION_LEVEL,
        pack_size: int = DEFAULT_PACK_SIZE,
        tree_fanout: int = DEFAULT_TREE_FANOUT,
    ) -> RepoConfig:
        config = cls(
            repo_id=secrets.token_hex(16),
            block_size=block_size,
            tree_fanout=tree_fanout,
            pack_size=pack_size,
            compression_level=compression_level,
            encryption=Encryption.AES_256_GCM if encrypted else Encryption.NONE,
            created=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        )
        config.validate()
        return config

    def validate(self) -> None:
        bs = self.block_size
        if bs & (bs - 1) or not MIN_BLOCK_SIZE <= bs <= MAX_BLOCK_SIZE:
            raise ValueError(f"block size must be a power of two from 4 KiB to 64 MiB, not {bs}")
        if not 2 <= self.tree_fanout <= 65536:
            raise ValueError(f"tree fanout must be 2..65536, not {self.tree_fanout}")
        if not bs <= self.pack_size <= 1024 * 1024 * 1024:
            raise ValueError("pack size must lie between the block size and 1 GiB")
        if not 0 <= self.compression_level <= 22:
            raise ValueError("compression level must be 0 (off) to 22")
        if not isinstance(self.encryption, Encryption):
            raise ValueError(f"unknown encryption {self.encryption!r}")
        if not _REPO_ID.match(self.repo_id):
            raise ValueError(f"repo_id must be 32 hex digits, not {self.repo_id!r}")
        try:
            datetime.fromisoformat(self.created.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"created is not an ISO 8601 time: {self.created!r}") from None

    def dump(self) -> bytes:
        doc: dict[str, Any] = {"vmkeep_repository": self.version, **asdict(self)}
        del doc["version"]
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def load(cls, content: bytes, where: str = CONFIG_FILE) -> RepoConfig:
        """Parse and check ``config``; CorruptRepository says what is wrong with it.

        As for every versioned record, fields this version does not know are ignored; a wrong
        type, a missing field, a value out of range or another format version is damage.
        """
        doc = json_document(content, where)
        try:
            version = typed(doc, "vmkeep_repository", int)
            if version != FORMAT.VERSION:
                raise ValueError(f"unknown format version {version} (this vmkeep reads version {FORMAT.VERSION})")
            encryption = typed(doc, "encryption", str)
            if encryption not in set(Encryption):
                raise ValueError(f"unknown encryption {encryption!r}")
            config = cls(
                repo_id=hex_id(doc, "repo_id", 16),
                block_size=typed(doc, "block_size", int),
                tree_fanout=typed(doc, "tree_fanout", int),
                pack_size=typed(doc, "pack_size", int),
                compression_level=typed(doc, "compression_level", int),
                encryption=Encryption(encryption),
                created=typed(doc, "created", str),
                version=version,
            )
            config.validate()
        except (ValueError, KeyError, TypeError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise CorruptRepository(f"{where}: {reason}") from None
        return config
