"""Opening and creating repositories; reading blobs, indexes and recovery points."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

from .backend import Backend, LocalBackend
from .codec import Codec
from .config import CONFIG_FILE, RepoConfig
from .exceptions import (
    AmbiguousPoint,
    BlockMissing,
    CorruptRepository,
    NotARepository,
    PointNotFound,
    RepositoryError,
    RepositoryExists,
    RepositoryLocked,
)
from .format import SealedKind
from .index import BlockIndex, IndexEntry, decode_index
from .keys import Keys, KeysDocument, open_keys, write_keys
from .locks import LOCK_DIR, Lock
from .packs import PACK_DIR, pack_path
from .points import POINT_DIR, RecoveryPoint
from .tree import Geometry, iter_block_ids, leaf_ids
from .writer import INDEX_DIR, BlobWriter, content_name

SUBDIRS = (PACK_DIR, INDEX_DIR, POINT_DIR, LOCK_DIR, "tmp")

log = logging.getLogger(__name__)


class Repository:
    """A repository opened with its keys. Not bound to any hypervisor."""

    def __init__(self, backend: Backend, config: RepoConfig, keys: Keys, location: str) -> None:
        self.backend = backend
        self.config = config
        self.codec = Codec(keys, config.compression_level)
        self.location = location
        self._index: BlockIndex | None = None
        self.keys_document: KeysDocument | None = None  # as read by open(): what `key export` writes
        self.locking = True  # False (--no-lock): shared locks are not written, exclusive ones refused

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path, config: RepoConfig, passphrase: bytes | None) -> Repository:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            if (path / CONFIG_FILE).exists():
                raise RepositoryExists(f"{path} already holds a repository")
            raise RepositoryExists(f"{path} exists and is not an empty directory")
        keys = Keys.generate(encrypted=config.encryption != "none")
        document = KeysDocument.wrap(keys, passphrase, config.repo_id)
        try:
            path.mkdir(parents=True, exist_ok=True)
            for sub in SUBDIRS:
                (path / sub).mkdir(exist_ok=True)
        except OSError as exc:
            raise RepositoryError(f"cannot create {path}: {exc.strerror}") from None
        backend = LocalBackend(path)
        write_keys(backend, document)  # keys and its copy
        backend.write(CONFIG_FILE, [config.dump()])  # last: a repository exists once it has a config
        return cls(backend, config, keys, str(path))

    @classmethod
    def open(cls, path: Path, passphrase: bytes | None, *, lock: bool = True) -> Repository:
        """Open for reading and writing; writes nothing itself, so it works on a read-only mount.

        ``lock=False`` (``--no-lock``) opens without lock files, for reading only.
        """
        if not (path / CONFIG_FILE).is_file():
            if not path.exists():
                raise NotARepository(f"{path} does not exist")
            raise NotARepository(f"{path} is not a vmkeep repository (no config file)")
        backend = LocalBackend(path)
        config = RepoConfig.load(backend.read(CONFIG_FILE))
        opened = open_keys(backend, config.repo_id, passphrase)
        for sub in SUBDIRS:  # an old copy may lack an empty directory; created when we may write
            if not (path / sub).is_dir():
                try:
                    (path / sub).mkdir()
                except OSError as exc:
                    log.debug("cannot create %s: %s", path / sub, exc.strerror)
        repo = cls(backend, config, opened.keys, str(path))
        repo.keys_document, repo.locking = opened.document, lock
        return repo

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(self, operation: str, exclusive: bool = False) -> Lock | nullcontext[None]:
        if not self.locking:
            if exclusive:
                raise RepositoryLocked(f"{operation} needs the exclusive lock and cannot run with --no-lock")
            return nullcontext()
        try:
            return Lock(self.backend, exclusive, operation).acquire()
        except RepositoryLocked:
            raise
        except RepositoryError as exc:  # read-only or full: say what still works
            hint = "" if exclusive else "; restore, verify and points can run without a lock: --no-lock"
            raise type(exc)(f"cannot take a lock: {exc}{hint}") from None

    # -- index ------------------------------------------------------------------------------

    def index_files(self) -> list[str]:
        return [f.name for f in self.backend.list(INDEX_DIR)]

    def read_index_file(self, name: str) -> dict[str, list[IndexEntry]]:
        data = self.backend.read(name)
        self._check_name(name, data)
        return decode_index(self.codec.unseal(SealedKind.INDEX, data, name), name)

    @property
    def index(self) -> BlockIndex:
        if self._index is None:
            self._index = BlockIndex.build(self.read_index_file(n) for n in self.index_files())
        return self._index

    def reload_index(self) -> BlockIndex:
        self._index = None
        return self.index

    def writer(self) -> BlobWriter:
        return BlobWriter(self.backend, self.codec, self.index, self.config.pack_size)

    # -- blobs ------------------------------------------------------------------------------

    def read_blob(self, blob_id: bytes) -> bytes:
        location = self.index.lookup(blob_id)
        if location is None:
            raise BlockMissing(f"block {blob_id.hex()[:16]} is referenced but in no index")
        entry = location.entry
        where = f"pack {location.pack[:12]}@{entry.offset}"
        frame = self.backend.read(pack_path(location.pack), entry.offset, entry.length)
        return self.codec.decode_frame(frame, where, expected_id=blob_id)

    # -- recovery points --------------------------------------------------------------------

    def save_point(self, point: RecoveryPoint) -> str:
        """Write a point file; its blobs must already be durable and indexed (BlobWriter.flush)."""
        sealed = self.codec.seal(SealedKind.POINT, point.to_payload())
        point.id = content_name(sealed)
        self.backend.write(f"{POINT_DIR}/{point.id}", [sealed])
        return point.id

    def point_ids(self) -> list[str]:
        return [f.name.rsplit("/", 1)[1] for f in self.backend.list(POINT_DIR)]

    def load_point(self, point_id: str) -> RecoveryPoint:
        name = f"{POINT_DIR}/{point_id}"
        data = self.backend.read(name)
        self._check_name(name, data)
        return RecoveryPoint.from_payload(self.codec.unseal(SealedKind.POINT, data, name), point_id)

    def points(self, vm: str | None = None) -> list[RecoveryPoint]:
        """All recovery points (of one VM if given), oldest first."""
        points = [self.load_point(pid) for pid in self.point_ids()]
        if vm is not None:
            points = [p for p in points if p.vm == vm]
        return sorted(points, key=lambda p: (p.time, p.id))

    def find_point(self, ref: str) -> RecoveryPoint:
        """A point by id or unique id prefix; ``latest`` or ``latest:VM`` for the newest."""
        if ref == "latest" or ref.startswith("latest:"):
            vm = ref.partition(":")[2] or None
            points = self.points(vm)
            if not points:
                raise PointNotFound("the repository holds no recovery point" + (f" of VM {vm!r}" if vm else ""))
            return points[-1]
        matches = [pid for pid in self.point_ids() if pid.startswith(ref.lower())]
        if not ref or not matches:
            raise PointNotFound(f"no recovery point {ref!r}")
        if len(matches) > 1:
            raise AmbiguousPoint(f"{ref!r} matches {len(matches)} recovery points; give more digits")
        return self.load_point(matches[0])

    def delete_point(self, point_id: str) -> None:
        self.backend.delete(f"{POINT_DIR}/{point_id}")

    # -- trees ------------------------------------------------------------------------------

    def geometry(self, capacity: int) -> Geometry:
        return Geometry.of(capacity, self.config.block_size, self.config.tree_fanout)

    def leaf_ids(self, root: bytes, capacity: int) -> list[bytes]:
        return leaf_ids(root, self.geometry(capacity), self.read_blob)

    def block_ids(self, root: bytes, capacity: int) -> Iterator[bytes]:
        return iter_block_ids(root, self.geometry(capacity), self.read_blob)

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    def _check_name(name: str, data: bytes) -> None:
        if content_name(data) != name.rsplit("/", 1)[1]:
            raise CorruptRepository(f"{name}: content does not match its name")
