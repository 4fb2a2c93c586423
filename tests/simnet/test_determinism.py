"""One seed, one history: the same seed and scenario give the same trace hash; another seed does not."""

from __future__ import annotations

from pyagent_simnet import Sim, run_scenario

# Small, but with everything that draws randomness: jitter, loss, duplication, corruption, a partition,
# a crash and its restart, a pause, churn and membership's own generators.
SCENARIO = {
    "name": "determinism",
    "peers": 12,
    "duration_s": 20.0,
    "components": ["membership", "ping"],
    "seeds_per_peer": 2,
    "join_spread_s": 1.0,
    "network": {
        "latency": {"kind": "lognormal", "median_ms": 2.0, "sigma": 0.8},
        "loss": 0.02,
        "duplicate": 0.01,
        "corrupt": 0.01,
    },
    "workload": {"ping_rate_per_s": 0.5},
    "churn": {"join_rate_per_s": 0.2, "leave_rate_per_s": 0.1, "start_s": 5.0, "stop_s": 15.0},
    "faults": [
        {"at_s": 4.0, "action": "partition", "split": 0.5},
        {"at_s": 8.0, "action": "heal"},
        {"at_s": 9.0, "action": "crash", "count": 1},
        {"at_s": 10.0, "action": "pause", "count": 1},
        {"at_s": 12.0, "action": "resume"},
        {"at_s": 14.0, "action": "restart"},
    ],
    "checks": {"false_positives_per_member_hour_max": 1e9, "liveness": False},
}


def trace_hash(seed: int) -> str:
    outcome = run_scenario(Sim(SCENARIO, seed=seed))
    assert outcome.exit_code == 0, outcome.problems
    assert outcome.result["trace_records"] > 1000
    digest: str = outcome.result["trace_hash"]
    return digest


def test_twenty_seeds_each_replay_identically_and_differ_from_each_other() -> None:
    hashes = {}
    for seed in range(20):
        first, second = trace_hash(seed), trace_hash(seed)
        assert first == second, f"seed {seed} is not deterministic"
        hashes[seed] = first
    assert len(set(hashes.values())) == 20


def test_the_kept_trace_matches_the_hash_and_differs_at_a_definite_record() -> None:
    runs = []
    for seed in (1, 1, 2):
        sim = Sim({**SCENARIO, "trace": True}, seed=seed)
        run_scenario(sim)
        runs.append(sim.trace.records)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
