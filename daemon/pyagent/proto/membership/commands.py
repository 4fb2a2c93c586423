"""Local commands the membership component answers (each through a ``Reply``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.types import PeerId


@dataclass(frozen=True, slots=True)
class Join:
    """Exchange state with the seeds, retrying with jittered backoff until one answers.

    ``Join(seeds=())`` starts a new cluster. The reply value is a ``Joined``; the error says which seeds
    were tried. Dial failures (unreachable, wrong peer id, key or version mismatch) are the shell's to
    report: the core only sees silence.
    """

    seeds: Sequence[tuple[PeerId, Sequence[str]]] = ()


@dataclass(frozen=True, slots=True)
class Joined:
    seed: PeerId | None
    attempts: int
    members: int


@dataclass(frozen=True, slots=True)
class Leave:
    """Gossip a ``left`` state; the reply value is how many members were told directly. The shell should
    keep the node running for a few gossip intervals afterwards so that the news spreads."""


@dataclass(frozen=True, slots=True)
class ListAddressBook:
    """The reply value is the address book as the last run left it: ``((peer, addrs), ...)``, the
    members this node knew (alive or suspect) when it stopped. Empty on a first start."""


@dataclass(frozen=True, slots=True)
class ListMembers:
    """The reply value is a list of ``MemberRecord`` sorted by peer id, this node included."""


@dataclass(frozen=True, slots=True)
class UpdateLocalMetadata:
    """Replace this node's metadata and/or addresses (None keeps the current one) and gossip it.

    The reply value is this node's new ``MemberRecord``, or an error naming what is too large."""

    metadata: Metadata | None = None
    addrs: tuple[str, ...] | None = None
