"""Opening and creating repositories; reading blobs, indexes and recovery points."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from .backend import Backend, LocalBackend
from .codec import Codec
from .config import CONFIG_FILE, RepoConfig
from .damage import DAMAGE_DIR, DamageRecord
from .exceptions import (
    AmbiguousPoint,
    BlockMissing,
    CorruptRepository,
    FileMissing,
    LockLost,
    NotARepository,
    PointNotFound,
    RepositoryError,
    RepositoryExists,
    RepositoryLocked,
)
from .format import SealedKind
from .index import BlockIndex, IndexEntry, decode_index
from .kdf import KEYS_FILE
from .keys import KEYS_COPY_FILE, Keys, KeysDocument, open_keys, write_keys
from .locks import LOCK_DIR, Lock
from .packs import PACK_DIR, pack_path
from .points import POINT_DIR, RecoveryPoint
from .reserve import RESERVE_FILE, ensure_reserve
from .tree import Geometry, iter_block_ids, leaf_ids
from .writer import INDEX_DIR, BlobWriter, content_name

SUBDIRS = (PACK_DIR, INDEX_DIR, POINT_DIR, LOCK_DIR, DAMAGE_DIR, "tmp")

log = logging.getLogger(__name__)


@dataclass
class PointScan:
    """Every point file: the readable ones, oldest first, and the damaged ones with the reason."""

    points: list[RecoveryPoint] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # point id -> what is wrong


class Repository:
    """A repository opened with its keys. Not bound to any hypervisor."""

    def __init__(self, backend: Backend, config: RepoConfig, keys: Keys, location: str) -> None:
        self.backend = backend
        self.config = config
        self.codec = Codec(keys, config.compression_level)
        self.location = location
        self._index: BlockIndex | None = None
        self._locks: list[Lock] = []
        self.keys_document: KeysDocument | None = None  # as read by open(): what `key export` writes
        self.locking = True  # False (--no-lock): no lock files; read_lock() is then a no-op, lock() refused

    # -- lifecycle --------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path, config: RepoConfig, passphrase: bytes | None) -> Repository:
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            if (path / CONFIG_FILE).exists():
                raise RepositoryExists(f"{path} already holds a repository")
            if not _left_by_interrupted_init(path):
                raise RepositoryExists(f"{path} exists and is not an empty directory")
            log.warning("%s holds only what an interrupted 'vmkeep init' left: initialising it again", path)
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
        ensure_reserve(backend)  # lets forget and gc start on a full file system (reserve.py)
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

    def lock(self, operation: str, exclusive: bool = False) -> Lock:
        """Take a lock; the cached index is re-read if the repository changed since it was built.

        Deduplicating against an index read under an earlier lock is how a long-lived handle
        would reuse blocks that gc deleted in between: index files are immutable and named by
        content, so comparing their names with a fresh listing is enough to know.
        """
        if not self.locking:
            raise RepositoryLocked(f"{operation} needs a lock and cannot run with --no-lock")
        try:
            lock = Lock(self.backend, exclusive, operation, on_release=self._released).acquire()
        except RepositoryLocked:
            raise
        except RepositoryError as exc:  # read-only or full: say what still works
            hint = "" if exclusive else "; restore, verify and points can run without a lock: --no-lock"
            raise type(exc)(f"cannot take a lock: {exc}{hint}") from None
        self._locks.append(lock)
        if self._index is not None and self._index_changed():
            log.debug("the repository changed since its index was read: reloading it")
            self._index = None
        return lock

    def read_lock(self, operation: str) -> AbstractContextManager[object]:
        """A shared lock for a reader, or nothing at all when opened with ``--no-lock``."""
        return self.lock(operation) if self.locking else nullcontext()

    def _released(self, lock: Lock) -> None:
        if lock in self._locks:
            self._locks.remove(lock)

    def held_lock(self) -> Lock:
        """A lock this handle holds; LockLost if there is none (nothing may be written without one)."""
        for lock in self._locks:
            if lock.held:
                return lock
        for lock in self._locks:
            lock.check()  # says why it was lost
        raise LockLost("no repository lock is held: take one (Repository.lock) before writing")

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
            self._index = self._load_index()
        return self._index

    def reload_index(self) -> BlockIndex:
        self._index = None
        return self.index

    def _load_index(self) -> BlockIndex:
        """Every readable index file, with the damage records applied.

        A damaged index file costs only the blobs it names (they look absent, so backups store
        them again and restores that need them fail naming the file); it is reported, and
        ``repair`` rebuilds the index from the packs.
        """
        names = self.index_files()
        damaged: dict[str, str] = {}

        def readable() -> Iterator[dict[str, list[IndexEntry]]]:
            for name in names:
                try:
                    yield self.read_index_file(name)
                except CorruptRepository as exc:
                    log.warning("%s; its blobs are treated as absent until 'vmkeep repair'", exc)
                    damaged[name] = str(exc)

        index = BlockIndex.build(readable())
        index.files = set(names)
        index.damaged_files = damaged
        index.damage_files = set(self.damage_files())
        for name in sorted(index.damage_files):
            try:
                record = self.read_damage_record(name)
            except CorruptRepository as exc:
                log.warning("%s (ignored)", exc)
                continue
            for copy in record.copies:
                index.mark_bad(copy.pack, copy.offset, copy.why)
            index.missing.update(record.missing)
        return index

    def adopt_index(self, index: BlockIndex) -> None:
        """Use ``index`` (built in memory by repair) until the next reload."""
        index.files = set(self.index_files())
        index.damage_files = set(self.damage_files())
        self._index = index

    def _index_changed(self) -> bool:
        index = self._index
        if index is None:
            return True
        return set(self.index_files()) != index.files or set(self.damage_files()) != index.damage_files

    def writer(self) -> BlobWriter:
        """A writer for new blobs, bound to a lock this handle holds (LockLost without one)."""
        return BlobWriter(self.backend, self.codec, self.index, self.config.pack_size, self.held_lock())

    # -- blobs ------------------------------------------------------------------------------

    def read_blob(self, blob_id: bytes) -> bytes:
        """A blob's raw content, from the first of its copies that passes every check."""
        try:
            return self._read_blob(blob_id)
        except CorruptRepository:
            if not self._index_changed():
                raise
        # Read without a lock (or a handle kept across locks) while gc rewrote the repository.
        self.reload_index()
        return self._read_blob(blob_id)

    def _read_blob(self, blob_id: bytes) -> bytes:
        copies = self.index.copies(blob_id)
        if not copies:
            hint = ""
            if self.index.damaged_files:
                names = ", ".join(sorted(self.index.damaged_files))
                hint = f" (index file(s) {names} are damaged: run 'vmkeep repair')"
            raise BlockMissing(f"block {blob_id.hex()[:16]} is referenced but in no index{hint}")
        errors: list[CorruptRepository] = []
        for location in copies:
            entry = location.entry
            where = f"pack {location.pack[:12]}@{entry.offset}"
            try:
                frame = self.backend.read(pack_path(location.pack), entry.offset, entry.length)
                data = self.codec.decode_frame(frame, where, expected_id=blob_id)
            except CorruptRepository as exc:
                errors.append(exc)
                continue
            if errors:
                log.warning("block %s: used another copy, since %s", blob_id.hex()[:16], errors[0])
            return data
        if len(errors) == 1:
            raise errors[0]
        raise CorruptRepository(
            f"block {blob_id.hex()[:16]}: all {len(errors)} copies are damaged: " + "; ".join(map(str, errors))
        )

    # -- recovery points --------------------------------------------------------------------

    def save_point(self, point: RecoveryPoint) -> str:
        """Write a point file; its blobs must already be durable and indexed (BlobWriter.flush).

        Only under a lock still held: after a lost lock, gc may have removed what it references.
        """
        self.held_lock().check()
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

    def scan_points(self) -> PointScan:
        """Every point file, readable or not: one damaged file never hides the others."""
        scan = PointScan()
        for pid in self.point_ids():
            try:
                scan.points.append(self.load_point(pid))
            except FileMissing:  # forgotten by another process since it was listed
                continue
            except CorruptRepository as exc:
                scan.damaged[pid] = str(exc)
        scan.points.sort(key=lambda p: (p.time, p.id))
        return scan

    def points(self, vm: str | None = None) -> list[RecoveryPoint]:
        """The readable recovery points (of one VM if given), oldest first; damaged ones are logged."""
        scan = self.scan_points()
        for why in scan.damaged.values():
            log.warning("skipping a damaged recovery point: %s", why)
        if vm is None:
            return scan.points
        return [p for p in scan.points if p.vm == vm]

    def find_point(self, ref: str) -> RecoveryPoint:
        """A point by id or unique id prefix; ``latest:VM`` for the newest of a VM, ``latest`` if all are of one."""
        if ref == "latest" or ref.startswith("latest:"):
            vm = ref.partition(":")[2] or None
            points = self.points(vm)
            if not points:
                raise PointNotFound("the repository holds no recovery point" + (f" of VM {vm!r}" if vm else ""))
            names = sorted({p.vm for p in points})
            if len(names) > 1:
                raise AmbiguousPoint(
                    f"'latest' is ambiguous: the repository holds points of {len(names)} VMs "
                    f"({', '.join(names)}); say latest:VM"
                )
            return points[-1]
        return self.load_point(self.point_id(ref))

    def point_id(self, ref: str) -> str:
        """The id that is, or alone starts with, ``ref``; found by name, the file is not read."""
        matches = [pid for pid in self.point_ids() if pid.startswith(ref.lower())]
        if not ref or not matches:
            raise PointNotFound(f"no recovery point {ref!r}")
        if len(matches) > 1:
            raise AmbiguousPoint(f"{ref!r} matches {len(matches)} recovery points; give more digits")
        return matches[0]

    def delete_point(self, point_id: str) -> None:
        self.backend.delete(f"{POINT_DIR}/{point_id}")

    # -- damage records ---------------------------------------------------------------------

    def damage_files(self) -> list[str]:
        return [f.name for f in self.backend.list(DAMAGE_DIR)]

    def read_damage_record(self, name: str) -> DamageRecord:
        data = self.backend.read(name)
        self._check_name(name, data)
        return DamageRecord.from_payload(self.codec.unseal(SealedKind.DAMAGE, data, name), name)

    def write_damage_record(self, record: DamageRecord) -> str:
        """Record damaged copies and missing blobs; applied to every index loaded from now on."""
        sealed = self.codec.seal(SealedKind.DAMAGE, record.to_payload())
        name = f"{DAMAGE_DIR}/{content_name(sealed)}"
        self.backend.write(name, [sealed])
        return name

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


def _left_by_interrupted_init(path: Path) -> bool:
    """True if ``path`` holds nothing but what ``init`` writes before ``config`` (its last file).

    A repository exists once it has a config; before that, init has made the directories
    (empty, but for files being written in ``tmp/``), and perhaps keys, their copy and the
    reserve. A directory holding anything else is someone's data, and init refuses it.
    """
    top_files = {KEYS_FILE, KEYS_COPY_FILE, RESERVE_FILE}
    for entry in path.iterdir():
        if entry.is_file() and not entry.is_symlink() and entry.name in top_files:
            continue
        if not entry.is_dir() or entry.is_symlink() or entry.name not in SUBDIRS:
            return False
        for inner in entry.iterdir():
            if not (entry.name == "tmp" and inner.is_file() and inner.name.endswith(".tmp")):
                return False
    return True
