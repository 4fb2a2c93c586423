"""An in-memory storage engine with the exact semantics of ``proto/storage.py``.

The daemon keeps its state in a real embedded engine (``pyagent.node.storage``); simnet's disk model and
the test harnesses keep theirs here. Both must agree on what a batch does, so the semantics live in one
place that every shell can run: ``tests/unit/test_storage_engines.py`` runs the same batches through
both and compares.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from pyagent.proto.storage import (
    Delete,
    DeleteRange,
    LogAppend,
    LogCompact,
    LogTruncate,
    Put,
    WriteBatch,
)


@dataclass(slots=True)
class _Log:
    first: int = 1  # index of entries[0]
    entries: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class _Namespace:
    keys: list[bytes] = field(default_factory=list)  # sorted, for scans
    values: dict[bytes, bytes] = field(default_factory=dict)
    logs: dict[str, _Log] = field(default_factory=dict)


class MemoryStore:
    def __init__(self) -> None:
        self._spaces: dict[str, _Namespace] = {}

    def is_empty(self) -> bool:
        return not any(
            space.values or any(log.entries for log in space.logs.values()) for space in self._spaces.values()
        )

    def apply(self, batch: WriteBatch) -> None:
        """Apply a checked batch. A batch that would leave a hole in a log raises ``ValueError`` before
        changing anything, so a batch is still all-or-nothing."""
        space = self._spaces.setdefault(batch.component, _Namespace())
        _check_appends(space, batch)
        for op in batch.ops:
            match op:
                case Put(key=key, value=value):
                    if key not in space.values:
                        bisect.insort(space.keys, key)
                    space.values[key] = value
                case Delete(key=key):
                    if space.values.pop(key, None) is not None:
                        del space.keys[bisect.bisect_left(space.keys, key)]
                case DeleteRange(start=start, end=end):
                    lo, hi = bisect.bisect_left(space.keys, start), bisect.bisect_left(space.keys, end)
                    for key in space.keys[lo:hi]:
                        del space.values[key]
                    del space.keys[lo:hi]
                case LogAppend(log=name, first_index=first, entries=entries):
                    log = space.logs.setdefault(name, _Log(first=first))
                    if not log.entries:
                        log.first = first
                    del log.entries[max(first - log.first, 0) :]
                    log.entries.extend(entries)
                case LogTruncate(log=name, from_index=index):
                    truncated = space.logs.get(name)
                    if truncated is not None:
                        del truncated.entries[max(index - truncated.first, 0) :]
                case LogCompact(log=name, to_index=index):
                    compacted = space.logs.get(name)
                    if compacted is not None and index > compacted.first:
                        del compacted.entries[: index - compacted.first]
                        compacted.first = index

    def reader(self, component: str) -> MemoryReader:
        return MemoryReader(self, component)

    def _space(self, component: str) -> _Namespace:
        return self._spaces.get(component) or _Namespace()


def _check_appends(space: _Namespace, batch: WriteBatch) -> None:
    """Refuse a batch that would leave a log with a hole, or append below a log's first entry.

    Each log's span ``(first, last)`` (None while empty) is followed through the whole batch, so an op is
    checked against what the ops before it in the same batch made of the log.
    """
    spans: dict[str, tuple[int, int] | None] = {}
    for op in batch.ops:
        if not isinstance(op, LogAppend | LogTruncate | LogCompact):
            continue
        if op.log not in spans:
            log = space.logs.get(op.log)
            spans[op.log] = (log.first, log.first + len(log.entries) - 1) if log and log.entries else None
        span = spans[op.log]
        if isinstance(op, LogAppend):
            if span is not None and not span[0] <= op.first_index <= span[1] + 1:
                raise ValueError(
                    f"{batch.component}: append at {op.first_index} to {op.log!r}, which holds "
                    f"{span[0]}..{span[1]}: it must start within it or right after it"
                )
            first = span[0] if span is not None and op.first_index > span[0] else op.first_index
            spans[op.log] = (first, op.first_index + len(op.entries) - 1)
        elif span is None:
            continue
        elif isinstance(op, LogTruncate):
            spans[op.log] = None if op.from_index <= span[0] else (span[0], min(span[1], op.from_index - 1))
        else:
            spans[op.log] = None if op.to_index > span[1] else (max(span[0], op.to_index), span[1])


class MemoryReader:
    """``StorageReader`` over one namespace of a ``MemoryStore``."""

    def __init__(self, store: MemoryStore, component: str) -> None:
        self._store = store
        self._component = component

    def get(self, key: bytes) -> bytes | None:
        return self._store._space(self._component).values.get(key)

    def scan(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        space = self._store._space(self._component)
        lo = bisect.bisect_left(space.keys, start)
        hi = len(space.keys) if end is None else bisect.bisect_left(space.keys, end)
        return [(key, space.values[key]) for key in space.keys[lo : min(hi, lo + limit)]]

    def log_bounds(self, log: str) -> tuple[int, int] | None:
        found = self._store._space(self._component).logs.get(log)
        if found is None or not found.entries:
            return None
        return found.first, found.first + len(found.entries) - 1

    def log_entries(self, log: str, lo: int, hi: int) -> list[bytes]:
        bounds = self.log_bounds(log)
        if hi <= lo:
            return []
        if bounds is None or lo < bounds[0] or hi - 1 > bounds[1]:
            raise IndexError(f"{self._component}: entries {lo}..{hi} of {log!r} are not all held ({bounds})")
        found = self._store._space(self._component).logs[log]
        return found.entries[lo - found.first : hi - found.first]
