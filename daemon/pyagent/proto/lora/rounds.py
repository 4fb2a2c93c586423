"""One round on one peer, step by step: who is in each step's group, what arrived, and what the group
agreed on.

A step ends in two phases. First each peer sends its value to those that average it (``grid``) and
waits until it holds or has given up on the value of every sender of its group (given up: the transfer
broke, the peer disconnected, another receiver reported it missing too, or three quarters of the step's
time passed). Then it reports the set of senders it holds (``have``) to its group, and the group agrees
on the **common set**: the receivers that reported and whose reports all hold each other's values
(receivers are left out one at a time, the one in most conflicts first, until no conflict is left), and
the senders all of them hold (``common_set``). Every receiver that sees the same reports computes the
same set, and the mean over it, so survivors stay identical, and a peer that vanished mid-transfer is
left out by everyone. A receiver whose report never comes is waited for until the step's deadline,
unless some report in the set already leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pyagent.proto.lora.grid import StepPlan
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
    plan: StepPlan
    me: PeerId
    held: dict[PeerId, Held] = field(default_factory=dict)
    given_up: set[PeerId] = field(default_factory=set)
    reports: dict[PeerId, frozenset[PeerId]] = field(default_factory=dict)
    my_report: frozenset[PeerId] | None = None
    sent: bool = False
    decided: bool = False

    @property
    def other_senders(self) -> tuple[PeerId, ...]:
        return tuple(peer for peer in self.plan.senders if peer != self.me)

    @property
    def other_receivers(self) -> tuple[PeerId, ...]:
        return tuple(peer for peer in self.plan.receivers if peer != self.me)

    def frames_settled(self) -> bool:
        return all(peer in self.held or peer in self.given_up for peer in self.other_senders)

    def report(self) -> frozenset[PeerId]:
        """Fix this member's report: the senders whose values it holds. Sent once, never changed."""
        assert self.my_report is None
        self.my_report = frozenset(self.held)
        return self.my_report

    def common_set(self) -> tuple[frozenset[PeerId], frozenset[PeerId]]:
        """The senders the group averages, from the reports held, and the receivers still worth waiting
        for: those with no report here that no report in the set leaves out.

        A receiver counts only once it reported (it is a sender too, for its own unit); a stand-in
        counts when every counted receiver holds its value."""
        assert self.my_report is not None
        reports = {**self.reports, self.me: self.my_report}
        counted = set(reports)
        while True:
            conflicts = {
                peer: sum(1 for other in counted if peer not in reports[other] or other not in reports[peer])
                for peer in counted
            }
            if not any(conflicts.values()):
                break
            # Leave out the receiver in the most conflicts (a tie: the largest id), one at a time, so
            # one peer that holds nobody's value does not empty the set.
            counted.remove(max(counted, key=lambda peer: (conflicts[peer], peer)))
        receivers = set(self.plan.receivers)
        senders = frozenset(
            peer
            for peer in self.plan.senders
            if (peer in counted or peer not in receivers) and all(peer in reports[other] for other in counted)
        )
        pending = frozenset(
            peer
            for peer in self.plan.receivers
            if peer not in reports and all(peer in reports[other] for other in counted)
        )
        return senders, pending

    def missing_from_reports(self) -> set[PeerId]:
        """Senders whose values we lack and another receiver reported lacking too: waiting is useless,
        they cannot end up in the common set."""
        lacking = set(self.other_senders) - set(self.held) - self.given_up
        return {peer for peer in lacking if any(peer not in have for have in self.reports.values())}
