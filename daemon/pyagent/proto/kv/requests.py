"""Who is waiting for what: the client requests a KV node holds until their answer is known.

A request comes from this node's own API (``Local``) or from a peer that forwarded it here (``Remote``).
It waits in one of four places, each bounded:

- ``proposals``: a write proposed to a group this node leads, until its entry is applied;
- ``reads``: linearizable reads of a shard, batched under one ReadIndex and answered once the shard has
  applied up to the read index;
- ``forwards``: requests sent to the peer believed to lead their shard, until it answers;
- ``parked``: requests whose shard has no known leader yet (an election, a node that just started),
  retried on every tick until their deadline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pyagent.proto.kv.ops import Command, Get, Scan
from pyagent.proto.types import PeerId


@dataclass(frozen=True, slots=True)
class Local:
    request_id: int


@dataclass(frozen=True, slots=True)
class Remote:
    peer: PeerId
    forward_id: int


Origin = Local | Remote


@dataclass(slots=True)
class Waiting:
    origin: Origin
    command: Command
    shard: int
    deadline_us: int
    # Peers tried for this request, in order, so a forward that is refused moves on to the next.
    tried: list[PeerId] = field(default_factory=list)
    # While forwarded: when to give up on the peer it was sent to and route it again.
    hop_deadline_us: int = 0


@dataclass(slots=True)
class ReadBatch:
    """Reads of one shard that share one ReadIndex round: issued under ``ctx``, answered at ``index``."""

    ctx: bytes
    issued_us: int
    reads: list[Waiting]
    index: int | None = None


class Requests:
    def __init__(self, parked_max: int) -> None:
        self.parked_max = parked_max
        # (client, seq) of a proposed write -> who waits for it, and the shard it went to.
        self.proposals: dict[tuple[int, int], tuple[int, list[Waiting]]] = {}
        self.queued_reads: dict[int, list[Waiting]] = {}
        self.read_batches: dict[int, deque[ReadBatch]] = {}
        self.forwards: dict[int, Waiting] = {}
        self.parked: deque[Waiting] = deque()
        self._next_forward_id = 1
        self._next_ctx = 1

    def count(self) -> int:
        reads = sum(len(q) for q in self.queued_reads.values())
        batched = sum(len(b.reads) for batches in self.read_batches.values() for b in batches)
        proposed = sum(len(waiters) for _, waiters in self.proposals.values())
        return reads + batched + proposed + len(self.forwards) + len(self.parked)

    def is_full(self) -> bool:
        return self.count() >= self.parked_max

    def propose(self, key: tuple[int, int], shard: int, waiting: Waiting) -> None:
        self.proposals.setdefault(key, (shard, []))[1].append(waiting)

    def proposed(self, key: tuple[int, int]) -> list[Waiting]:
        return self.proposals.pop(key, (0, []))[1]

    def drop_proposals(self, shard: int) -> list[Waiting]:
        """Every write waiting on ``shard``'s log: its leader stepped down, so they may never apply."""
        keys = [key for key, (s, _) in self.proposals.items() if s == shard]
        return [w for key in keys for w in self.proposals.pop(key)[1]]

    def queue_read(self, waiting: Waiting) -> None:
        self.queued_reads.setdefault(waiting.shard, []).append(waiting)

    def start_read_batch(self, shard: int, now_us: int) -> ReadBatch | None:
        """Move the shard's queued reads into a new batch with a fresh, unique ctx."""
        reads = self.queued_reads.pop(shard, [])
        if not reads:
            return None
        batch = ReadBatch(self._next_ctx.to_bytes(8, "big"), now_us, reads)
        self._next_ctx += 1
        self.read_batches.setdefault(shard, deque()).append(batch)
        return batch

    def read_answered(self, shard: int, ctx: bytes, index: int) -> None:
        for batch in self.read_batches.get(shard, ()):
            if batch.ctx == ctx:
                batch.index = index

    def reads_due(self, shard: int, applied: int) -> list[Waiting]:
        """Reads whose read index the shard has applied: they may be answered from its state now."""
        batches = self.read_batches.get(shard)
        due: list[Waiting] = []
        while batches and batches[0].index is not None and batches[0].index <= applied:
            due.extend(batches.popleft().reads)
        return due

    def stale_read_batches(self, shard: int, older_than_us: int) -> list[ReadBatch]:
        """Batches never answered since ``older_than_us``: raft-rs drops a ReadIndex silently when the
        leader has not committed in its term yet, so these are asked again under a new ctx."""
        batches = self.read_batches.get(shard, deque())
        stale = [b for b in batches if b.index is None and b.issued_us < older_than_us]
        for batch in stale:
            batches.remove(batch)
            self.queued_reads.setdefault(shard, []).extend(batch.reads)
        return stale

    def drop_reads(self, shard: int) -> list[Waiting]:
        dropped = self.queued_reads.pop(shard, [])
        for batch in self.read_batches.pop(shard, deque()):
            dropped.extend(batch.reads)
        return dropped

    def forward(self, waiting: Waiting, hop_deadline_us: int) -> int:
        waiting.hop_deadline_us = min(hop_deadline_us, waiting.deadline_us)
        forward_id = self._next_forward_id
        self._next_forward_id += 1
        self.forwards[forward_id] = waiting
        return forward_id

    def read_in_flight(self, shard: int) -> bool:
        """Whether a ReadIndex of ``shard`` is still unanswered: new reads then wait for the next one,
        which is how concurrent reads come to share one round (etcd's read loop does the same)."""
        return any(batch.index is None for batch in self.read_batches.get(shard, ()))

    def stalled_forwards(self, now_us: int, peer: PeerId | None = None) -> list[Waiting]:
        """Forwards that got no answer by their hop deadline, or (given ``peer``) every forward sent to
        ``peer``, removed: the caller routes them again (the peer may have died or lost leadership)."""
        stalled = [
            fid
            for fid, w in self.forwards.items()
            if (w.tried[-1] == peer if peer is not None else w.hop_deadline_us <= now_us)
        ]
        return [self.forwards.pop(fid) for fid in stalled]

    def expired(self, now_us: int) -> list[Waiting]:
        """Every request past its deadline, wherever it waits (removed). A write among them may still
        be applied later; its client's retry, in the same session, is then answered from the session."""
        expired: list[Waiting] = []
        for fid in [fid for fid, w in self.forwards.items() if w.deadline_us <= now_us]:
            expired.append(self.forwards.pop(fid))
        expired.extend(w for w in self.parked if w.deadline_us <= now_us)
        self.parked = deque(w for w in self.parked if w.deadline_us > now_us)
        for key, (_shard, waiters) in list(self.proposals.items()):
            expired.extend(w for w in waiters if w.deadline_us <= now_us)
            waiters[:] = [w for w in waiters if w.deadline_us > now_us]
            if not waiters:
                del self.proposals[key]
        for queued in self.queued_reads.values():
            expired.extend(w for w in queued if w.deadline_us <= now_us)
            queued[:] = [w for w in queued if w.deadline_us > now_us]
        for batches in self.read_batches.values():
            for batch in batches:
                expired.extend(w for w in batch.reads if w.deadline_us <= now_us)
                batch.reads[:] = [w for w in batch.reads if w.deadline_us > now_us]
        return expired


def is_read(command: Command) -> bool:
    return isinstance(command, Get | Scan)


def answer_value(command: Command, value: Any) -> Any:
    """Scans answer with pairs; everything else with the state machine's result as is."""
    return [list(pair) for pair in value] if isinstance(command, Scan) else value
