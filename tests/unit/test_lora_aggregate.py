"""The aggregators: the plain mean is exact, and the robust ones hold against each kind of poisoning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyagent.proto.lora.aggregate import aggregate, weighted_mean
from pyagent.proto.lora.config import Config

HONEST, POISONED, NUMEL = 13, 3, 512


def poison(kind: str, honest: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if kind == "sign_flip":
        return -honest[:POISONED]
    if kind == "scaled":
        return 100 * honest[:POISONED]
    return rng.standard_normal((POISONED, NUMEL)).astype(np.float32) * 10


def honest_rows(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    truth = rng.standard_normal(NUMEL).astype(np.float32)
    rows = truth + 0.3 * rng.standard_normal((HONEST, NUMEL)).astype(np.float32)
    return truth, rows


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 64), st.integers(0, 2**16))
def test_the_mean_is_the_exact_weighted_mean(count: int, numel: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, numel)).astype(np.float32)
    weights = rng.integers(1, 10_000, count).astype(np.float64)
    expected = (weights[:, None] * rows.astype(np.float64)).sum(axis=0) / weights.sum()
    np.testing.assert_allclose(aggregate(rows, weights, Config()), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["sign_flip", "scaled", "random"])
@pytest.mark.parametrize(
    "config",
    [
        Config(aggregator="trimmed_mean", trim_fraction=0.2),
        Config(aggregator="centered_clip", norm_clip=2.0),
        Config(aggregator="trimmed_mean", trim_fraction=0.2, norm_clip=2.0),
    ],
    ids=["trimmed", "clip+centered_clip", "clip+trimmed"],
)
@pytest.mark.parametrize("seed", range(3))
def test_robust_aggregators_stay_near_the_honest_mean(kind: str, config: Config, seed: int) -> None:
    rng = np.random.default_rng(seed)
    _, rows = honest_rows(rng)
    weights = np.ones(HONEST + POISONED)
    attacked = np.concatenate([rows, poison(kind, rows, rng)]).astype(np.float32)
    honest_mean = weighted_mean(rows, np.ones(HONEST))
    plain_error = np.linalg.norm(weighted_mean(attacked, weights) - honest_mean)
    robust_error = np.linalg.norm(aggregate(attacked, weights, config) - honest_mean)
    # The spread of honest rows around their mean sets the scale of what "near" means.
    spread = np.linalg.norm(rows - honest_mean, axis=1).mean()
    assert robust_error < 0.5 * spread, (robust_error, spread)
    assert robust_error < plain_error


def test_a_poisoned_row_cannot_outweigh_the_group_by_claiming_many_samples() -> None:
    rng = np.random.default_rng(0)
    _, rows = honest_rows(rng)
    attacked = np.concatenate([rows, 100 * rows[:1]]).astype(np.float32)
    weights = np.concatenate([np.ones(HONEST), [1e9]])
    honest_mean = weighted_mean(rows, np.ones(HONEST))
    result = aggregate(attacked, weights, Config(aggregator="centered_clip", norm_clip=2.0))
    assert np.linalg.norm(result - honest_mean) < 0.5 * np.linalg.norm(honest_mean)


def test_aggregators_give_the_same_bits_for_the_same_rows() -> None:
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((7, 99)).astype(np.float32)
    weights = rng.integers(1, 9, 7).astype(np.float64)
    for config in (Config(aggregator="trimmed_mean"), Config(aggregator="centered_clip")):
        assert np.array_equal(
            aggregate(rows, weights, config), aggregate(rows.copy(), weights.copy(), config)
        )
