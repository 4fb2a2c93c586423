"""Membership's bytes on the wire beside Serf's, counted one way for both (``wire_counters``).

One system after the other, N agents on 127.0.0.1: every byte of every packet to or from an agent's
port (TCP/UDP and IP headers included), divided by N and by the window: what one member costs the
network. Three windows each: idle; a ``kill -9`` until every survivor holds the victim dead (Serf:
failed); a graceful leave until every remaining member holds the leaver left. Churn is given three
ways: the bytes of those two windows over their summed length ("until known"), which flatters the system
that detects later, since it spreads the same work over more seconds; the same bytes per member with no
time in it ("per kill and leave"); and the bytes of a fixed ``CHURN_WINDOW_S`` from the kill, the leave
inside it, so that both systems are measured at one churn rate: a kill and a leave every 15 s.

One run's figures move with when the periodic exchanges (push-pulls, metadata refreshes) fall into its
windows, by 20 % and more; so each system runs several times on fresh agents, and the figures pool the runs:
bytes and seconds summed, times averaged, with the range of the per-run churn figure beside them.

pyagent runs twice: with the KV store's Raft ticks made hourly (``[kv] tick_ms``), so that the figure is
membership's alone, and with the default config, whose 64 Raft groups heartbeat every 100 ms.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyagent.localmesh import LocalPeer, converged, member_states, start_mesh, stop_all, wait_until
from serf_agents import SerfAgent, start_cluster, stop_cluster
from wire_counters import WireCount, WireCounters, wire_counters

# Raft ticks an hour apart: no elections, no heartbeats, so only membership talks.
KV_QUIET = "\n[kv]\ntick_ms = 3600000\n"
SETTLE_S = 5.0
# Long enough for Serf to hold a killed agent failed (5.5-8.5 s here) and a leaver left (under 1 s).
CHURN_WINDOW_S = 15.0
POLL_S = 0.1
Views = dict[str, dict[str, str]]


@dataclass
class Cluster:
    """What the harness needs of a running system: its members' names and ports, and a look at views."""

    names: list[str]
    ports: list[int]
    views: Callable[[Sequence[int]], Views]
    kill: Callable[[int], None]
    leave: Callable[[int], None]
    dead_state: str
    converged: Callable[[], bool]


@dataclass
class WireFigures:
    idle: WireCount
    idle_s: float
    churn: WireCount
    churn_s: float
    # From the kill to CHURN_WINDOW_S after it (longer only if detection took longer).
    churn_fixed: WireCount
    churn_fixed_s: float
    dead_everywhere_s: float
    left_everywhere_s: float
    members: int
    # Kills-and-leaves the counts hold: one a run, more once runs are pooled.
    events: int = 1

    def per_member_per_s(self, count: WireCount, window_s: float) -> float:
        return count.bytes / self.members / window_s


def _until_all_hold(
    cluster: Cluster, viewers: Sequence[int], subject: int, states: set[str], timeout_s: float
) -> float:
    started = time.monotonic()
    name = cluster.names[subject]
    while True:
        views = cluster.views(viewers)
        if all(views[cluster.names[v]].get(name) in states for v in viewers):
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{name} not {states} everywhere within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def measure(cluster: Cluster, idle_s: float, timeout_s: float) -> WireFigures:
    """Once converged and settled: idle, then kill the last member, then make the one before it leave;
    counters around each."""
    wait_until(cluster.converged, 30.0, "convergence", POLL_S)
    time.sleep(SETTLE_S)
    count = len(cluster.names)
    victim, leaver = count - 1, count - 2
    with wire_counters(cluster.ports) as counters:
        idle, idle_window = _window(counters, lambda: time.sleep(idle_s))
        survivors = [i for i in range(count) if i != victim]
        before_kill, killed_at = counters.read(), time.monotonic()
        cluster.kill(victim)
        kill_count, dead_s = _window(
            counters, lambda: _until_all_hold(cluster, survivors, victim, {cluster.dead_state}, timeout_s)
        )
        stayers = [i for i in survivors if i != leaver]
        cluster.leave(leaver)
        leave_count, left_s = _window(
            counters, lambda: _until_all_hold(cluster, stayers, leaver, {"left"}, timeout_s)
        )
        time.sleep(max(0.0, killed_at + CHURN_WINDOW_S - time.monotonic()))
        churn_fixed, churn_fixed_s = counters.read() - before_kill, time.monotonic() - killed_at
    return WireFigures(
        idle=idle,
        idle_s=idle_window,
        churn=kill_count + leave_count,
        churn_s=dead_s + left_s,
        churn_fixed=churn_fixed,
        churn_fixed_s=churn_fixed_s,
        dead_everywhere_s=dead_s,
        left_everywhere_s=left_s,
        members=count,
    )


def _window(counters: WireCounters, during: Callable[[], object]) -> tuple[WireCount, float]:
    before, started = counters.read(), time.monotonic()
    during()
    return counters.read() - before, time.monotonic() - started


def pooled(runs: Sequence[WireFigures]) -> WireFigures:
    """Several runs of one system as one: bytes and seconds summed, so that each per-second figure is the
    runs' time-weighted mean; detection and leave times averaged."""

    def total(pick: Callable[[WireFigures], WireCount]) -> WireCount:
        counts = [pick(run) for run in runs]
        return sum(counts[1:], counts[0])

    return WireFigures(
        idle=total(lambda run: run.idle),
        idle_s=sum(run.idle_s for run in runs),
        churn=total(lambda run: run.churn),
        churn_s=sum(run.churn_s for run in runs),
        churn_fixed=total(lambda run: run.churn_fixed),
        churn_fixed_s=sum(run.churn_fixed_s for run in runs),
        dead_everywhere_s=statistics.mean(run.dead_everywhere_s for run in runs),
        left_everywhere_s=statistics.mean(run.left_everywhere_s for run in runs),
        members=runs[0].members,
        events=sum(run.events for run in runs),
    )


def churn_fixed_per_s(figures: WireFigures) -> float:
    return figures.per_member_per_s(figures.churn_fixed, figures.churn_fixed_s)


def _tcp_port(peer: LocalPeer) -> int:
    return int(peer.addr.split("/tcp/")[1].split("/")[0])


def pyagent_run(base: Path, count: int, idle_s: float, timeout_s: float, config_extra: str) -> WireFigures:
    peers = start_mesh(base, count, config_extra=config_extra)
    try:
        cluster = Cluster(
            names=[p.peer_id for p in peers],
            ports=[_tcp_port(p) for p in peers],
            views=lambda viewers: {peers[v].peer_id: member_states(peers[v]) for v in viewers},
            kill=lambda i: peers[i].kill(),
            leave=lambda i: peers[i].terminate(),
            dead_state="dead",
            converged=lambda: converged(peers),
        )
        return measure(cluster, idle_s, timeout_s)
    finally:
        stop_all(peers)


def serf_run(base: Path, count: int, idle_s: float, timeout_s: float, encrypt: bool = False) -> WireFigures:
    agents: list[SerfAgent] = start_cluster(base, count, encrypt)
    try:
        names = [a.name for a in agents]
        cluster = Cluster(
            names=names,
            ports=[a.gossip_port for a in agents],
            views=lambda viewers: {agents[v].name: agents[v].members() for v in viewers},
            kill=lambda i: agents[i].kill(),
            leave=lambda i: agents[i].leave(),
            dead_state="failed",
            converged=lambda: all(set(a.members()) == set(names) for a in agents),
        )
        return measure(cluster, idle_s, timeout_s)
    finally:
        stop_cluster(agents)


Runs = Sequence[WireFigures]


def rows(ours: Runs, whole: Runs, serf: Runs, sealed_serf: Runs) -> list[tuple[str, ...]]:
    """One row per figure, each system's runs pooled: membership alone, the whole default daemon, then Serf
    and Serf with a gossip key (our datagrams are sealed; so are its packets then), each with ours / theirs.
    An empty list is a system that did not run."""
    systems = [pooled(runs) if runs else None for runs in (ours, whole, serf, sealed_serf)]

    def line(label: str, pick: Callable[[WireFigures], float], fmt: str) -> tuple[str, ...]:
        mine, everything, *baselines = systems
        assert mine is not None and everything is not None
        cells = [label, fmt.format(pick(mine)), fmt.format(pick(everything))]
        for baseline in baselines:
            if baseline is None:
                cells += ["-", "-"]
            else:
                ratio = f"{pick(mine) / pick(baseline):.2f}x" if pick(baseline) else "-"
                cells += [fmt.format(pick(baseline)), ratio]
        return tuple(cells)

    def spread(runs: Runs) -> str:
        values = [churn_fixed_per_s(run) for run in runs]
        return f"{min(values):.0f}-{max(values):.0f}" if values else "-"

    return [
        ("figure", "pyagent membership", "pyagent default", "Serf", "ratio", "Serf -encrypt", "ratio"),
        line("idle bytes/s per member", lambda f: f.per_member_per_s(f.idle, f.idle_s), "{:.0f}"),
        line("idle packets/s per member", lambda f: f.idle.packets / f.members / f.idle_s, "{:.1f}"),
        line(
            "  of which pure TCP ACKs",
            lambda f: f.idle.pure_ack_packets / f.members / f.idle_s,
            "{:.1f}",
        ),
        line(f"churn bytes/s per member, {CHURN_WINDOW_S:.0f} s window", churn_fixed_per_s, "{:.0f}"),
        ("  range over runs", spread(ours), spread(whole), spread(serf), "", spread(sealed_serf), ""),
        line(
            "churn bytes per member per kill and leave",
            lambda f: f.churn.bytes / f.members / f.events,
            "{:.0f}",
        ),
        line(
            "churn bytes/s per member, until known",
            lambda f: f.per_member_per_s(f.churn, f.churn_s),
            "{:.0f}",
        ),
        line("kill -9 -> dead everywhere (s)", lambda f: f.dead_everywhere_s, "{:.1f}"),
        line("leave -> left everywhere (s)", lambda f: f.left_everywhere_s, "{:.2f}"),
    ]
