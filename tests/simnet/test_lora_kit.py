"""The lora kit: the issue's targets on the three lora scenarios (several seeds each, a few seconds a run),
replay from a seed, and checks that fail when the protocol falls short."""

from __future__ import annotations

import functools
import statistics

import pytest

from pyagent.errors import ConfigError
from pyagent_simnet import Sim, run_scenario
from pyagent_simnet.lora_kit import LoraWorkload, recording_krum
from pyagent_simnet.runner import EXIT_OK, EXIT_SAFETY, Outcome

CI_SEEDS = range(1, 4)
SLOW_SEEDS = range(1, 21)
# Seeds not looked at while Multi-Krum was written, measured once it was done.
HELD_OUT_SEEDS = range(101, 121)
# Seeds first run once the scenario's CenteredClip settings were chosen on the two ranges above.
THIRD_SEEDS = range(201, 221)
# The scenario's own aggregator (norm clip, CenteredClip) needs no override.
AGGREGATORS = {
    "centered_clip": (),
    "trimmed_mean": ("lora.aggregator='trimmed_mean'",),
    "multi_krum": ("lora.aggregator='multi_krum'",),
}
# The dropout scenario with a 4x smaller delta, so a run takes a second or two: the victims still die
# half-way through their transfers.
SMALL_DROPOUT = ("lora.dim=16384", "lora.kill_after_ms=25.0")


@functools.cache
def run(scenario: str, seed: int, *overrides: str) -> Outcome:
    return run_scenario(Sim(scenario, seed=seed, overrides=list(overrides)))


def figures(outcome: Outcome) -> dict[str, object]:
    return {
        k: v for k, v in outcome.result.items() if k.startswith("lora_") and k != "lora_bytes_sent_per_peer"
    }


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_64_peers_with_int2_payloads_agree_within_1e_3_every_round(seed: int) -> None:
    outcome = run("lora-agreement", seed)
    assert outcome.exit_code == EXIT_OK, (outcome.problems, figures(outcome))
    result = outcome.result
    assert result["lora_rounds_min"] == 6
    assert max(result["lora_disagreement_by_round"]) <= 1e-3
    assert result["lora_peers_per_result_min"] == 64
    # INT2 payloads: far below the 32 bits of a float per value and receiver (3 steps, 3 receivers each).
    assert result["lora_bits_per_param_per_round"] < 32


@pytest.mark.parametrize("seed", CI_SEEDS)
def test_survivors_of_a_mid_transfer_kill_finish_in_time_with_the_exact_mean(seed: int) -> None:
    outcome = run("lora-dropout", seed, *SMALL_DROPOUT)
    assert outcome.exit_code == EXIT_OK, (outcome.problems, figures(outcome))
    result = outcome.result
    assert result["lora_killed"] == 4
    assert result["lora_kill_round_time_ratio"] <= 1.5
    assert result["lora_exact_mean_rel_error_max"] <= 1e-5
    # The victims' deltas of the kill round were cut off everywhere: every survivor names the other 12.
    assert result["lora_peers_per_result_min"] == 12


def poisoning_gap(seed: int, *overrides: str) -> float:
    """How much higher the merged eval loss ends with 3 of 16 peers poisoned than on the same seed without."""
    attacked = run("lora-poisoned", seed, *overrides)
    clean = run("lora-poisoned", seed, *overrides, "lora.poisoned=0")
    for outcome in (attacked, clean):
        assert outcome.exit_code == EXIT_OK, (outcome.problems, figures(outcome))
    assert attacked.result["lora_poisoned"] == ["random", "scaled", "sign_flip"]
    gap: float = attacked.result["lora_eval_loss_final"] / clean.result["lora_eval_loss_final"] - 1
    return gap


@pytest.mark.parametrize("aggregator", AGGREGATORS)
@pytest.mark.parametrize("seed", CI_SEEDS[:1])
def test_three_poisoned_peers_of_16_move_the_merged_eval_loss_less_than_2_percent(
    seed: int, aggregator: str
) -> None:
    assert poisoning_gap(seed, *AGGREGATORS[aggregator]) <= 0.02


def test_multi_krum_rejects_each_kind_of_poisoned_row() -> None:
    """The random and x100 rows go in every aggregation, the sign-flipped one while training moves.

    Once the models settle (round 5 on, seeds 1-20 alike), honest deltas are mostly their slices' own pull
    and a sign-flipped delta is just as far from them as another honest one: Krum keeps it in some rounds
    and drops the most atypical honest row instead (docs/lora.md, "Robust aggregation")."""
    sim = Sim("lora-poisoned", seed=1, overrides=list(AGGREGATORS["multi_krum"]))
    with recording_krum() as seen:
        assert run_scenario(sim).exit_code == EXIT_OK
    workload = next(o for o in sim.observers if isinstance(o, LoraWorkload))
    rejected_by_round: dict[int, set[tuple[str, ...]]] = {}
    for rows, kept in seen:
        senders = workload.senders(rows)
        rejected = tuple(sorted(kind for i, (_, kind) in enumerate(senders) if i not in kept))
        rejected_by_round.setdefault(senders[0][0], set()).add(rejected)
    assert sorted(rejected_by_round) == list(range(1, 21))
    # One group of 16 a round: every member rejects the same rows.
    assert all(len(sets) == 1 for sets in rejected_by_round.values())
    rejected_sets = [sets.pop() for _, sets in sorted(rejected_by_round.items())]
    assert all({"random", "scaled"} <= set(rejected) for rejected in rejected_sets)
    assert rejected_sets[:4] == [("random", "scaled", "sign_flip")] * 4


def test_the_plain_mean_without_clipping_is_wrecked_by_the_same_attack() -> None:
    outcome = run("lora-poisoned", 1, "lora.aggregator='mean'", "lora.norm_clip=0.0")
    assert (
        outcome.result["lora_eval_loss_final"] > 100 * run("lora-poisoned", 1).result["lora_eval_loss_final"]
    )


def test_peers_vanishing_mid_round_split_that_round_and_the_next_rounds_agree_again() -> None:
    churn = ("lora.kill_fraction=0.07", "lora.kill_after_ms=1.0")
    outcome = run("lora-agreement", 1, *churn, "lora.kill_round=2")
    assert outcome.exit_code == EXIT_OK, (outcome.problems, figures(outcome))
    by_round = outcome.result["lora_disagreement_by_round"]
    assert by_round[1] > 1e-3  # the kill round: peers named different survivors
    assert max(by_round[3:]) == 0.0  # 60 peers, a partial grid, and every peer holds the same numbers
    # The check fails when the kill hits the last round.
    last = run("lora-agreement", 1, *churn, "lora.kill_round=6")
    assert last.exit_code == EXIT_SAFETY
    assert any("disagreement" in problem for problem in last.problems)


def test_a_seed_replays_exactly() -> None:
    first = run("lora-dropout", 2, *SMALL_DROPOUT).result
    again = run_scenario(Sim("lora-dropout", seed=2, overrides=list(SMALL_DROPOUT))).result
    assert first["trace_hash"] == again["trace_hash"]
    assert first["lora_eval_loss_by_round"] == again["lora_eval_loss_by_round"]


def test_a_bad_lora_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="codec"):
        Sim("lora-dropout", seed=1, overrides=["lora.codec='int3'"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_agreement_and_dropout_targets_on_many_seeds(seed: int) -> None:
    test_64_peers_with_int2_payloads_agree_within_1e_3_every_round(seed)
    test_survivors_of_a_mid_transfer_kill_finish_in_time_with_the_exact_mean(seed)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 40 runs of a few seconds each
@pytest.mark.parametrize(
    "seeds", [SLOW_SEEDS, HELD_OUT_SEEDS, THIRD_SEEDS], ids=["1-20", "101-120", "201-220"]
)
def test_the_scenarios_defence_keeps_every_seed_within_2_percent(seeds: range) -> None:
    """Measured 2026-12-03 (docs/lora.md), median / worst: seeds 1-20 +0.80 % / +1.98 %, 101-120 +0.58 % /
    +1.99 %, 201-220 +0.76 % / +1.56 %. The worst seeds sit just under the target."""
    gaps = [poisoning_gap(seed) for seed in seeds]
    assert max(gaps) <= 0.02, gaps


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 80 runs of a few seconds each
@pytest.mark.parametrize("seeds", [SLOW_SEEDS, HELD_OUT_SEEDS], ids=["1-20", "101-120"])
@pytest.mark.parametrize("aggregator", ["trimmed_mean", "multi_krum"])
def test_the_poisoning_gap_over_many_seeds(aggregator: str, seeds: range) -> None:
    """Measured 2026-12-03 (docs/lora.md, "Robust aggregation"), median / worst / seeds within 2 %:

    - trimmed_mean: seeds 1-20 +0.88 % / +2.47 % / 18 of 20; seeds 101-120 +1.08 % / +2.46 % / 19 of 20;
    - multi_krum: seeds 1-20 +0.71 % / +2.41 % / 18 of 20; seeds 101-120 +0.32 % / +2.36 % / 19 of 20.

    So the target holds for the median and on 18 or 19 seeds of 20, not on every seed: this asserts that
    and bounds the spread."""
    gaps = [poisoning_gap(seed, *AGGREGATORS[aggregator]) for seed in seeds]
    assert statistics.median(gaps) <= 0.02, gaps
    assert sum(gap <= 0.02 for gap in gaps) >= 18, gaps
    assert max(gaps) <= 0.03, gaps
