"""Writing new blobs: frames into packs, packs made durable, then an index naming them.

The write order is the repository's crash-safety argument (docs/FORMAT.md, "Write order"):
a pack is complete and fsync'ed before any index names it, and an index is durable before
a recovery point refers to its blobs. A crash leaves, at worst, packs no index names and
index entries no point uses; both are garbage that gc removes and verify tolerates.
"""

from __future__ import annotations

import logging
import queue
import threading

from .backend import Backend
from .codec import Codec
from .format import FRAME_HEADER_SIZE, BlobType, FrameHeader, SealedKind
from .index import BlockIndex, IndexEntry, encode_index
from .locks import Lock
from .packs import PackBuilder, pack_name

INDEX_DIR = "index"
INDEX_EVERY = 50_000  # entries per index file (about 3 MB before compression)
PACK_WRITERS = 2  # one pack's fsync overlaps the next one's write
QUEUED = 2  # pieces of packs waiting for each pack writer

log = logging.getLogger(__name__)

# What the producer hands a pack writer: a pack, its next piece, and whether it is the last one.
_Piece = tuple[PackBuilder, list[bytes], bool]


class BlobWriter:
    """New blobs of one job. ``add`` is called from one thread; packs are written by two others.

    Each pack goes to one of the pack writers, round robin, and its frames follow in pieces of
    about ``packs.SEGMENT`` while it fills, so the pack is mostly on disk by the time it is
    complete; the writer then commits it. At most ``QUEUED`` pieces wait for each writer, so
    memory stays at a few pieces' worth, whatever the pack size.

    A writer is bound to the lock under which its index was read: it deduplicates only while
    that lock is held, and writes no index after it is lost. New blobs become visible to
    other jobs of this process only once an index file naming them is durable, so a job that
    fails after writing packs leaves nothing another job could deduplicate against.
    """

    def __init__(self, backend: Backend, codec: Codec, index: BlockIndex, pack_size: int, lock: Lock) -> None:
        self._backend = backend
        self._lock_held = lock
        self._codec = codec
        self._index = index
        self._pack_size = pack_size
        self._filling: dict[BlobType, tuple[PackBuilder, queue.Queue[_Piece | None]]] = {}
        self._begun: list[PackBuilder] = []  # packs begun and not yet committed (aborted at close)
        self._pending: set[bytes] = set()
        self._unindexed: dict[str, list[IndexEntry]] = {}
        self._unindexed_count = 0
        self._queues: list[queue.Queue[_Piece | None]] = [queue.Queue(maxsize=QUEUED) for _ in range(PACK_WRITERS)]
        self._turn = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # guards the begun packs, the unindexed entries and index writes
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"vmkeep-pack-writer-{n}", daemon=True)
            for n, q in enumerate(self._queues)
        ]
        for thread in self._threads:
            thread.start()

    # -- producer side ----------------------------------------------------------------------

    def known(self, blob_id: bytes) -> bool:
        """True if the repository already has an intact copy of this blob, or this job added it."""
        if not self._lock_held.held:
            self._lock_held.check()
        return blob_id in self._pending or blob_id in self._index

    def add(self, frame: bytes) -> bool:
        """Queue one encoded frame; False (and nothing written) if its blob is already known."""
        self._raise_error()
        header = FrameHeader.unpack(frame[:FRAME_HEADER_SIZE], "new frame")
        if self.known(header.blob_id):
            return False
        self._pending.add(header.blob_id)
        filling = self._filling.get(header.blob_type)
        if filling is None:
            filling = self._filling[header.blob_type] = (PackBuilder(self._pack_size), self._queues[self._turn])
            self._turn = (self._turn + 1) % PACK_WRITERS
            with self._lock:
                self._begun.append(filling[0])
        builder, pieces = filling
        builder.add(header, frame)
        if builder.full:
            del self._filling[header.blob_type]
            self._put(pieces, (builder, builder.take(), True))
        elif builder.spilling:
            self._put(pieces, (builder, builder.take(), False))
        return True

    def add_tree(self, raw: bytes) -> bytes:
        """Store a tree node (if new) and return its id."""
        blob_id = self._codec.blob_id(raw)
        if not self.known(blob_id):
            self.add(self._codec.encode_frame(BlobType.TREE, blob_id, raw))
        return blob_id

    def flush(self) -> None:
        """Make everything added so far durable and indexed. Call before committing a point."""
        for blob_type in BlobType:
            filling = self._filling.pop(blob_type, None)
            if filling is not None:
                builder, pieces = filling
                self._put(pieces, (builder, builder.take(), True))
        for pieces in self._queues:
            pieces.join()  # every pack is durable: only now may the last index name them
        self._raise_error()
        self._lock_held.check()
        with self._lock:
            self._write_index()

    def close(self) -> None:
        """Stop the pack writers. Blobs added since the last flush are dropped, their packs removed."""
        for pieces, thread in zip(self._queues, self._threads, strict=True):
            if thread.is_alive():
                pieces.put(None)
        for thread in self._threads:
            thread.join()
        self._filling.clear()
        with self._lock:
            begun, self._begun = self._begun, []
        for builder in begun:
            builder.abort()

    def _put(self, pieces: queue.Queue[_Piece | None], piece: _Piece) -> None:
        self._raise_error()
        pieces.put(piece)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- pack writer threads ----------------------------------------------------------------

    def _run(self, pieces: queue.Queue[_Piece | None]) -> None:
        while True:
            item = pieces.get()
            try:
                if item is None:
                    return
                if self._error is None:  # after an error, drain so the producer never blocks
                    builder, chunks, last = item
                    builder.write(self._backend, chunks)
                    if last:
                        self._commit_pack(builder)
            except BaseException as exc:
                self._error = exc
            finally:
                pieces.task_done()

    def _commit_pack(self, builder: PackBuilder) -> None:
        name = builder.commit(defer_sync=True)  # durable at backend.sync()
        with self._lock:
            self._begun.remove(builder)
            self._unindexed[name] = builder.entries
            self._unindexed_count += len(builder.entries)
            if self._unindexed_count >= INDEX_EVERY:  # names only packs already durable
                self._write_index()

    def _write_index(self) -> None:
        """Write an index naming the packs written so far. Caller holds the lock."""
        if not self._unindexed:
            return
        self._backend.sync()  # the packs' names are durable before an index names them
        self._lock_held.check()
        name = write_index_file(self._backend, self._codec, self._unindexed)
        self._index.add_file(name, self._unindexed)
        self._unindexed = {}
        self._unindexed_count = 0


def write_index_file(backend: Backend, codec: Codec, packs: dict[str, list[IndexEntry]]) -> str:
    """Write one index file naming ``packs`` (which must already be durable); return its name."""
    sealed = codec.seal(SealedKind.INDEX, encode_index(packs))
    name = f"{INDEX_DIR}/{content_name(sealed)}"
    backend.write(name, [sealed])
    return name


def write_index_files(
    backend: Backend, codec: Codec, packs: dict[str, list[IndexEntry]], written: list[str] | None = None
) -> list[str]:
    """Write index files naming ``packs`` (durable already), ``INDEX_EVERY`` entries or so each.

    Each name is also appended to ``written`` as soon as its file is durable, so a caller that
    fails half-way knows what to remove.
    """
    names: list[str] = [] if written is None else written
    batch: dict[str, list[IndexEntry]] = {}
    count = 0
    for pack, entries in sorted(packs.items()):
        batch[pack] = entries
        count += len(entries)
        if count >= INDEX_EVERY:
            names.append(write_index_file(backend, codec, batch))
            batch, count = {}, 0
    if batch:
        names.append(write_index_file(backend, codec, batch))
    return names


def content_name(data: bytes) -> str:
    """Index and point files are named by the unkeyed BLAKE3-256 of their content."""
    return pack_name([data])
