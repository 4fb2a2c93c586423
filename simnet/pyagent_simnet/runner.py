"""One whole experiment: the safety phase with every fault, then a liveness phase with every fault healed.

The exit codes tell the three ways a run can fail apart, so a script or CI job can react to each:
0 ok, 1 safety violation, 2 bad input (the CLI's ConfigError), 3 liveness failure, 4 crash (an exception
escaped a NodeCore or the simulator itself: always a bug, and the replay command reproduces it).
"""

from __future__ import annotations

import resource
import shlex
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyagent.errors import ConfigError
from pyagent_simnet.sim import US_PER_S, Sim

EXIT_OK = 0
EXIT_SAFETY = 1
EXIT_BAD_INPUT = 2
EXIT_LIVENESS = 3
EXIT_CRASH = 4


@dataclass(slots=True)
class Outcome:
    exit_code: int
    result: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def replay_command(
    prog: str, scenario: str, seed: int, overrides: tuple[str, ...], interpreted: bool = False
) -> str:
    """The command that replays a run: same scenario, seed and overrides (``--interpreted`` only if the
    run had it; the trace is the same either way)."""
    parts = [*shlex.split(prog), "run", _absolute(scenario), "--seed", str(seed)]
    if interpreted:
        parts.append("--interpreted")
    for item in overrides:
        parts += ["--set", item]
    return shlex.join(parts)


def _absolute(scenario: str) -> str:
    """A scenario file as an absolute path, so the replay line works from any directory; a shipped
    scenario's name (no such file here) stays a name."""
    path = Path(scenario)
    return str(path.resolve()) if path.exists() else scenario


def run_scenario(sim: Sim) -> Outcome:
    """Run ``sim`` through both phases and collect every figure. Never raises for a failing run."""
    started = time.perf_counter()
    checks = sim.scenario.checks
    problems: list[str] = []
    exit_code = EXIT_OK
    liveness_s: float | None = None
    try:
        duration_s = sim.scenario.top["duration_s"]
        late = _LateWindow(sim, duration_s)
        sim.run(duration_s)
        late.close()
        for observer in sim.observers:
            observer.check()
            problems += [f"safety: {v}" for v in observer.violations]
        if problems:
            exit_code = EXIT_SAFETY
        elif checks["liveness"]:
            liveness_s = _liveness(sim, checks["liveness_bound_s"])
            if liveness_s is None:
                exit_code = EXIT_LIVENESS
                problems.append(
                    f"liveness: not converged within checks.liveness_bound_s={checks['liveness_bound_s']}"
                    f" after every fault was healed ({_unconverged(sim)})"
                )
    except ConfigError:
        raise  # bad input met while building a node (a component refusing its [config] table): exit 2
    except Exception:
        exit_code = EXIT_CRASH
        problems.append("crash: " + traceback.format_exc().rstrip())
    wall_s = time.perf_counter() - started
    result = collect(sim, wall_s)
    result["liveness_converged_after_s"] = liveness_s
    if exit_code != EXIT_CRASH:
        result.update(late.figures())
    result["exit_code"] = exit_code
    result["problems"] = problems
    return Outcome(exit_code, result, problems)


class _LateWindow:
    """Traffic over the second half of the safety phase: the steady state, after any join storm."""

    def __init__(self, sim: Sim, duration_s: float) -> None:
        self.sim = sim
        self.start: tuple[int, int, int] | None = None
        self.end: tuple[int, int, int] | None = None
        sim.schedule(int(duration_s * US_PER_S / 2), self._mark)

    def _totals(self) -> tuple[int, int, int]:
        nodes = self.sim.nodes
        return (self.sim.now_us, sum(n.sent_bytes for n in nodes), sum(n.sent_msgs for n in nodes))

    def _mark(self, _: Any) -> None:
        self.start = self._totals()

    def close(self) -> None:
        self.end = self._totals()

    def figures(self) -> dict[str, Any]:
        if self.start is None or self.end is None or self.end[0] <= self.start[0]:
            return {}
        peers = sum(1 for node in self.sim.nodes if node.up) or 1
        seconds = (self.end[0] - self.start[0]) / US_PER_S
        return {
            "late_bytes_per_peer_per_s": round((self.end[1] - self.start[1]) / peers / seconds, 1),
            "late_messages_per_peer_per_s": round((self.end[2] - self.start[2]) / peers / seconds, 3),
        }


def _liveness(sim: Sim, bound_s: float) -> float | None:
    sim.faults.heal_all()
    for observer in sim.observers:
        observer.start_liveness()
    start_us = sim.now_us
    step_s = sim.scenario.top["sample_interval_s"]
    deadline_s = start_us / US_PER_S + bound_s
    while sim.now_us / US_PER_S < deadline_s:
        sim.run(min(deadline_s, sim.now_us / US_PER_S + step_s))
        if all(observer.converged() for observer in sim.observers):
            return (sim.now_us - start_us) / US_PER_S
    return None


def _unconverged(sim: Sim) -> str:
    names = [observer.name for observer in sim.observers if not observer.converged()]
    return "waiting on: " + ", ".join(names)


def collect(sim: Sim, wall_s: float) -> dict[str, Any]:
    """Every figure of the run, JSON-ready."""
    from pyagent_simnet import compiled  # not at import: `python -m pyagent_simnet.compiled` imports us

    sim_s = sim.now_us / US_PER_S
    nodes = sim.nodes
    # Each node's counters run on across restarts, so its rates divide by the up-time of all its
    # processes (not by the time since its last start).
    node_up_s = [node.up_us(sim.now_us) / US_PER_S for node in nodes]
    up_seconds = sum(node_up_s) or 1.0
    sent_msgs = sum(node.sent_msgs for node in nodes)
    sent_bytes = sum(node.sent_bytes for node in nodes)
    result: dict[str, Any] = {
        "scenario": sim.scenario.name,
        "source": sim.scenario.source,
        "seed": sim.seed,
        "overrides": list(sim.scenario.overrides),
        "peers_initial": sim.scenario.top["peers"],
        "peers_total": len(nodes),
        "peers_up_at_end": sum(1 for node in nodes if node.up),
        "simulated_s": sim_s,
        "wall_s": round(wall_s, 3),
        "speedup_x_real_time": round(sim_s / wall_s, 2) if wall_s > 0 else None,
        "events": sim.counters["events"],
        "events_per_wall_s": round(sim.counters["events"] / wall_s) if wall_s > 0 else None,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cores": "compiled" if compiled.active() else "interpreted",
        "trace_hash": sim.trace.hexdigest(),
        "trace_records": sim.trace.count,
        "counters": dict(sim.counters),
        "drops": dict(sorted(sim.drops.items())),
        "messages_sent": sent_msgs,
        "bytes_sent": sent_bytes,
        "messages_per_peer_per_s": round(sent_msgs / up_seconds, 3),
        "bytes_per_peer_per_s": round(sent_bytes / up_seconds, 1),
        "faults": [{"t_s": t, "action": a, "detail": d} for t, a, d in sim.fault_log],
        "per_peer": {
            "bytes_sent_per_s": [
                round(n.sent_bytes / up_s, 1) if up_s > 0 else 0.0
                for n, up_s in zip(nodes, node_up_s, strict=True)
            ],
            "messages_sent_per_s": [
                round(n.sent_msgs / up_s, 3) if up_s > 0 else 0.0
                for n, up_s in zip(nodes, node_up_s, strict=True)
            ],
            "up_s": [round(up_s, 6) for up_s in node_up_s],
        },
    }
    if sim.counters["writes"]:
        disks = [node.disk for node in nodes]
        result["disk"] = {
            "batches_written": sum(d.batches_written for d in disks),
            "batches_durable": sum(d.batches_durable for d in disks),
            "batches_lost_in_crashes": sum(d.batches_lost for d in disks),
            "syncs": sum(d.syncs for d in disks),
        }
    result.update(sim.transfers.figures())
    for observer in sim.observers:
        result.update(observer.figures())
        for name, points in observer.series.items():
            result.setdefault("series", {})[name] = points
    return result
