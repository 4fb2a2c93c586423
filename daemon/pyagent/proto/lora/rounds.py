"""One round on one peer, step by step: who is in each step's group, what arrived, and what the group
agreed on.

A step ends in two phases. First each member sends its value to the others and waits until it holds or
has given up on every other member's value (given up: the transfer broke, the peer disconnected, someone
else reported it missing too, or half the step's time passed). Then it reports the set of senders it
holds (``have``) to the group, and the members agree on the **common set**: the largest set of members
that reported and whose every report holds every other's value (``common_set``). Every member that sees
the same reports computes the same set, and the mean over it, so survivors stay identical, and a member
that vanished mid-transfer is left out by everyone. A member whose report never comes is waited for
until the step's deadline unless some report in the set already leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pyagent.proto.types import PeerId

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Held:
    """A member's value for a step, as every receiver decoded it."""

    weight: float
    contributors: tuple[PeerId, ...]
    values: Vector


@dataclass(slots=True)
class Step:
    index: int
    group: tuple[PeerId, ...]
    me: PeerId
    held: dict[PeerId, Held] = field(default_factory=dict)
    given_up: set[PeerId] = field(default_factory=set)
    reports: dict[PeerId, frozenset[PeerId]] = field(default_factory=dict)
    my_report: frozenset[PeerId] | None = None
    sent: bool = False
    decided: bool = False

    @property
    def others(self) -> tuple[PeerId, ...]:
        return tuple(peer for peer in self.group if peer != self.me)

    def frames_settled(self) -> bool:
        return all(peer in self.held or peer in self.given_up for peer in self.others)

    def report(self) -> frozenset[PeerId]:
        """Fix this member's report: the senders whose values it holds. Sent once, never changed."""
        assert self.my_report is None
        self.my_report = frozenset(self.held)
        return self.my_report

    def all_reports(self) -> dict[PeerId, frozenset[PeerId]]:
        assert self.my_report is not None
        return {**self.reports, self.me: self.my_report}

    def common_set(self) -> tuple[frozenset[PeerId], frozenset[PeerId]]:
        """The common set from the reports held, and the members still worth waiting for: those with
        no report here that no report in the set leaves out."""
        reports = self.all_reports()
        members = set(reports)
        while True:
            kept = {peer for peer in members if all(peer in reports[other] for other in members)}
            if kept == members:
                break
            members = kept
        pending = frozenset(
            peer
            for peer in self.group
            if peer not in reports and all(peer in reports[other] for other in members)
        )
        return frozenset(members), pending

    def missing_from_reports(self) -> set[PeerId]:
        """Members whose values we lack and some other member reported lacking too: waiting is useless,
        they cannot end up in the common set."""
        lacking = set(self.others) - set(self.held) - self.given_up
        return {peer for peer in lacking if any(peer not in have for have in self.reports.values())}
