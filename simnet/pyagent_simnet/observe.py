"""The observer interface: how measurements and checkers watch a run without touching the loop.

Observers get callbacks from the simulator and report figures and problems at the end. A checker's
``violations`` are safety failures (something that must never happen happened); ``converged`` answers the
liveness phase's question (has the mesh settled?).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyagent_simnet.sim import SimNode


class Observer:
    name = "observer"

    def __init__(self) -> None:
        self.violations: list[str] = []
        # Figures that every sweep can plot; filled by ``figures``.
        self.series: dict[str, list[tuple[float, float]]] = {}

    def start(self) -> None:
        """The scenario is built; schedule periodic work here."""

    def on_node_up(self, node: SimNode) -> None:
        """A node's NodeCore has just been created (first start or restart)."""

    def on_node_down(self, node: SimNode) -> None:
        """A node has crashed or left (its disk has already lost what the crash loses)."""

    def on_notice(self, node: SimNode, item: object, now_us: int) -> None:
        """One of a node's ``Ready.notices`` (membership's ``MemberChanged``, a kit's own records...)."""

    def on_notices(self, node: SimNode, items: list[Any], now_us: int) -> None:
        """The notices of one step, in order; one call for all of them (default: ``on_notice`` each)."""
        for item in items:
            self.on_notice(node, item, now_us)

    def check(self) -> None:
        """The safety phase is over: append to ``violations`` whatever went wrong during it."""

    def start_liveness(self) -> None:
        """Every fault is healed; from now on the observer should drive the mesh towards convergence."""

    def converged(self) -> bool:
        return True

    def figures(self) -> dict[str, Any]:
        return {}
