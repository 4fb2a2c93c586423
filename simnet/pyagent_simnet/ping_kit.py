"""The ping kit: the daemon's standard components (peer table, application ping) and a ping workload.

Scenario table::

    [ping]
    rate_per_s = 0.5        # application pings per peer per second, between random peers
    [ping.checks]
    success_min = 0.5       # safety: the fraction of pings answered during the run

During the run, pings arrive as one Poisson process over the whole mesh (rate = peers x rate_per_s). In
the liveness phase the observer pings a fixed sample of pairs each round until a whole round succeeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pyagent import composition
from pyagent.composition import CoreFactory
from pyagent.proto.ping import PingPeer
from pyagent.proto.ready import Reply
from pyagent_simnet.kits import Kit
from pyagent_simnet.observe import Observer
from pyagent_simnet.schema import Field, nonneg, probability

if TYPE_CHECKING:
    from pyagent_simnet.sim import Sim, SimNode

US_PER_S = 1_000_000
# Pairs probed per liveness round; enough to catch a cut left behind, cheap at 10,000 peers.
LIVENESS_PAIRS = 64
RTT_SAMPLES_MAX = 100_000


class PingKit(Kit):
    name: ClassVar[str] = "ping"
    settings: ClassVar[dict[str, Field]] = {"rate_per_s": Field(float, 0.0, nonneg)}
    checks: ClassVar[dict[str, Field]] = {"success_min": Field(float, 0.0, probability)}
    summary_keys: ClassVar[tuple[str, ...]] = ("pings_ok", "pings_failed")
    sweep_figures: ClassVar[tuple[str, ...]] = ("ping_rtt_p50_us",)

    def components(self, sim: Sim, node: SimNode) -> Sequence[CoreFactory]:
        return composition.STANDARD

    def observer(self, sim: Sim) -> Observer:
        return PingWorkload(sim)


class PingWorkload(Observer):
    name = "ping"

    def __init__(self, sim: Sim) -> None:
        super().__init__()
        self.sim = sim
        table = sim.scenario.kit("ping")
        self.rate_per_s: float = table["rate_per_s"]
        self.success_min: float = table["checks"]["success_min"]
        self.ok = self.failed = 0
        self.rtts_us: list[int] = []
        self._round_pending = 0
        self._round_failed = 0
        self._round_done = False

    def start(self) -> None:
        if self.rate_per_s > 0:
            self._schedule_next()

    def _schedule_next(self) -> None:
        total = self.rate_per_s * max(1, len(self.sim.nodes))
        gap_us = int(self.sim.workload_rng.expovariate(total) * US_PER_S)
        self.sim.schedule(self.sim.now_us + gap_us, self._fire)

    def _fire(self, _: Any) -> None:
        sim, rng = self.sim, self.sim.workload_rng
        count = len(sim.nodes)
        if count >= 2:
            src = sim.nodes[rng.randrange(count)]
            dst = sim.nodes[rng.randrange(count)]
            if src is not dst:
                sim.request(src, PingPeer(dst.peer), self._on_reply)
        self._schedule_next()

    def _on_reply(self, node: SimNode, reply: Reply) -> None:
        if reply.error is None:
            self.ok += 1
            if len(self.rtts_us) < RTT_SAMPLES_MAX:
                self.rtts_us.append(int(reply.value))  # type: ignore[call-overload]
        else:
            self.failed += 1

    def start_liveness(self) -> None:
        self._round_done = False
        self._probe_round()

    def _probe_round(self) -> None:
        sim, rng = self.sim, self.sim.workload_rng
        up = sim.up_nodes()
        if len(up) < 2:
            self._round_done = True
            return
        self._round_pending = LIVENESS_PAIRS
        self._round_failed = 0
        for _ in range(LIVENESS_PAIRS):
            src, dst = rng.sample(up, 2)
            sim.request(src, PingPeer(dst.peer), self._on_probe)

    def _on_probe(self, node: SimNode, reply: Reply) -> None:
        self._round_pending -= 1
        if reply.error is not None:
            self._round_failed += 1
        if self._round_pending == 0:
            if self._round_failed == 0:
                self._round_done = True
            else:
                self._probe_round()

    def converged(self) -> bool:
        return self._round_done

    def check(self) -> None:
        total = self.ok + self.failed
        if total and self.ok / total < self.success_min:
            self.violations.append(
                f"ping success {self.ok / total:.3f} below ping.checks.success_min={self.success_min}"
            )

    def figures(self) -> dict[str, Any]:
        rtts = sorted(self.rtts_us)
        out: dict[str, Any] = {"pings_ok": self.ok, "pings_failed": self.failed}
        if rtts:
            out["ping_rtt_p50_us"] = rtts[len(rtts) // 2]
            out["ping_rtt_p99_us"] = rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)]
        return out
