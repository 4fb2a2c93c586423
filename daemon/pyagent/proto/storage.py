"""What a core may ask its shell to make durable, and how it reads back what was made durable.

A core never writes a file. It puts ``WriteBatch`` values into ``Ready.writes``; the shell applies each
batch atomically through its storage handle, in the order the batches were returned, and then feeds
``Persisted(component, tag)`` back. Every component has its own namespace: its own keys and its own
logs. Nobody else can write into it (``NodeCore`` checks that a batch names the component that made it).

Durability is honest. A batch with ``sync=True`` is on disk (fsync'd) before ``Persisted`` is fed; a batch
with ``sync=False`` is written and survives a crash of the process, but may be lost if the machine
loses power (simnet's crash model loses it).

Reads are synchronous, through the ``StorageReader`` a component gets from its ``NodeContext``. A read
sees at least every batch whose ``Persisted`` has been fed; whether it also sees later batches is not
defined, so a component keeps what it has not yet seen persisted in its own memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Bounds checked where a batch is made, so a bug shows up in the component that made it and never as a
# half-written batch in the shell.
KEY_BYTES_MAX = 4 * 1024
VALUE_BYTES_MAX = 64 * 1024 * 1024
LOG_NAME_BYTES_MAX = 128
BATCH_OPS_MAX = 65_536


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


@dataclass(frozen=True, slots=True)
class DeleteRange:
    """Delete every key ``k`` with ``start <= k < end`` (byte order)."""

    start: bytes
    end: bytes


@dataclass(frozen=True, slots=True)
class LogAppend:
    """Write ``entries`` at indexes ``first_index, first_index + 1, ...`` of log ``log``.

    Entries already at or after ``first_index`` are replaced and every entry after the new last one is
    dropped, which is what Raft needs when a leader overwrites a follower's uncommitted tail. Indexes
    start at 1; ``first_index`` may be at most one past the current last index (no holes).
    """

    log: str
    first_index: int
    entries: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class LogTruncate:
    """Drop every entry of ``log`` at index ``from_index`` or later."""

    log: str
    from_index: int


@dataclass(frozen=True, slots=True)
class LogCompact:
    """Drop every entry of ``log`` below ``to_index`` (they are covered by a snapshot)."""

    log: str
    to_index: int


Op = Put | Delete | DeleteRange | LogAppend | LogTruncate | LogCompact


@dataclass(frozen=True, slots=True)
class WriteBatch:
    """Ops applied atomically to ``component``'s namespace: after a crash, all of them or none.

    ``tag`` is the component's own label for the batch; it comes back in ``Persisted``.
    """

    component: str
    ops: tuple[Op, ...]
    sync: bool = True
    tag: int = 0

    def check(self) -> None:
        """Raise ``ValueError`` when the batch breaks a bound; ``NodeCore`` calls it on every batch."""
        if not self.ops:
            raise ValueError(f"{self.component}: an empty write batch")
        if len(self.ops) > BATCH_OPS_MAX:
            raise ValueError(f"{self.component}: {len(self.ops)} ops in one batch (max {BATCH_OPS_MAX})")
        for op in self.ops:
            _check_op(self.component, op)


def _check_op(component: str, op: Op) -> None:
    match op:
        case Put(key=key, value=value):
            _check_key(component, key)
            if len(value) > VALUE_BYTES_MAX:
                raise ValueError(f"{component}: a value of {len(value)} bytes (max {VALUE_BYTES_MAX})")
        case Delete(key=key):
            _check_key(component, key)
        case DeleteRange(start=start, end=end):
            _check_key(component, start)
            _check_key(component, end)
            if start >= end:
                raise ValueError(f"{component}: delete-range start {start!r} is not below end {end!r}")
        case LogAppend(log=log, first_index=first, entries=entries):
            _check_log(component, log, first)
            if not entries:
                raise ValueError(f"{component}: an append of no entries to {log!r}")
            for entry in entries:
                if len(entry) > VALUE_BYTES_MAX:
                    raise ValueError(
                        f"{component}: a log entry of {len(entry)} bytes (max {VALUE_BYTES_MAX})"
                    )
        case LogTruncate(log=log, from_index=index) | LogCompact(log=log, to_index=index):
            _check_log(component, log, index)


def _check_key(component: str, key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) > KEY_BYTES_MAX:
        raise ValueError(f"{component}: a key must be bytes of at most {KEY_BYTES_MAX}, got {key!r:.60}")


def _check_log(component: str, log: str, index: int) -> None:
    if not log or len(log.encode()) > LOG_NAME_BYTES_MAX:
        raise ValueError(f"{component}: log name {log!r} must be 1 to {LOG_NAME_BYTES_MAX} bytes")
    if index < 1:
        raise ValueError(f"{component}: log index {index} of {log!r} must be at least 1")


class StorageReader(Protocol):
    """Synchronous reads of one component's namespace (see the module docstring for what they see)."""

    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, start: bytes, end: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` pairs with ``start <= key < end`` (no upper bound when ``end`` is None), in
        key order."""
        ...

    def log_bounds(self, log: str) -> tuple[int, int] | None:
        """``(first_index, last_index)`` of ``log``, or None when it holds no entry."""
        ...

    def log_entries(self, log: str, lo: int, hi: int) -> list[bytes]:
        """The entries at indexes ``lo <= i < hi``; every one of them must exist."""
        ...
