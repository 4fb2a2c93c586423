"""Who averages with whom: Moshpit-style groups on a virtual grid, the same on every peer.

The members of a round (sorted peer ids) are shuffled by a hash of the round and each id, so each round
puts peers next to different neighbours, then laid out on a grid of ``d`` dimensions whose sides are at
most ``group_size_max`` (``d = ceil(log_{group_size_max} N)``; the sides as even as possible, trimmed
while they still hold everyone). At step ``s`` a peer's group is the peers that share its coordinates in
every dimension but ``s``. On a full grid ``d`` steps give every peer the mean of everyone; on a partial
one some groups are short, and the means differ a little until a later round mixes them again.

Every peer that has the same member list computes the same groups; nothing is negotiated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pyagent.proto.types import PeerId


def grid_sides(members: int, group_size_max: int) -> tuple[int, ...]:
    """The side of each grid dimension for ``members`` peers: ``()`` for a single peer."""
    if members <= 1:
        return ()
    dims = 1
    while group_size_max**dims < members:
        dims += 1
    side = 2
    while side**dims < members:
        side += 1
    sides = [side] * dims
    # Trim the last sides while the grid still holds everyone: fuller grids mean fewer short groups.
    for index in reversed(range(dims)):
        while sides[index] > 2 and _product(sides) // sides[index] * (sides[index] - 1) >= members:
            sides[index] -= 1
    return tuple(sides)


def steps(
    round_number: int, members: Sequence[PeerId], me: PeerId, group_size_max: int
) -> list[tuple[PeerId, ...]]:
    """``me``'s group at each step of round ``round_number`` (each sorted, ``me`` included)."""
    order = sorted(members, key=lambda peer: _position_key(round_number, peer))
    sides = grid_sides(len(order), group_size_max)
    coordinates = {peer: _coordinates(index, sides) for index, peer in enumerate(order)}
    mine = coordinates[me]
    groups: list[tuple[PeerId, ...]] = []
    for step in range(len(sides)):
        group = [
            peer
            for peer, theirs in coordinates.items()
            if all(theirs[d] == mine[d] for d in range(len(sides)) if d != step)
        ]
        groups.append(tuple(sorted(group)))
    return groups


def _position_key(round_number: int, peer: PeerId) -> bytes:
    return hashlib.blake2b(f"{round_number}/{peer}".encode(), digest_size=8).digest()


def _coordinates(index: int, sides: Sequence[int]) -> tuple[int, ...]:
    out = []
    for side in sides:
        index, digit = divmod(index, side)
        out.append(digit)
    return tuple(out)


def _product(values: Sequence[int]) -> int:
    out = 1
    for value in values:
        out *= value
    return out
