"""The repository's ``config`` file: parameters fixed at ``init``."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from .exceptions import NotARepository
from .format import FORMAT
from .keys import ENCRYPTION_AES_GCM, ENCRYPTION_NONE

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
    encryption: str
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
            encryption=ENCRYPTION_AES_GCM if encrypted else ENCRYPTION_NONE,
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
        if self.encryption not in (ENCRYPTION_NONE, ENCRYPTION_AES_GCM):
            raise ValueError(f"unknown encryption {self.encryption!r}")

    def dump(self) -> bytes:
        doc: dict[str, Any] = {"vmkeep_repository": self.version, **asdict(self)}
        del doc["version"]
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def load(cls, content: bytes, where: str) -> RepoConfig:
        try:
            doc = json.loads(content)
            version = doc.pop("vmkeep_repository")
            config = cls(version=version, **doc)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise NotARepository(f"{where} is not a vmkeep repository config") from None
        if version != FORMAT.VERSION:
            raise NotARepository(f"{where}: unsupported repository format version {version}")
        try:
            config.validate()
        except ValueError as exc:
            raise NotARepository(f"{where}: {exc}") from None
        return config
