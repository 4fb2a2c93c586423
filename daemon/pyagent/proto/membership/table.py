"""The member table, with the indexes that keep every per-event operation O(1) amortized.

- ``_pool``/``_pool_at``: every remote member in an array with swap-remove, so k random members are
  drawn in O(k) expected steps instead of a scan of N.
- ``_probe_order``: the randomized round-robin probe list (SWIM's bound on detection time). A member
  joins it at a random position; each round it is filtered and reshuffled, an O(N) job done once per N
  probes.
- ``_left``/``_dead``: departed members in order of departure, so reaping and eviction take the oldest
  first without a scan. Left members are forgotten sooner than dead ones, which are kept so that a
  partition can heal: ``_reconnect_order`` cycles through them, reshuffled once per pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pyagent.proto.membership.lifeguard import Suspicion
from pyagent.proto.membership.metadata import EMPTY, Metadata
from pyagent.proto.membership.records import LIVE_STATES, MemberRecord, State
from pyagent.proto.types import PeerId, Rng

# Below this many candidates per wanted member, a scan beats rejection sampling.
_SCAN_FACTOR = 4


class Member:
    __slots__ = (
        "addrs",
        "corrected_us",
        "incarnation",
        "meta_requested_us",
        "meta_version",
        "metadata",
        "peer",
        "probing",
        "rtt_us",
        "state",
        "state_changed_us",
        "suspicion",
        "wire",
        "wire_addrs",
        "wire_size_bytes",
    )

    def __init__(self, peer: PeerId, addrs: tuple[str, ...], incarnation: int, now_us: int) -> None:
        self.peer = peer
        self.addrs = addrs
        self.state = State.ALIVE
        self.incarnation = incarnation
        self.meta_version = 0
        self.metadata: Metadata = EMPTY
        self.meta_requested_us = -(1 << 62)
        # When we last answered a stale accusation of this member with its newer entry.
        self.corrected_us = -(1 << 62)
        self.state_changed_us = now_us
        self.probing = False
        self.rtt_us: int | None = None
        self.suspicion: Suspicion | None = None
        # The member's entry as we encode it, cached against the fields it is made of (``wire_addrs``
        # is the addrs tuple it was made from; None until it is first made).
        self.wire_addrs: tuple[str, ...] | None = None
        self.wire: list[Any] = []
        self.wire_size_bytes = 0

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def record(self) -> MemberRecord:
        return MemberRecord(
            peer=self.peer,
            addrs=self.addrs,
            state=self.state,
            incarnation=self.incarnation,
            state_changed_us=self.state_changed_us,
            meta_version=self.meta_version,
            metadata=self.metadata,
            rtt_us=self.rtt_us,
        )


class MemberTable:
    def __init__(self, local: Member, members_max: int) -> None:
        self.local = local
        self._members_max = members_max
        self._members: dict[PeerId, Member] = {}
        # The dict's own lookup: the hottest call of all (every entry of every message), without a frame.
        self.get: Callable[[PeerId], Member | None] = self._members.get
        self._pool: list[PeerId] = []
        self._pool_at: dict[PeerId, int] = {}
        self._live_remote = 0
        self._left: dict[PeerId, None] = {}
        self._dead: dict[PeerId, None] = {}
        self._reconnect_order: list[PeerId] = []
        self._probe_order: list[PeerId] = []
        self._probe_next = 0

    def __len__(self) -> int:
        """Members known, the local one included."""
        return len(self._members) + 1

    def __iter__(self) -> Iterator[Member]:
        yield self.local
        yield from self._members.values()

    @property
    def live_remote_count(self) -> int:
        """Live members other than us: who can still need an update we hold."""
        return self._live_remote

    @property
    def dead_count(self) -> int:
        return len(self._dead)

    @property
    def live_count(self) -> int:
        """N in every formula: live members, the local one included while it has not left."""
        return self._live_remote + (1 if self.local.live else 0)

    def add(self, member: Member, rng: Rng) -> bool:
        """Insert a new remote member; False when the table is full of live members."""
        assert member.peer not in self._members and member.peer != self.local.peer
        if len(self) >= self._members_max:
            departed = self._left or self._dead
            if not departed:
                return False
            self.remove(next(iter(departed)))
        self._members[member.peer] = member
        self._pool_at[member.peer] = len(self._pool)
        self._pool.append(member.peer)
        if member.live:
            self._live_remote += 1
            self._enter_probe_order(member, rng)
        else:
            self._departed_by_state(member.state)[member.peer] = None
        return True

    def adopt(self, members: list[Member], rng: Rng) -> list[Member]:
        """Fill an empty table with a whole view at once; returns the members taken (up to the bound).

        The live ones enter the probe order as one block at a random rotation: one random draw instead
        of one per member, and members that adopt the same view still start their rounds apart. The
        first round's end reshuffles it as usual."""
        assert not self._members
        taken = members[: max(0, self._members_max - len(self))]
        live: list[PeerId] = []
        for member in taken:
            peer = member.peer
            self._members[peer] = member
            self._pool_at[peer] = len(self._pool)
            self._pool.append(peer)
            if member.live:
                member.probing = True
                live.append(peer)
            else:
                self._departed_by_state(member.state)[peer] = None
        self._live_remote += len(live)
        if live:
            offset = rng.randrange(len(live))
            self._probe_order = live[offset:] + live[:offset]
        return taken

    def remove(self, peer: PeerId) -> None:
        member = self._members.pop(peer)
        if member.live:
            self._live_remote -= 1
        self._left.pop(peer, None)
        self._dead.pop(peer, None)
        index = self._pool_at.pop(peer)
        last = self._pool.pop()
        if last != peer:
            self._pool[index] = last
            self._pool_at[last] = index
        # A removed member left in the probe order is skipped, and dropped at the next reshuffle.

    def set_state(self, member: Member, state: State, now_us: int, rng: Rng) -> None:
        was_live = member.live
        member.state = state
        member.state_changed_us = now_us
        if member is self.local:
            return
        if was_live and not member.live:
            self._live_remote -= 1
        elif member.live and not was_live:
            self._live_remote += 1
            self._enter_probe_order(member, rng)
        # Re-inserting keeps departures ordered by the time of the latest one.
        self._left.pop(member.peer, None)
        self._dead.pop(member.peer, None)
        if not member.live:
            self._departed_by_state(member.state)[member.peer] = None

    def _departed_by_state(self, state: State) -> dict[PeerId, None]:
        return self._left if state is State.LEFT else self._dead

    def sample(self, rng: Rng, count: int, accept: Callable[[Member], bool]) -> list[Member]:
        """Up to ``count`` distinct random remote members that ``accept`` admits."""
        pool = self._pool
        if len(pool) <= _SCAN_FACTOR * count:
            candidates = pool[:]
            rng.shuffle(candidates)
            chosen = [m for m in (self._members[p] for p in candidates) if accept(m)]
            return chosen[:count]
        picked: dict[PeerId, Member] = {}
        for _ in range(_SCAN_FACTOR * count + 16):
            member = self._members[pool[rng.randrange(len(pool))]]
            if member.peer not in picked and accept(member):
                picked[member.peer] = member
                if len(picked) == count:
                    break
        return list(picked.values())

    def next_probe_target(self, rng: Rng, left_before_us: int, dead_before_us: int) -> Member | None:
        """The next live member in round-robin order; starts a new shuffled round when one ends, and
        forgets members that left before ``left_before_us`` or died before ``dead_before_us``."""
        reshuffled = False
        while True:
            if self._probe_next >= len(self._probe_order):
                if reshuffled:
                    return None
                self._reap(self._left, left_before_us)
                self._reap(self._dead, dead_before_us)
                self._new_round(rng)
                reshuffled = True
                continue
            peer = self._probe_order[self._probe_next]
            self._probe_next += 1
            member = self._members.get(peer)
            if member is not None and member.live and member.probing:
                return member

    def next_reconnect_target(self, rng: Rng) -> Member | None:
        """A dead member to try again, each in turn (a shuffled pass over the dead at a time)."""
        for _ in range(2):
            while self._reconnect_order:
                member = self._members.get(self._reconnect_order.pop())
                if member is not None and member.state is State.DEAD:
                    return member
            self._reconnect_order = list(self._dead)
            rng.shuffle(self._reconnect_order)
        return None

    def _reap(self, departed: dict[PeerId, None], before_us: int) -> None:
        # Done at a round's start: one pass per N probes, and only over the expired.
        while departed:
            oldest = self._members[next(iter(departed))]
            if oldest.state_changed_us >= before_us:
                break
            self.remove(oldest.peer)

    def _new_round(self, rng: Rng) -> None:
        order: list[PeerId] = []
        seen: set[PeerId] = set()
        for peer in self._probe_order:
            member = self._members.get(peer)
            # A member removed and added again within one round is listed twice; keep one slot.
            if member is None or not member.probing or peer in seen:
                continue
            seen.add(peer)
            if member.live:
                order.append(peer)
            else:
                member.probing = False
        rng.shuffle(order)
        self._probe_order = order
        self._probe_next = 0

    def _enter_probe_order(self, member: Member, rng: Rng) -> None:
        if member.probing:
            return
        member.probing = True
        # A random slot, as memberlist does, so a newcomer does not wait for a full round.
        self._probe_order.append(member.peer)
        slot = rng.randrange(len(self._probe_order))
        order = self._probe_order
        order[slot], order[-1] = order[-1], order[slot]
