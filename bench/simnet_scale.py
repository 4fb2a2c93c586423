"""How far simnet scales on this machine: wall time, events/s, x real time, peak memory.

    .venv/bin/python bench/simnet_scale.py                 # the standard runs, each in its own process
    .venv/bin/python bench/simnet_scale.py --interpreted   # the same on the interpreted cores
    .venv/bin/python bench/simnet_scale.py --one --peers 1000 --duration-s 300 --start formed

The standard runs use the cores compiled by mypyc from the same sources (pyagent_simnet.compiled; a run's
trace hash is the same either way), built once per source version; --one runs in whatever this process
imported.

The standard runs:
1. 1,000 peers running membership (LAN preset) for 300 simulated seconds in a mesh that starts formed
   (every peer alive in every view at t=0, as in a mesh that has been up a while). This is the figure
   the simnet target (< 30 s wall, >= 10x real time) is about.
2. The same 1,000 peers forming the mesh themselves: every peer starts within the first two seconds and
   joins through two seeds, so every one of 1,000 alive updates is gossiped to all 1,000 peers, each
   relaying it retransmit_limit (16) times: ~16 million piggybacked entries in the first ten seconds.
   Its joining and settling are reported apart from its steady state.
3. 10,000 peers for 60 simulated seconds with the ping workload (membership's per-peer view of every
   other peer needs ~N^2 member records: ~40 GB at 10,000 peers, more than this machine has).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from pyagent.errors import ConfigError
from pyagent_simnet import Sim, compiled
from pyagent_simnet import sim as sim_module

# Phase boundaries (simulated s): joining ends this long after the last peer starts, settling at 60 s, and
# the steady state follows.
JOINING_TAIL_S = 8.0
SETTLED_S = 60.0
STANDARD_RUNS = (
    (
        "1000 peers x 300 s, membership (LAN), mesh formed at start",
        ["--peers", "1000", "--duration-s", "300", "--components", "membership", "--start", "formed"],
    ),
    (
        "1000 peers x 300 s, membership (LAN), all joining within 2 s",
        ["--peers", "1000", "--duration-s", "300", "--components", "membership", "--join-spread-s", "2"],
    ),
    (
        "10000 peers x 60 s, ping workload",
        ["--peers", "10000", "--duration-s", "60", "--components", "ping", "--ping-rate", "1"],
    ),
)


def one(
    peers: int, duration_s: float, components: str, ping_rate: float, join_spread_s: float, start: str
) -> dict[str, object]:
    scenario = {
        "name": f"bench-{peers}",
        "peers": peers,
        "duration_s": duration_s,
        "components": components.split(","),
        "join_spread_s": join_spread_s,
        "start": start,
        "sample_interval_s": 5.0,
        "network": {"latency": {"kind": "lognormal", "median_ms": 0.4, "sigma": 0.5}},
        "membership": {"seeds_per_peer": 2},
        "ping": {"rate_per_s": ping_rate},
        "checks": {"liveness": False},
    }
    started = time.perf_counter()
    sim = Sim(scenario, seed=1)
    build_s = time.perf_counter() - started
    phases = []
    if start == "formed":
        # 0-0 s is building every core with its whole view; push-pulls first fill the entry caches.
        edges_s: tuple[float, ...] = (0.0, SETTLED_S)
    else:
        edges_s = (join_spread_s + JOINING_TAIL_S, max(SETTLED_S, join_spread_s + JOINING_TAIL_S))
    for until_s in sorted({min(edge, duration_s) for edge in edges_s} | {duration_s}):
        t0, c0, e0, s0 = time.perf_counter(), time.process_time(), sim.counters["events"], sim.now_us / 1e6
        sim.run(until_s)
        wall_s = time.perf_counter() - t0
        cpu_s = time.process_time() - c0
        events = sim.counters["events"] - e0
        simulated_s = sim.now_us / 1e6 - s0
        phases.append(
            {
                "from_s": s0,
                "to_s": until_s,
                "wall_s": round(wall_s, 1),
                "cpu_s": round(cpu_s, 1),
                "events": events,
                "events_per_s": round(events / wall_s) if wall_s else None,
                "x_real_time": round(simulated_s / wall_s, 3) if wall_s else None,
            }
        )
    total_wall_s = time.perf_counter() - started
    sent_bytes = sum(node.sent_bytes for node in sim.nodes)
    return {
        "peers": peers,
        "join_spread_s": join_spread_s,
        "start": start,
        "simulated_s": duration_s,
        "components": components,
        "build_s": round(build_s, 1),
        "wall_s": round(total_wall_s, 1),
        # On a shared machine wall time includes waiting for a core; CPU time is this process's own work.
        "cpu_s": round(time.process_time(), 1),
        "events": sim.counters["events"],
        "events_per_s": round(sim.counters["events"] / total_wall_s),
        "x_real_time": round(duration_s / total_wall_s, 2),
        "phases": phases,
        "bytes_per_peer_per_s": round(sent_bytes / peers / duration_s, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "trace_hash": sim.trace.hexdigest(),
        "compiled": sim_module.__file__.endswith(".so"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one", action="store_true", help="run one configuration in this process")
    parser.add_argument(
        "--interpreted",
        action="store_true",
        help="run on the interpreted cores (default: compiled by mypyc; see pyagent_simnet.compiled)",
    )
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument("--components", default="membership")
    parser.add_argument("--ping-rate", type=float, default=0.0)
    parser.add_argument(
        "--join-spread-s", type=float, default=0.0, help="peers start at uniform random times in [0, this]"
    )
    parser.add_argument(
        "--start", choices=("join", "formed"), default="join", help="join through seeds, or start formed"
    )
    args = parser.parse_args()
    if args.one:
        result = one(
            args.peers, args.duration_s, args.components, args.ping_rate, args.join_spread_s, args.start
        )
        print(json.dumps(result))
        return 0
    env = dict(os.environ)
    if args.interpreted:
        print("cores: interpreted (pure Python)")
    else:
        try:
            target = compiled.build()
        except ConfigError as exc:
            print(f"simnet_scale: {exc} (or run with --interpreted)", file=sys.stderr)
            return 2
        env = compiled.environ(target, env)
        print(f"cores: compiled by mypyc from the same sources ({target}); --interpreted for pure Python")
    for title, argv in STANDARD_RUNS:
        # A fresh process per run, so that each peak RSS is that run's own.
        done = subprocess.run(
            [sys.executable, __file__, "--one", *argv], capture_output=True, text=True, check=False, env=env
        )
        if done.returncode != 0:
            print(f"{title}: FAILED\n{done.stderr}")
            continue
        result = json.loads(done.stdout)
        print(
            f"{title}: wall {result['wall_s']} s (CPU {result['cpu_s']} s), "
            f"{result['events_per_s']} events/s, "
            f"{result['x_real_time']}x real time, peak RSS {result['peak_rss_mib']} MiB, "
            f"{result['bytes_per_peer_per_s']} B/s/peer"
        )
        for phase in result["phases"]:
            print(
                f"    {phase['from_s']:.0f}-{phase['to_s']:.0f} s: wall {phase['wall_s']} s "
                f"(CPU {phase['cpu_s']} s), "
                f"{phase['events_per_s']} events/s, {phase['x_real_time']}x real time"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
