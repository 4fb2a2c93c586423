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
    "join_spread_s": 1.0,
    "membership": {"seeds_per_peer": 2, "checks": {"false_positives_per_member_hour_max": 1e9}},
    "network": {
        "latency": {"kind": "lognormal", "median_ms": 2.0, "sigma": 0.8},
        "loss": 0.02,
        "duplicate": 0.01,
        "corrupt": 0.01,
    },
    "ping": {"rate_per_s": 0.5},
    "churn": {"join_rate_per_s": 0.2, "leave_rate_per_s": 0.1, "start_s": 5.0, "stop_s": 15.0},
    "faults": [
        {"at_s": 4.0, "action": "partition", "split": 0.5},
        {"at_s": 8.0, "action": "heal"},
        {"at_s": 9.0, "action": "crash", "count": 1},
        {"at_s": 10.0, "action": "pause", "count": 1},
        {"at_s": 12.0, "action": "resume"},
        {"at_s": 14.0, "action": "restart"},
    ],
    "checks": {"liveness": False},
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


# The stateful side: disks (fsync latency, group commit, crashes that lose what was not durable, a
# wipe) and transfers (jittered chunks, a lossy link that does not touch them, a partition that stalls
# them, damaged chunks, peers going down mid-transfer), with membership and the journal kit on top.
STATEFUL = {
    "name": "determinism-stateful",
    "peers": 8,
    "duration_s": 15.0,
    "components": ["journal", "membership"],
    "extra_components": ["blobs:factory"],
    "trace": True,
    "journal": {"interval_ms": 40, "unsynced_every": 3},
    "membership": {"checks": {"false_positives_per_member_hour_max": 1e9}},
    "network": {"latency": {"kind": "lognormal", "median_ms": 2.0, "sigma": 0.8}, "loss": 0.02},
    "disk": {"sync_latency": {"kind": "lognormal", "median_ms": 2.0, "sigma": 1.0}, "writeback_ms": 300},
    "transfers": {"chunk_bytes": 4096, "window_chunks": 4, "bandwidth_bps": 4_000_000, "corrupt": 0.002},
    "faults": [
        {"at_s": 3.0, "action": "partition", "split": 0.5},
        {"at_s": 5.0, "action": "heal"},
        {"at_s": 6.0, "action": "crash", "count": 2},
        {"at_s": 8.0, "action": "restart"},
        {"at_s": 9.0, "action": "crash-wipe", "count": 1},
        {"at_s": 11.0, "action": "restart"},
    ],
    "checks": {"liveness": False},
}


def stateful_trace(seed: int) -> list[bytes]:
    import random

    from blobs import SendBlob

    sim = Sim(STATEFUL, seed=seed)
    blobs = random.Random(seed)  # what to send, and when: the test's own generator
    for transfer_id in range(1, 25):
        at_us = blobs.randrange(14_000_000)
        src, dst = blobs.sample(range(8), 2)
        data = blobs.randbytes(blobs.randrange(1, 60_000))

        def start(
            _: object, src: int = src, dst: int = dst, data: bytes = data, tid: int = transfer_id
        ) -> None:
            from blobs import CountingSource

            sim.request(sim.nodes[src], SendBlob(sim.nodes[dst].peer, tid, CountingSource(data)))

        sim.schedule(at_us, start)
    outcome = run_scenario(sim)
    assert outcome.exit_code == 0, outcome.problems
    assert outcome.result["transfers_chunks"] > 100 and outcome.result["disk"]["syncs"] > 100
    assert sim.trace.records is not None
    return sim.trace.records


def test_disks_and_transfers_replay_identically(testkit: object) -> None:
    seen = set()
    for seed in range(3):
        first, second = stateful_trace(seed), stateful_trace(seed)
        assert first == second, f"seed {seed} is not deterministic"
        kinds = {record.split(b" ", 2)[1] for record in first}
        assert {b"C", b"S", b"F", b"D", b"T"} <= kinds  # chunks, fsyncs, transfer ends, frames, timers
        seen.add(hash(tuple(first)))
    assert len(seen) == 3
