"""The kv kit: the raft-linearizability scenario passes on many seeds, replays exactly, and catches a
planted bug (acknowledging before fsync)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from pyagent_simnet import Sim, run_scenario
from pyagent_simnet.kv_kit import workload_keys
from pyagent_simnet.runner import EXIT_CRASH, EXIT_OK, EXIT_SAFETY, Outcome

SCENARIO = "raft-linearizability"
HERE = Path(__file__).resolve().parent
CI_SEEDS = range(1, 21)
SLOW_SEEDS = range(1, 1001)
PLANTED = "extra_components=['planted_kv:factory']"
# For the planted bug, the scenario's only crash is the power loss of the whole mesh: with single crashes,
# raft-rs itself may notice first (a follower that lost acknowledged entries gets a commit index beyond
# its log and panics: RaftFatalError, a simnet crash), and this test is about the history checker.
POWER_LOSS_ONLY = (
    'faults=[{at_s = 6.8, action = "crash", count = 5}, {at_s = 7.3, action = "restart"}]',
    "kv.leader_crash_at_s=[]",
)
PLANTED_SEEDS = range(1, 4)
# No clients and no faults: the shards are founded, replicated and balanced, then left alone.
IDLE = (
    "kv.clients=0",
    "faults=[]",
    "kv.leader_crash_at_s=[]",
    "kv.checks.completed_min=0",
    "kv.checks.recovery_bound_s=0",
    "checks.liveness=false",
)


def fresh_run(seed: int, *overrides: str) -> Outcome:
    return run_scenario(Sim(SCENARIO, seed=seed, overrides=list(overrides)))


# The CI seeds' outcomes, shared by the tests that look at them from different sides.
run = functools.cache(fresh_run)


def explain(outcome: Outcome) -> str:
    result = outcome.result
    figures = {k: v for k, v in result.items() if k.startswith("kv_") and k != "kv_check_explanation"}
    return f"seed {result['seed']}: exit {outcome.exit_code}: {outcome.problems} {figures}"


def assert_clean(outcome: Outcome) -> dict[str, Any]:
    assert outcome.exit_code == EXIT_OK, explain(outcome)
    result = outcome.result
    assert result["kv_linearizable"] == "linearizable", explain(outcome)
    assert result["kv_ops_completed"] >= 100, explain(outcome)
    return result


def test_every_shard_gets_its_keys() -> None:
    keys = workload_keys(4, 2)
    assert len(keys) == len(set(keys)) == 8


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_the_scenario_is_linearizable_and_recovers(seed: int) -> None:
    outcome = run(seed)
    result = assert_clean(outcome)
    # The faults happened: the kit crashed two leaders, and crashes lost batches that were not synced.
    assert result["kv_leader_crashes"] == 2, explain(outcome)
    assert result["kv_leader_changes"] >= 2, explain(outcome)
    assert result["kv_writes_recovered_after_last_fault_s"] <= 2.5, explain(outcome)


def test_crashes_lose_batches_that_were_not_yet_durable() -> None:
    lost = [run(seed).result["disk"]["batches_lost_in_crashes"] for seed in CI_SEEDS]
    assert sum(1 for count in lost if count) >= len(lost) // 2, lost


def test_the_same_seed_gives_the_same_history() -> None:
    first, second = fresh_run(3), fresh_run(3)
    assert first.result["kv_history_hash"] == second.result["kv_history_hash"]
    assert first.result["trace_hash"] == second.result["trace_hash"]
    assert first.result["kv_history_ops_checked"] > 100
    assert fresh_run(4).result["kv_history_hash"] != first.result["kv_history_hash"]


def test_acknowledging_before_fsync_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The planted component is importable as `planted_kv` from this directory, as a plugin would be.
    monkeypatch.syspath_prepend(str(HERE))
    for seed in PLANTED_SEEDS:
        clean = run(seed, *POWER_LOSS_ONLY)
        assert_clean(clean)
        planted = run(seed, *POWER_LOSS_ONLY, PLANTED)
        assert planted.exit_code == EXIT_SAFETY, explain(planted)
        assert planted.result["kv_linearizable"] == "not_linearizable", explain(planted)
        assert any("not linearizable: key" in problem for problem in planted.problems), explain(planted)


def test_acknowledging_before_fsync_fails_the_whole_scenario(monkeypatch: pytest.MonkeyPatch) -> None:
    # With every fault of the scenario, the bug is caught too: by the history checker, or first by
    # raft-rs's own assertion (a crash, exit 4, with its replay line).
    monkeypatch.syspath_prepend(str(HERE))
    outcome = run(1, PLANTED)
    assert outcome.exit_code in (EXIT_SAFETY, EXIT_CRASH), explain(outcome)


def test_a_write_retried_after_a_silent_try_applies_once() -> None:
    # A try that gets no answer is sent again, with the same session, to another node, as a client does
    # after the daemon answered `timeout`; the first try may still be parked or forwarded somewhere, and
    # be proposed after the client has moved on.
    for seed in (1, 2, 3):
        assert_clean(fresh_run(seed, "kv.attempt_timeout_ms=500"))


def test_an_idle_mesh_goes_quiet() -> None:
    # The second half of the run (simnet's late window) carries membership's traffic and nothing of the
    # idle shards: the same mesh without the KV store sends as much. Awake, their heartbeats would add
    # some 2 kB/s per peer to membership's ~40 B/s.
    idle = fresh_run(1, *IDLE)
    membership_only = fresh_run(1, *IDLE, 'components=["membership"]')
    assert idle.exit_code == EXIT_OK, explain(idle)
    assert idle.result["bytes_per_peer_per_s"] > 2 * membership_only.result["bytes_per_peer_per_s"]
    late, late_membership = (o.result["late_bytes_per_peer_per_s"] for o in (idle, membership_only))
    assert late - late_membership <= 0.1 * late_membership, (late, late_membership)


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_a_thousand_seeds() -> None:
    failed = []
    for seed in SLOW_SEEDS:
        outcome = run(seed)
        if outcome.exit_code != EXIT_OK or outcome.result["kv_linearizable"] != "linearizable":
            failed.append(explain(outcome))
    assert not failed, f"{len(failed)} of {len(SLOW_SEEDS)} seeds failed:\n" + "\n".join(failed[:20])
