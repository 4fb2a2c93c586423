"""The bounded queue of updates waiting to be piggybacked (memberlist's ``TransmitLimitedQueue``).

At most one update per member is queued: a newer claim about a member replaces the older one, which
is what makes stale updates die out. Updates are handed out least-transmitted first (newest first
within a tier) and dropped once sent ``retransmit_limit`` times. Tiers are indexed by transmit count,
and the limit is small (4 x ceil(log10(N+1)), 20 for 10,000 members), so every operation costs a few
dictionary steps rather than a scan of the queue.

Unlike memberlist's queue, each update remembers who holds it: the member that told us, and those we
sent it to. It is not sent to them again, and it is dropped once every other live member holds it. In a
mesh of five that spares about one transmission in five of every update, and all of those that
memberlist spends telling a member what it told us; in a large mesh the limit ends an update long before
its holders are everyone, so nothing changes there.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyagent.proto.membership import limits
from pyagent.proto.membership.codec import WireEntry
from pyagent.proto.types import PeerId

# Once this little budget is left, no entry fits any more (the smallest entry is ~10 bytes).
_BUDGET_FLOOR_BYTES = 16
# Entries skipped for being too large before giving up: keeps one take() bounded when the budget is
# nearly used and the queue holds many large (metadata-carrying) entries.
_MISSES_MAX = 8


@dataclass(slots=True)
class _Item:
    payload: WireEntry
    size_bytes: int
    holders: set[PeerId]


class BroadcastQueue:
    def __init__(self, queue_max: int) -> None:
        self._queue_max = queue_max
        self._tiers: list[dict[PeerId, _Item]] = [{}]
        self._tier_of: dict[PeerId, int] = {}
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._tier_of)

    def __contains__(self, key: PeerId) -> bool:
        return key in self._tier_of

    def push(
        self, key: PeerId, payload: WireEntry, size_bytes: int, heard_from: PeerId | None = None
    ) -> None:
        """Queue an update about member ``key``, replacing any older update about it; ``heard_from`` is
        the member that told us, which holds it already."""
        tier = self._tier_of.pop(key, None)
        if tier is not None:
            del self._tiers[tier][key]
        elif len(self._tier_of) >= self._queue_max:
            self._drop_most_sent()
        self._tiers[0][key] = _Item(payload, size_bytes, set() if heard_from is None else {heard_from})
        self._tier_of[key] = 0

    def refresh(self, key: PeerId, payload: WireEntry, size_bytes: int) -> None:
        """Replace the queued update about ``key``, if any, keeping its transmit count: the same news,
        restated (a newer metadata version we now hold), is not worth a new round of transmissions."""
        tier = self._tier_of.get(key)
        if tier is not None:
            item = self._tiers[tier][key]
            item.payload, item.size_bytes = payload, size_bytes

    def take(self, budget_bytes: int, transmit_limit: int, receiver: PeerId, others: int) -> list[WireEntry]:
        """Updates for one message to ``receiver``, within ``budget_bytes``, that it is not known to hold;
        counts them as transmitted to it. ``others``: how many live members there are besides us."""
        tier_of = self._tier_of
        if not tier_of:
            return []
        tiers = self._tiers
        chosen: list[tuple[PeerId, int, _Item]] = []
        misses = 0
        updates_max = limits.UPDATES_MAX
        for tier_index, tier in enumerate(tiers):
            for key, item in reversed(tier.items()):
                size_bytes = item.size_bytes
                if receiver in item.holders:
                    misses += 1
                elif size_bytes <= budget_bytes:
                    chosen.append((key, tier_index, item))
                    budget_bytes -= size_bytes
                else:
                    misses += 1
                if budget_bytes < _BUDGET_FLOOR_BYTES or misses > _MISSES_MAX or len(chosen) >= updates_max:
                    break
            else:
                continue
            break
        for key, tier_index, item in chosen:
            del tiers[tier_index][key]
            sent = tier_index + 1
            item.holders.add(receiver)
            if sent >= transmit_limit or len(item.holders) >= others:
                del tier_of[key]
                continue
            if sent == len(tiers):
                tiers.append({})
            tiers[sent][key] = item
            tier_of[key] = sent
        return [item.payload for _, _, item in chosen]

    def _drop_most_sent(self) -> None:
        # The update sent most often has done most of its work; losing it costs the least.
        for tier in reversed(self._tiers):
            if tier:
                key = next(iter(tier))
                del tier[key]
                del self._tier_of[key]
                self.dropped += 1
                return
