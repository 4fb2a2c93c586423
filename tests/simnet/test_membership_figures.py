"""Membership under simnet: the shipped scenarios pass their own checkers, and the figures are sane."""

from __future__ import annotations

from pyagent_simnet import Sim, run_scenario
from pyagent_simnet.runner import EXIT_OK


def test_a_fresh_mesh_converges_within_its_bound() -> None:
    outcome = run_scenario(Sim("membership-convergence", seed=3))
    assert outcome.exit_code == EXIT_OK, outcome.problems
    assert outcome.result["convergence_99_s"] <= outcome.result["convergence_s"] <= 35
    assert outcome.result["false_positives"] == 0


def test_crashes_are_detected_everywhere_within_the_bound_and_no_one_else_is_accused() -> None:
    outcome = run_scenario(Sim("membership-detection", seed=3))
    assert outcome.exit_code == EXIT_OK, outcome.problems
    result = outcome.result
    assert len(result["detection_latencies_s"]) == 6
    assert 0 < result["detection_p50_s"] <= result["detection_max_s"] <= 30
    assert result["false_positives"] == 0
    assert result["liveness_converged_after_s"] is not None  # the crashed peers rejoined


def test_a_mesh_that_starts_formed_is_converged_at_once_and_still_detects_crashes() -> None:
    sim = Sim("membership-detection", seed=3, overrides=["start=formed", "peers=40", "join_spread_s=0"])
    sim.run(0.0)
    members = sim.nodes[7].core.component("membership").members()  # type: ignore[union-attr]
    assert len(members) == 40 and {m.incarnation for m in members} == {0}
    outcome = run_scenario(sim)
    assert outcome.exit_code == EXIT_OK, outcome.problems
    assert outcome.result["convergence_s"] == 0.0
    assert len(outcome.result["detection_latencies_s"]) == 6
    assert outcome.result["false_positives"] == 0


def test_churn_keeps_views_honest_and_settles() -> None:
    outcome = run_scenario(Sim("churn", seed=3))
    assert outcome.exit_code == EXIT_OK, outcome.problems
    assert outcome.result["peers_total"] > 60


def test_lifeguard_cuts_false_positives_under_loss() -> None:
    rates = {}
    for lifeguard in ("true", "false"):
        sim = Sim(
            "membership-loss-sweep",
            seed=2,
            overrides=[
                "peers=40",
                "duration_s=300",
                "network.loss=0.15",
                f"membership.lifeguard={lifeguard}",
                "checks.liveness=false",
            ],
        )
        rates[lifeguard] = run_scenario(sim).result["false_positives"]
    assert rates["true"] < rates["false"]


def test_a_long_partition_heals_within_seconds() -> None:
    outcome = run_scenario(Sim("partition-heal", seed=1))
    assert outcome.exit_code == EXIT_OK, outcome.problems
    heal_s = 60.0  # the scenario's heal fault
    healed_at = [
        t for t, fraction in outcome.result["series"]["convergence"] if t >= heal_s and fraction == 1.0
    ]
    assert healed_at and healed_at[0] - heal_s <= 10.0
