"""What membership keeps across restarts: an incarnation ceiling, and the addresses of members it met.

The incarnation is SWIM's guard against stale news: a node that restarted and reused an old
incarnation could have its fresh "alive" ignored, or an old accusation believed. So the component
reserves incarnations ahead in storage (like TiKV's id allocator): it persists a ceiling, uses numbers
below it, and raises it (durably) long before it is reached. A restart starts at the stored ceiling,
above anything the last run can have sent. Because membership's messages leave only after the Ready's
writes are durable (``Ready.send``), nothing carrying an unreserved incarnation ever leaves.

The address book lets a node whose mesh outlived it rejoin with no bootstrap list, as kubo does from its
peerstore: members' addresses are written as they are learned (not synced: losing the newest few to a
power cut only costs a slower rejoin) and dropped when a member leaves or dies.
"""

from __future__ import annotations

import msgpack

from pyagent.proto.storage import Delete, Op, Put, StorageReader
from pyagent.proto.types import PeerId

INCARNATION_KEY = b"incarnation"
ADDR_PREFIX = b"addr/"
# Incarnations reserved per ceiling write; it is raised when less than half of the reserve is left.
INCARNATION_RESERVE = 64
ADDRS_PER_MEMBER_MAX = 16


class AddressBook:
    def __init__(self, reader: StorageReader | None, entries_max: int) -> None:
        self._reader = reader
        self._entries_max = entries_max
        self.ceiling = 0
        self._known: dict[PeerId, tuple[str, ...]] = {}
        # The book as the last run left it, for a rejoin; filled by ``recover``.
        self.recovered: tuple[tuple[PeerId, tuple[str, ...]], ...] = ()
        self._ops: list[Op] = []
        self.ceiling_dirty = False

    def recover(self) -> int:
        """Read what the last run kept; returns the first incarnation this run may use."""
        if self._reader is None:
            return 0
        stored = self._reader.get(INCARNATION_KEY)
        self.ceiling = int.from_bytes(stored, "big") if stored else 0
        book = []
        for key, value in self._reader.scan(ADDR_PREFIX, _prefix_end(ADDR_PREFIX), self._entries_max):
            addrs = _decode_addrs(value)
            if addrs is not None:
                peer = key[len(ADDR_PREFIX) :].decode(errors="replace")
                book.append((peer, addrs))
                self._known[peer] = addrs
        self.recovered = tuple(book)
        return self.ceiling

    def reserve(self, incarnation: int) -> None:
        """Make sure ``incarnation`` is below a ceiling that will be durable before it is sent."""
        if incarnation + INCARNATION_RESERVE // 2 < self.ceiling:
            return
        self.ceiling = incarnation + INCARNATION_RESERVE
        self.ceiling_dirty = True

    def remember(self, peer: PeerId, addrs: tuple[str, ...]) -> None:
        if not addrs or self._known.get(peer) == addrs or len(self._known) >= self._entries_max:
            return
        self._known[peer] = addrs
        self._ops.append(Put(ADDR_PREFIX + peer.encode(), msgpack.packb(list(addrs[:ADDRS_PER_MEMBER_MAX]))))

    def forget(self, peer: PeerId) -> None:
        if self._known.pop(peer, None) is not None:
            self._ops.append(Delete(ADDR_PREFIX + peer.encode()))

    @property
    def dirty(self) -> bool:
        """Whether anything waits for ``take``."""
        return bool(self._ops) or self.ceiling_dirty

    def take(self) -> tuple[tuple[Op, ...], bool]:
        """The ops gathered since the last call, and whether they must be synced (a new ceiling)."""
        ops = self._ops
        sync = self.ceiling_dirty
        if sync:
            ops.append(Put(INCARNATION_KEY, self.ceiling.to_bytes(8, "big")))
        self._ops, self.ceiling_dirty = [], False
        return tuple(ops), sync


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _decode_addrs(value: bytes) -> tuple[str, ...] | None:
    # Our own bytes, but a disk can rot: a bad entry is skipped, never fatal.
    try:
        addrs = msgpack.unpackb(value)
    except (ValueError, msgpack.UnpackException):
        return None
    if not isinstance(addrs, list) or not all(isinstance(addr, str) for addr in addrs):
        return None
    return tuple(addrs[:ADDRS_PER_MEMBER_MAX])
