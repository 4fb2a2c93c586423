"""Who averages with whom: Moshpit-style groups, the same on every peer, exact for any number of peers.

The members of a round (sorted peer ids) are shuffled by a hash of the round and each id, so each round
puts peers next to different neighbours. Then, level by level, consecutive units are joined into blocks
of at most ``group_size_max`` units, as even in size as possible: the units of the first level are the
peers, those of the next level the blocks. ``ceil(log_{group_size_max} N)`` levels join everyone; each
level is one step of the round.

At a step every member of a unit holds the unit's value (the units' exact mean, from the step before),
so a block averages by groups: group ``j`` is the ``j``-th member of each unit of the block, and each
such member averages the values of one member of every unit. A unit with fewer members than ``j`` is
represented by its member ``j mod size``, which sends to that group too (a *stand-in*) but averages in
its own group only. After the step every member of the block holds the same mean of all its units, so
after the last step every peer holds the exact weighted mean of all deltas, on any number of peers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from pyagent.proto.types import PeerId


@dataclass(frozen=True, slots=True)
class StepPlan:
    # This peer's group: the peers that average the same values (this peer included), sorted.
    receivers: tuple[PeerId, ...]
    # Whose values the group averages: one member of each unit of the block (this peer included).
    senders: tuple[PeerId, ...]
    # Every other peer that averages this peer's value at this step (its group, and any group it
    # stands in for), sorted.
    send_to: tuple[PeerId, ...]


def plan(round_number: int, members: Sequence[PeerId], me: PeerId, group_size_max: int) -> list[StepPlan]:
    """``me``'s part in each step of round ``round_number``; ``me`` must be one of ``members``."""
    units: list[list[PeerId]] = [
        [peer] for peer in sorted(members, key=lambda p: _position_key(round_number, p))
    ]
    steps: list[StepPlan] = []
    while len(units) > 1:
        blocks = _balanced_blocks(units, group_size_max)
        for block in blocks:
            if any(me in unit for unit in block):
                steps.append(_my_part(block, me))
        units = [[peer for unit in block for peer in unit] for block in blocks]
    return steps


def _my_part(block: list[list[PeerId]], me: PeerId) -> StepPlan:
    mine = next(unit for unit in block if me in unit)
    index = mine.index(me)
    widest = max(len(unit) for unit in block)

    def receivers(j: int) -> list[PeerId]:
        return [unit[j] for unit in block if j < len(unit)]

    senders = [unit[index % len(unit)] for unit in block]
    send_to = {peer for j in range(index, widest, len(mine)) for peer in receivers(j)}
    send_to.discard(me)
    return StepPlan(tuple(sorted(receivers(index))), tuple(sorted(senders)), tuple(sorted(send_to)))


def _balanced_blocks(units: list[list[PeerId]], size_max: int) -> list[list[list[PeerId]]]:
    count = -(-len(units) // size_max)
    base, extra = divmod(len(units), count)
    blocks, start = [], 0
    for block in range(count):
        size = base + (1 if block < extra else 0)
        blocks.append(units[start : start + size])
        start += size
    return blocks


def step_count(members: int, group_size_max: int) -> int:
    """How many steps a round of ``members`` peers takes: ``ceil(log_{group_size_max} members)``."""
    steps, units = 0, members
    while units > 1:
        units = -(-units // group_size_max)
        steps += 1
    return steps


def _position_key(round_number: int, peer: PeerId) -> bytes:
    return hashlib.blake2b(f"{round_number}/{peer}".encode(), digest_size=8).digest()
