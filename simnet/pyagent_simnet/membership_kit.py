"""The membership kit (SWIM + Lifeguard): how nodes join and leave, and how the mesh is judged.

Scenario table::

    [membership]
    preset = "lan"          # membership.Config preset: lan | wan
    seeds_per_peer = 2      # how many earlier peers each new peer is given to join
    lifeguard = true        # false: plain SWIM
    probe_interval_ms = 700 # ...and any other membership.Config field
    [membership.checks]
    false_positives_per_member_hour_max = 0   # safety: tolerated false "dead" verdicts
    detection_bound_s = 30                    # safety: crash -> dead at every survivor
    convergence_bound_s = 0                   # safety: a fresh mesh fully converged by then (0 = unchecked)

The observer keeps every node's view incrementally from the ``MemberChanged`` notices of each Ready, and
the ground truth from the simulator (who is really up). From the two it derives, at O(1) per change:
- convergence: the fraction of (observer, member) pairs on which the observer is right;
- false positives: a member declared dead while it was up, unpaused, not slowed, and untouched by any
  fault, as was its accuser (the safety invariant, with a tolerated rate per member-hour);
- detection latency: from a crash to the first, and to the last, live observer marking it dead.
At the end it checks that the incremental views equal each core's member table, so the figures can be
trusted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pyagent.composition import CoreFactory
from pyagent.errors import ConfigError
from pyagent.proto import membership
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.membership.commands import Join, Leave
from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.membership.records import LIVE_STATES, MemberChanged, MemberRecord, State
from pyagent.proto.types import PeerId
from pyagent_simnet.kits import Kit
from pyagent_simnet.observe import Observer
from pyagent_simnet.schema import Field, at_least, nonneg, one_of

if TYPE_CHECKING:
    from pyagent_simnet.sim import Sim, SimNode

US_PER_S = 1_000_000
US_PER_MS = 1_000
S_PER_HOUR = 3_600
# "Most of the mesh agrees": the fraction of right (observer, member) pairs reported as convergence_99_s.
CONVERGED_MOST = 0.99
PRESETS: dict[str, membership.Config] = {"lan": membership.LAN, "wan": membership.WAN}
# Scenario-only switch: `lifeguard = false` measures plain SWIM.
LIFEGUARD_KEY = "lifeguard"
_FORMED_VIEW = "membership.formed_view"
_CONFIG = "membership.config"
# Transition counter names; an enum's .name is a property lookup, and a join storm notices a million times.
_STATE_NAMES = {state: state.name.lower() for state in State}
# A graceful leaver keeps running this many gossip intervals so that its goodbye spreads.
LEAVE_LINGER_GOSSIP_INTERVALS = 5


def config_for(table: Mapping[str, Any], source: str) -> membership.Config:
    """The membership.Config of a checked ``[membership]`` table: its preset, then its free-form keys."""
    known = {f.name for f in dataclasses.fields(membership.Config)}
    overrides = {k: v for k, v in table.items() if k not in MembershipKit.settings and k != "checks"}
    # simnet counts every frame's bytes itself, so membership need not re-encode messages to count them.
    settings = {"count_bytes": False, **overrides}
    for key in settings:
        if key not in known:
            raise ConfigError(f"{source}: membership.{key}: unknown key")
    try:
        config = dataclasses.replace(PRESETS[table["preset"]], **settings)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: membership: {exc}") from None
    return config if table[LIFEGUARD_KEY] else config.without_lifeguard()


def _config(sim: Sim) -> membership.Config:
    config: membership.Config | None = sim.kit_state.get(_CONFIG)
    if config is None:
        config = config_for(sim.scenario.kit("membership"), sim.scenario.source)
        sim.kit_state[_CONFIG] = config
    return config


def _addrs(peer: PeerId) -> tuple[str, ...]:
    return (f"/sim/{peer}",)


def _starts_formed(sim: Sim, node: SimNode) -> bool:
    # In a mesh that starts formed, the first peers' first processes know each other from the start.
    # Peers added later, and restarted ones, join as usual.
    top = sim.scenario.top
    return top["start"] == "formed" and node.epoch == 0 and node.index < top["peers"]


def _formed_view(sim: Sim) -> tuple[MemberRecord, ...]:
    """What every member of a formed mesh holds about the others: each alive at its first incarnation,
    with the metadata every simulated peer starts with. Made once per run (records are immutable)."""
    view: tuple[MemberRecord, ...] | None = sim.kit_state.get(_FORMED_VIEW)
    if view is None:
        initial = sim.nodes[: sim.scenario.top["peers"]]
        view = tuple(MemberRecord(n.peer, _addrs(n.peer), State.ALIVE, 0, 0, 1, Metadata()) for n in initial)
        sim.kit_state[_FORMED_VIEW] = view
    return view


class MembershipKit(Kit):
    name: ClassVar[str] = "membership"
    settings: ClassVar[dict[str, Field]] = {
        "preset": Field(str, "lan", one_of(*PRESETS)),
        "seeds_per_peer": Field(int, 3, at_least(1)),
        LIFEGUARD_KEY: Field(bool, True),
    }
    checks: ClassVar[dict[str, Field]] = {
        "false_positives_per_member_hour_max": Field(float, 0.0, nonneg),
        "detection_bound_s": Field(float, 0.0, nonneg),
        "convergence_bound_s": Field(float, 0.0, nonneg),
    }
    summary_keys: ClassVar[tuple[str, ...]] = (
        "false_positives",
        "detection_p50_s",
        "detection_max_s",
        "convergence_s",
    )
    sweep_figures: ClassVar[tuple[str, ...]] = (
        "detection_p50_s",
        "false_positives_per_member_hour",
        "convergence_s",
    )

    def table(self, given: Mapping[str, Any], source: str) -> dict[str, Any]:
        # Any membership.Config field may be set here; config_for checks the free-form keys.
        out = self.fill(given, source, free_form=True)
        config_for(out, source)
        return out

    def components(self, sim: Sim, node: SimNode) -> Sequence[CoreFactory]:
        config = _config(sim)
        known = _formed_view(sim) if _starts_formed(sim, node) else ()

        def build(ctx: NodeContext) -> Component:
            # Built as the daemon builds it: its own generator (from the node's seed and its name) and
            # its own storage, where it keeps its incarnation ceiling and address book across restarts.
            name = membership.Membership.name
            return membership.Membership(
                ctx.local_peer,
                ctx.rng(name),
                config,
                local_addrs=_addrs(ctx.local_peer),
                known=known,
                storage=ctx.storage(name),
            )

        return (build,)

    def on_start(self, sim: Sim, node: SimNode) -> None:
        if _starts_formed(sim, node):
            sim.request(node, Join(seeds=()))
            return
        candidates = [other for other in sim.nodes if other.up and other is not node]
        if node.index > 0 and node.epoch == 0:
            # A first start joins peers that started before it, as an operator's seed list would name.
            candidates = [other for other in candidates if other.index < node.index] or candidates
        count = min(sim.scenario.kit("membership")["seeds_per_peer"], len(candidates))
        seeds = sim.join_rng.sample(candidates, count) if count else []
        sim.request(node, Join(seeds=tuple((s.peer, _addrs(s.peer)) for s in seeds)))

    def on_leave(self, sim: Sim, node: SimNode) -> int:
        sim.request(node, Leave())
        return LEAVE_LINGER_GOSSIP_INTERVALS * _config(sim).gossip_interval_ms * US_PER_MS

    def observer(self, sim: Sim) -> Observer:
        return MembershipObserver(sim)

    def plots(self, result: Mapping[str, Any], out_dir: Path) -> list[Path]:
        from pyagent_simnet import report  # matplotlib only when plots are asked for

        written = []
        series = result.get("series", {})
        if series.get("convergence"):
            written.append(
                report.line(
                    out_dir / "convergence.png",
                    series["convergence"],
                    "simulated time (s)",
                    "fraction of correct (observer, member) pairs",
                    "Membership convergence",
                )
            )
        if result.get("detection_latencies_s"):
            written.append(
                report.cdf(
                    out_dir / "detection_cdf.png",
                    result["detection_latencies_s"],
                    "detection latency (s): crash to dead everywhere",
                    "Detection latency CDF",
                )
            )
        return written


class MembershipObserver(Observer):
    name = "membership"

    def __init__(self, sim: Sim) -> None:
        super().__init__()
        self.sim = sim
        checks = sim.scenario.kit("membership")["checks"]
        self.fp_max_per_member_hour: float = checks["false_positives_per_member_hour_max"]
        self.detection_bound_s: float = checks["detection_bound_s"]
        self.convergence_bound_s: float = checks["convergence_bound_s"]
        self.sample_us = int(sim.scenario.top["sample_interval_s"] * US_PER_S)
        config = _config(sim)
        members = max(2, sim.scenario.top["peers"])
        self.grace_us = int(
            (
                config.suspicion_max_ms(members)
                + config.push_pull_period_ms(members)
                + 2 * config.probe_interval_ms
            )
            * US_PER_MS
        )
        # view[i]: indices node i believes live (alive or suspect), itself excluded.
        self.view: dict[int, set[int]] = {}
        self.wrong: dict[int, int] = {}  # per up observer: members it is wrong about
        self.wrong_total = 0
        self.up: set[int] = set()
        self.false_positives = 0
        self.false_positive_examples: list[str] = []
        self.member_seconds = 0.0
        self._member_seconds_at_us = 0
        self.crash_at_us: dict[int, int] = {}
        self.first_dead_us: dict[int, int] = {}
        self.dead_by: dict[int, set[int]] = {}
        self.detections_everywhere_s: list[float] = []
        self.detections_first_s: list[float] = []
        self.disseminations_s: list[float] = []
        self.converged_at_s: float | None = None
        self.converged_99_s: float | None = None
        self.series["convergence"] = []
        self.transitions: dict[str, int] = {}

    def start(self) -> None:
        self.sim.schedule(0, self._sample)

    # ----- ground truth

    def _account_member_time(self) -> None:
        now_us = self.sim.now_us
        self.member_seconds += len(self.up) * (now_us - self._member_seconds_at_us) / US_PER_S
        self._member_seconds_at_us = now_us

    def on_node_up(self, node: SimNode) -> None:
        self._account_member_time()
        index = node.index
        for observer in self.up:
            # Every observer is now wrong about this member until it learns it is alive.
            if index not in self.view[observer]:
                self._adjust(observer, 1)
            else:
                self._adjust(observer, -1)
        self.up.add(index)
        self.view[index] = set()
        self.wrong[index] = 0
        self._adjust(index, len(self.up) - 1)
        self.crash_at_us.pop(index, None)

    def on_node_down(self, node: SimNode) -> None:
        self._account_member_time()
        index = node.index
        self.up.discard(index)
        self.wrong_total -= self.wrong.pop(index, 0)
        self.view.pop(index, None)
        for observer in self.up:
            self._adjust(observer, 1 if index in self.view[observer] else -1)
        if not node.left:
            self.crash_at_us[index] = self.sim.now_us
            self.dead_by[index] = set()
            self.first_dead_us.pop(index, None)

    def _adjust(self, observer: int, delta: int) -> None:
        self.wrong[observer] += delta
        self.wrong_total += delta

    # ----- what nodes believe

    def on_notice(self, node: SimNode, item: object, now_us: int) -> None:
        self.on_notices(node, [item], now_us)

    def on_notices(self, node: SimNode, items: list[Any], now_us: int) -> None:
        observer = node.index
        if observer not in self.up:
            return
        index_of, view, transitions, up = self.sim.index_of, self.view[observer], self.transitions, self.up
        for item in items:
            if not isinstance(item, MemberChanged):
                continue
            subject = index_of.get(item.peer)
            if subject is None or subject == observer:
                continue
            name = _STATE_NAMES[item.new_state]
            transitions[name] = transitions.get(name, 0) + 1
            believed = item.new_state in LIVE_STATES
            if believed != (subject in view):
                if believed:
                    view.add(subject)
                else:
                    view.discard(subject)
                self._adjust(observer, -1 if believed == (subject in up) else 1)
            if item.new_state == State.DEAD:
                self._on_dead(observer, subject, now_us)

    def _on_dead(self, observer: int, subject: int, now_us: int) -> None:
        sim = self.sim
        target = sim.nodes[subject]
        if (
            target.up
            and not target.paused
            and not target.gray_delay_us
            and self._undisturbed(observer, subject)
        ):
            self.false_positives += 1
            if len(self.false_positive_examples) < 5:
                self.false_positive_examples.append(
                    f"t={now_us / US_PER_S:.3f}s {sim.nodes[observer].peer} declared {target.peer} dead"
                )
            return
        crashed_us = self.crash_at_us.get(subject)
        if crashed_us is None:
            return
        by = self.dead_by[subject]
        if not by:
            self.first_dead_us[subject] = now_us
            self.detections_first_s.append((now_us - crashed_us) / US_PER_S)
        by.add(observer)
        if self.up <= by:
            self.detections_everywhere_s.append((now_us - crashed_us) / US_PER_S)
            self.disseminations_s.append((now_us - self.first_dead_us[subject]) / US_PER_S)
            del self.crash_at_us[subject]

    def _undisturbed(self, observer: int, subject: int) -> bool:
        """Nothing explains the declaration: no fault touches the two peers now or did within the grace
        window, which covers a maximal suspicion plus the anti-entropy period that may still carry an old
        rumour. A cut counts for every peer, not just the pairs it separates: after a one-way cut or a
        heal, a dead claim made across it legitimately reaches peers that could see the subject."""
        sim, net = self.sim, self.sim.network
        since_us = sim.now_us - self.grace_us
        disturbed_us = max(sim.nodes[subject].disturbed_us, sim.nodes[observer].disturbed_us)
        if disturbed_us > since_us or net.touches(subject) or net.touches(observer):
            return False
        lifted = net.lifted
        return not (
            lifted is not None
            and net.lifted_at_us > since_us
            and (lifted.touches(subject) or lifted.touches(observer))
        )

    # ----- sampling and checks

    def _sample(self, _: Any = None) -> None:
        up = len(self.up)
        pairs = up * max(0, len(self.sim.nodes) - 1)
        fraction = 1.0 - self.wrong_total / pairs if pairs else 1.0
        now_s = self.sim.now_us / US_PER_S
        self.series["convergence"].append((now_s, round(fraction, 6)))
        if self.converged_99_s is None and fraction >= CONVERGED_MOST and up == len(self.sim.nodes):
            self.converged_99_s = now_s
        if self.converged_at_s is None and self.wrong_total == 0 and up == len(self.sim.nodes):
            self.converged_at_s = now_s
        self.sim.schedule(self.sim.now_us + self.sample_us, self._sample)

    def converged(self) -> bool:
        return self.wrong_total == 0

    def check(self) -> None:
        self._account_member_time()
        rate = self.false_positives_per_member_hour()
        if rate > self.fp_max_per_member_hour:
            self.violations.append(
                f"{self.false_positives} false positives ({rate:.2f}/member-hour > membership.checks."
                f"false_positives_per_member_hour_max={self.fp_max_per_member_hour}); first: "
                + "; ".join(self.false_positive_examples)
            )
        if self.detection_bound_s and self.detections_everywhere_s:
            worst = max(self.detections_everywhere_s)
            if worst > self.detection_bound_s:
                self.violations.append(
                    f"a crash took {worst:.2f}s to be marked dead everywhere > "
                    f"membership.checks.detection_bound_s={self.detection_bound_s}"
                )
        if self.detection_bound_s:
            late = [
                i
                for i, t in self.crash_at_us.items()
                if (self.sim.now_us - t) / US_PER_S > self.detection_bound_s
            ]
            if late:
                self.violations.append(
                    f"{len(late)} crashed peers not marked dead everywhere within "
                    f"membership.checks.detection_bound_s={self.detection_bound_s} "
                    f"(e.g. {self.sim.nodes[late[0]].peer})"
                )
        if self.convergence_bound_s and (
            self.converged_at_s is None or self.converged_at_s > self.convergence_bound_s
        ):
            self.violations.append(
                "fresh mesh not converged within membership.checks.convergence_bound_s="
                f"{self.convergence_bound_s} (converged at {self.converged_at_s})"
            )
        self._cross_check_views()

    def _cross_check_views(self) -> None:
        """The incremental views must equal the cores' own tables, or every figure above is wrong.

        Reads each table directly rather than sending ``ListMembers``, so that checking does not step the
        cores and change the run."""
        for index in sorted(self.up):
            node = self.sim.nodes[index]
            assert node.core is not None
            component = node.core.component("membership")
            assert isinstance(component, membership.Membership)
            live = {
                self.sim.index_of[r.peer]
                for r in component.members()
                if r.state in LIVE_STATES and r.peer != node.peer and r.peer in self.sim.index_of
            }
            if live != self.view[index]:
                self.violations.append(f"simnet bookkeeping: view of {node.peer} differs from ListMembers")
                return

    def _counters(self) -> dict[str, int]:
        """The components' own counters summed over the peers up at the end (a crash loses its counts)."""
        total: dict[str, int] = {}
        for index in sorted(self.up):
            core = self.sim.nodes[index].core
            assert core is not None
            component = core.component("membership")
            assert isinstance(component, membership.Membership)
            for name, count in component.counters.items():
                total[name] = total.get(name, 0) + count
        return dict(sorted(total.items()))

    def false_positives_per_member_hour(self) -> float:
        hours = self.member_seconds / S_PER_HOUR
        return self.false_positives / hours if hours else 0.0

    def figures(self) -> dict[str, Any]:
        self._account_member_time()
        out: dict[str, Any] = {
            "false_positives": self.false_positives,
            "false_positives_per_member_hour": round(self.false_positives_per_member_hour(), 4),
            "member_hours": round(self.member_seconds / S_PER_HOUR, 3),
            "convergence_s": self.converged_at_s,
            "convergence_99_s": self.converged_99_s,
            "detection_latencies_s": [round(v, 4) for v in self.detections_everywhere_s],
            "crashes_undetected_at_end": len(self.crash_at_us),
            "membership_transitions": dict(sorted(self.transitions.items())),
            "wrong_pairs_at_end": self.wrong_total,
            "membership_counters_of_up_peers": self._counters(),
        }
        for name, values in (
            ("detection", self.detections_everywhere_s),
            ("first_detection", self.detections_first_s),
            ("dissemination", self.disseminations_s),
        ):
            if values:
                ordered = sorted(values)
                out[f"{name}_p50_s"] = round(ordered[len(ordered) // 2], 4)
                out[f"{name}_p99_s"] = round(ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)], 4)
                out[f"{name}_max_s"] = round(ordered[-1], 4)
        return out
