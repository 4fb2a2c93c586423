"""The nouns of membership: member states, update entries, and the records shown to shells and simnet."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.types import PeerId


class State(IntEnum):
    """A member's state; the value is its wire code."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


LIVE_STATES = (State.ALIVE, State.SUSPECT)


class Entry(NamedTuple):
    """One claim about one member, as gossiped and exchanged in push-pull.

    Alive entries carry the member's addresses and the metadata version the sender holds (the receiver
    fetches newer metadata from the sender). Suspect entries name their accuser, so that independent
    accusations can be counted as Lifeguard confirmations. A named tuple, because one is built for every
    entry decoded, and a tuple is built at half the cost of a frozen dataclass.
    """

    peer: PeerId
    state: State
    incarnation: int
    meta_version: int
    addrs: tuple[str, ...] = ()
    accuser: PeerId = ""


@dataclass(frozen=True, slots=True)
class MemberRecord:
    peer: PeerId
    addrs: tuple[str, ...]
    state: State
    incarnation: int
    state_changed_us: int
    meta_version: int
    metadata: Metadata
    # Smoothed round-trip time of our direct probes and their acks (None until the first ack). Measured
    # by the probes that run anyway, so it stays fresh without any extra traffic.
    rtt_us: int | None = None


class MemberChanged(NamedTuple):
    """A state transition seen by this node; ``old_state`` is None when the member was new to it.

    A named tuple for the same reason as ``Entry``: a join storm makes one per (node, member) pair."""

    peer: PeerId
    old_state: State | None
    new_state: State
    incarnation: int
    at_us: int


@dataclass(frozen=True, slots=True)
class Isolated:
    """This node has seen no other live member since ``since_us`` (for ``isolation_warning_ms`` at
    ``at_us``), or, with ``alone`` False, sees one again. Reported once per change, not every tick."""

    alone: bool
    since_us: int
    at_us: int


def addrs_of(records: Iterable[MemberRecord], peer: PeerId) -> tuple[str, ...]:
    """The addresses membership holds for ``peer`` (none if it is not a member): what a component puts on
    a Send or a Transfer, so that the daemon can dial a peer it is not yet connected to."""
    for record in records:
        if record.peer == peer:
            return record.addrs
    return ()
