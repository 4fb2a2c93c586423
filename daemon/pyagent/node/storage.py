"""The daemon's storage handle: makes the cores' ``WriteBatch`` values durable, with group commit.

A core returns write batches in ``Ready.writes``; the owner task ``submit``s them here, in order, and
never waits for the disk itself. One writer task (``run``) takes everything queued since its last write,
hands it to the Rust store as ONE engine write (one fsync when any batch asks for it) on a worker
thread, and then reports each batch to ``on_persisted`` in submission order. While one write is on disk
the next batches pile up, so many writers share one fsync: that is group commit, and it is what makes
256 concurrent writers cost about as many fsyncs as one.

Bounds (every queue is bounded):
- ``pending`` counts batches submitted and not yet reported. The owner keeps it below its own limit
  with ``await wait_below(limit)`` before it takes new work; that wait is the backpressure. ``submit``
  itself never blocks, and raises ``LocalProtocolError`` past ``pending_max``: going past it is a bug in
  the owner, not a reason to block.
- One engine write takes at most ``write_batches_max`` batches and about ``write_bytes_max`` bytes, so
  a burst cannot build one unbounded write.

Failure is fatal. A storage error (a failed fsync, a full disk, a damaged file) or a batch the engine
refuses (a log append that leaves a hole: a core's bug) logs one line on ``pyagent.storage`` and raises
out of ``run``, which stops the daemon. A batch is never dropped silently: either ``on_persisted``
reports it, or the daemon stops and recovery says what is on disk.

Durability (``proto/storage.py``): ``sync=True`` is fsync'd before it is reported; ``sync=False`` is
written to the kernel before it is reported, so it survives a crash of the process but maybe not a
power loss.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from pyagent._core import StorageError, Store
from pyagent.errors import LocalProtocolError
from pyagent.proto.storage import (
    Delete,
    DeleteRange,
    LogAppend,
    LogCompact,
    LogTruncate,
    Put,
    WriteBatch,
)

logger = logging.getLogger("pyagent.storage")

STORE_DIR_NAME = "store"
PENDING_MAX = 65_536
WRITE_BATCHES_MAX = 4_096
WRITE_BYTES_MAX = 64 * 1024 * 1024

# Op codes of the binding (`pyagent._core.Store.write`).
_PUT, _DELETE, _DELETE_RANGE, _LOG_APPEND, _LOG_TRUNCATE, _LOG_COMPACT = range(6)

COUNTER_NAMES = ("storage_batches", "storage_writes", "storage_fsyncs", "storage_bytes")


class StoreReader:
    """``StorageReader`` (``proto/storage.py``) over one component's namespace of the store."""

    def __init__(self, store: Store, component: str) -> None:
        self._store = store
        self._component = component

    def get(self, key: bytes) -> bytes | None:
        return self._store.get(self._component, key)

    def scan(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        return self._store.scan(self._component, start, end, limit)

    def log_bounds(self, log: str) -> tuple[int, int] | None:
        return self._store.log_bounds(self._component, log)

    def log_entries(self, log: str, lo: int, hi: int) -> list[bytes]:
        return self._store.log_entries(self._component, log, lo, hi)


class StorageHandle:
    """The store at ``<home>/store``, its readers and its group-commit writer (see the module doc)."""

    def __init__(
        self,
        home: Path | str,
        *,
        pending_max: int = PENDING_MAX,
        write_batches_max: int = WRITE_BATCHES_MAX,
        write_bytes_max: int = WRITE_BYTES_MAX,
    ) -> None:
        if pending_max < 1 or write_batches_max < 1 or write_bytes_max < 1:
            raise ValueError("pending_max, write_batches_max and write_bytes_max must be positive")
        self.path = Path(home) / STORE_DIR_NAME
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._store = Store(os.fspath(self.path))
        self.recovered: bool = not self._store.is_empty()
        self.pending_max = pending_max
        self.write_batches_max = write_batches_max
        self.write_bytes_max = write_bytes_max
        self._queue: deque[WriteBatch] = deque()
        self._pending = 0
        self._failed: BaseException | None = None
        self._queued = trio.lowlevel.ParkingLot()  # the writer waits here for work
        self._drained = trio.lowlevel.ParkingLot()  # wait_below waits here for reports
        self._counts = dict.fromkeys(COUNTER_NAMES, 0)

    @property
    def pending(self) -> int:
        """Batches submitted and not yet reported to ``on_persisted``."""
        return self._pending

    def counters(self) -> dict[str, int]:
        """Batches reported, engine writes, fsyncs and bytes written, for ``pyagent stats``."""
        return dict(self._counts)

    def reader(self, component: str) -> StoreReader:
        return StoreReader(self._store, component)

    def submit(self, batch: WriteBatch) -> None:
        """Queue ``batch`` for the writer; never blocks (see the module doc for the bound)."""
        if self._failed is not None:
            raise LocalProtocolError(f"storage failed earlier ({self._failed}); no write is taken")
        if self._pending >= self.pending_max:
            raise LocalProtocolError(
                f"{self._pending} write batches pending (max {self.pending_max}): the owner must "
                "wait_below() before submitting"
            )
        self._queue.append(batch)
        self._pending += 1
        self._queued.unpark_all()

    async def wait_below(self, limit: int) -> None:
        """Return once fewer than ``limit`` batches are pending."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        while self._pending >= limit:
            await self._drained.park()

    async def run(self, on_persisted: Callable[[WriteBatch], None]) -> None:
        """The writer task: write what is queued, report it in order, forever (see the module doc)."""
        while True:
            while not self._queue:
                await self._queued.park()
            chunk = self._take()
            sync = any(batch.sync for batch in chunk)
            try:
                written = await trio.to_thread.run_sync(self._write, chunk, sync)
            except (StorageError, ValueError, IndexError, TypeError) as error:
                self._failed = error
                what = "storage failed" if isinstance(error, StorageError) else "a write batch was refused"
                logger.error(
                    "%s: %s (%d batches of %s); stopping",
                    what,
                    error,
                    len(chunk),
                    ", ".join(sorted({batch.component for batch in chunk})),
                )
                raise
            self._counts["storage_writes"] += 1
            self._counts["storage_fsyncs"] += sync
            self._counts["storage_bytes"] += written
            for batch in chunk:
                self._pending -= 1
                self._counts["storage_batches"] += 1
                on_persisted(batch)
            self._drained.unpark_all()

    def close(self) -> None:
        """Close the store; later calls fail. A write in flight finishes first (it holds the engine)."""
        self._store.close()

    def _take(self) -> list[WriteBatch]:
        chunk = [self._queue.popleft()]
        size = _approximate_bytes(chunk[0])
        while self._queue and len(chunk) < self.write_batches_max and size < self.write_bytes_max:
            size += _approximate_bytes(self._queue[0])
            chunk.append(self._queue.popleft())
        return chunk

    def _write(self, chunk: Sequence[WriteBatch], sync: bool) -> int:
        # On the worker thread: encoding here keeps the trio thread free for other tasks.
        return self._store.write([encode(batch) for batch in chunk], sync)


def encode(batch: WriteBatch) -> tuple[str, list[tuple[object, ...]]]:
    """``batch`` in the form ``pyagent._core.Store.write`` takes (op codes in ``_core.pyi``)."""
    encoded: list[tuple[object, ...]] = []
    for op in batch.ops:
        match op:
            case Put(key=key, value=value):
                encoded.append((_PUT, key, value))
            case Delete(key=key):
                encoded.append((_DELETE, key))
            case DeleteRange(start=start, end=end):
                encoded.append((_DELETE_RANGE, start, end))
            case LogAppend(log=log, first_index=first, entries=entries):
                encoded.append((_LOG_APPEND, log, first, entries))
            case LogTruncate(log=log, from_index=index):
                encoded.append((_LOG_TRUNCATE, log, index))
            case LogCompact(log=log, to_index=index):
                encoded.append((_LOG_COMPACT, log, index))
            case _:
                raise TypeError(f"not a storage op: {op!r}")
    return batch.component, encoded


def _approximate_bytes(batch: WriteBatch) -> int:
    size = 0
    for op in batch.ops:
        if isinstance(op, Put):
            size += len(op.key) + len(op.value)
        elif isinstance(op, LogAppend):
            size += sum(len(entry) for entry in op.entries)
    return size
