"""Scenario faults and churn: turning ``[[faults]]`` tables and the ``[churn]`` table into events.

Targets that a fault names by ``count`` are drawn from the fault generator at the moment the fault fires,
so they depend only on the seed and on what happened before, never on wall time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyagent_simnet.scenario import SETTABLE_AT_RUNTIME

if TYPE_CHECKING:
    from pyagent_simnet.sim import Sim, SimNode

US_PER_S = 1_000_000
US_PER_MS = 1_000


class FaultDriver:
    def __init__(self, sim: Sim) -> None:
        self.sim = sim
        self.churn = sim.scenario.churn
        self.churn_on = False
        self.crashed: set[int] = (
            set()
        )  # crashed by a fault and not restarted: the liveness phase restarts them
        network, transfers = sim.scenario.network, sim.scenario.transfers
        self._baseline = {
            key: transfers["bandwidth_bps"] if key == "transfer_bandwidth_bps" else network[key]
            for key in SETTABLE_AT_RUNTIME
        }

    def schedule(self) -> None:
        sim = self.sim
        for fault in sim.scenario.faults:
            sim.schedule(int(fault["at_s"] * US_PER_S), self.apply, fault)
        churn = self.churn
        if churn["join_rate_per_s"] > 0 or churn["leave_rate_per_s"] > 0:
            sim.schedule(int(churn["start_s"] * US_PER_S), self._start_churn)

    # ----- one fault

    def apply(self, fault: dict[str, Any]) -> None:
        sim, action = self.sim, fault["action"]
        if action == "partition":
            sides = fault["sides"] or self._split(fault["split"])
            sim.network.partition([list(side) for side in sides], fault["one_way"])
            sim.log_fault(
                action, f"{'one-way ' if fault['one_way'] else ''}{'|'.join(str(len(s)) for s in sides)}"
            )
        elif action == "heal":
            sim.network.heal(sim.now_us)
            sim.log_fault(action, "")
        elif action == "clog":
            net = sim.network
            targets = self._targets(fault, alive=False) if (fault["peers"] or fault["count"]) else []
            net.clogged_peers |= {node.index for node in targets}
            net.clogged_links |= {(int(a), int(b)) for a, b in fault["links"]}
            sim.log_fault(action, f"{len(targets)} peers, {len(fault['links'])} links")
        elif action == "unclog":
            sim.release_held()
            sim.log_fault(action, "")
        elif action in ("crash", "crash-wipe", "leave"):
            targets = self._targets(fault, alive=True)
            for node in targets:
                self._take_down(node, action)
            sim.log_fault(action, _names(targets))
        elif action == "restart":
            targets = [sim.nodes[i] for i in fault["peers"]] or sorted(
                (sim.nodes[i] for i in self.crashed), key=lambda n: n.index
            )[: fault["count"] or None]
            for node in targets:
                self.crashed.discard(node.index)
                sim.restart(node)
            sim.log_fault(action, _names(targets))
        elif action == "pause":
            targets = self._targets(fault, alive=True)
            for node in targets:
                sim.pause(node)
            sim.log_fault(action, _names(targets))
        elif action == "resume":
            targets = [sim.nodes[i] for i in fault["peers"]] or [n for n in sim.nodes if n.paused]
            for node in targets:
                sim.resume(node)
            sim.log_fault(action, _names(targets))
        elif action == "gray":
            targets = self._targets(fault, alive=True)
            for node in targets:
                sim.set_gray(node, int(fault["delay_ms"] * US_PER_MS))
            sim.log_fault(action, f"{_names(targets)} +{fault['delay_ms']} ms")
        elif action == "ungray":
            for node in sim.nodes:
                sim.set_gray(node, 0)
            sim.log_fault(action, "")
        elif action == "set":
            sim.set_param(fault["key"], fault["value"])
            sim.log_fault(action, f"{fault['key']}={fault['value']}")

    def _take_down(self, node: SimNode, action: str) -> None:
        if action == "leave":
            self.sim.leave(node)
            return
        self.crashed.add(node.index)
        self.sim.crash(node, wipe=action == "crash-wipe")

    def _targets(self, fault: dict[str, Any], alive: bool) -> list[SimNode]:
        sim = self.sim
        if fault["peers"]:
            return [sim.nodes[int(i)] for i in fault["peers"] if int(i) < len(sim.nodes)]
        pool = [node for node in sim.nodes if node.up and not node.paused] if alive else list(sim.nodes)
        return sorted(sim.fault_rng.sample(pool, min(fault["count"], len(pool))), key=lambda n: n.index)

    def _split(self, fraction: float) -> list[list[int]]:
        indices = list(range(len(self.sim.nodes)))
        self.sim.fault_rng.shuffle(indices)
        cut = int(len(indices) * fraction)
        return [sorted(indices[:cut]), sorted(indices[cut:])]

    # ----- churn: joins and leaves as two Poisson processes

    def _start_churn(self, _: Any = None) -> None:
        self.churn_on = True
        rates = f"join {self.churn['join_rate_per_s']}/s leave {self.churn['leave_rate_per_s']}/s"
        self.sim.log_fault("churn", rates)
        if self.churn["join_rate_per_s"] > 0:
            self._next(self._join, self.churn["join_rate_per_s"])
        if self.churn["leave_rate_per_s"] > 0:
            self._next(self._leave, self.churn["leave_rate_per_s"])

    def _next(self, fn: Any, rate_per_s: float) -> None:
        gap_us = int(self.sim.churn_rng.expovariate(rate_per_s) * US_PER_S)
        at_us = self.sim.now_us + gap_us
        stop_us = int(self.churn["stop_s"] * US_PER_S)
        if self.churn_on and (not stop_us or at_us < stop_us):
            self.sim.schedule(at_us, fn)

    def _join(self, _: Any) -> None:
        if not self.churn_on:
            return
        if len(self.sim.nodes) < self.churn["peers_max"]:
            self.sim.add_node()
        self._next(self._join, self.churn["join_rate_per_s"])

    def _leave(self, _: Any) -> None:
        if not self.churn_on:
            return
        alive = [node for node in self.sim.nodes if node.up]
        if len(alive) > 1:
            node = alive[self.sim.churn_rng.randrange(len(alive))]
            if self.churn["leave"] == "graceful":
                self.sim.leave(node)
            else:
                node.left = True
                self.sim.crash(node, wipe=self.churn["leave"] == "crash-wipe")
        self._next(self._leave, self.churn["leave_rate_per_s"])

    # ----- the liveness phase

    def heal_all(self) -> None:
        """Undo every fault: stop churn, heal and unclog the network, resume, ungray, restart the crashed."""
        sim = self.sim
        self.churn_on = False
        sim.network.heal(sim.now_us)
        sim.release_held()
        for key, value in self._baseline.items():
            sim.set_param(key, value)
        for node in sim.nodes:
            sim.set_gray(node, 0)
            sim.resume(node)
        for index in sorted(self.crashed):
            sim.restart(sim.nodes[index])
        self.crashed.clear()
        sim.log_fault("heal-all", "liveness phase")


def _names(nodes: list[SimNode]) -> str:
    shown = ",".join(str(node.index) for node in nodes[:8])
    return shown + (f",... ({len(nodes)})" if len(nodes) > 8 else "")
