"""Lifeguard's two local mechanisms: the dynamic suspicion timeout and the local health score.

Both follow hashicorp/memberlist (``suspicion.go``, ``awareness.go``), which implements the Lifeguard
paper (Dadgar et al., 2018).
"""

from __future__ import annotations

import math

from pyagent.proto.types import PeerId


class Suspicion:
    """One suspicion of one member: its timeout shrinks as independent accusers confirm it.

    With ``k`` expected confirmations, after ``n`` of them the timeout is
    ``max - (max - min) * log(n + 1) / log(k + 1)``, never below ``min``; so a member that several
    peers find silent is declared dead sooner, and one slow accuser alone waits the longest.
    """

    __slots__ = ("_accusers", "incarnation", "k", "max_us", "min_us", "start_us")

    def __init__(
        self, accuser: PeerId, incarnation: int, k: int, min_us: int, max_us: int, start_us: int
    ) -> None:
        self._accusers = {accuser}
        self.incarnation = incarnation
        self.k = k
        self.min_us = min_us
        self.max_us = max_us
        self.start_us = start_us

    @property
    def confirmations(self) -> int:
        return len(self._accusers) - 1

    def confirm(self, accuser: PeerId) -> bool:
        """Count ``accuser`` once; returns whether the deadline moved."""
        if self.confirmations >= self.k or accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        return True

    def deadline_us(self) -> int:
        if self.k < 1:
            return self.start_us + self.min_us
        fraction = math.log(self.confirmations + 1) / math.log(self.k + 1)
        timeout_us = self.max_us - fraction * (self.max_us - self.min_us)
        return self.start_us + max(self.min_us, math.floor(timeout_us))


class Awareness:
    """The local health score: 0 is healthy; each point slows our own probing by one more interval."""

    __slots__ = ("score", "score_max")

    def __init__(self, awareness_max: int) -> None:
        self.score_max = awareness_max - 1
        self.score = 0

    def apply(self, delta: int) -> None:
        self.score = min(self.score_max, max(0, self.score + delta))

    def scale(self, value: int) -> int:
        return value * (self.score + 1)
