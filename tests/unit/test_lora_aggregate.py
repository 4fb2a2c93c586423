"""The aggregators: the plain mean is exact, and the robust ones hold against each kind of poisoning;
Multi-Krum rejects the poisoned rows whole and takes the exact weighted mean of the rest."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyagent.proto.lora.aggregate import aggregate, krum_kept, weighted_mean
from pyagent.proto.lora.config import Config

HONEST, POISONED, NUMEL = 13, 3, 512
KINDS = ["sign_flip", "scaled", "random"]
KRUM = Config(aggregator="multi_krum", trim_fraction=0.2, norm_clip=2.0)


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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "config",
    [
        Config(aggregator="trimmed_mean", trim_fraction=0.2),
        Config(aggregator="centered_clip", norm_clip=2.0),
        Config(aggregator="trimmed_mean", trim_fraction=0.2, norm_clip=2.0),
        Config(aggregator="multi_krum", trim_fraction=0.2),
        KRUM,
    ],
    ids=["trimmed", "clip+centered_clip", "clip+trimmed", "multi_krum", "clip+multi_krum"],
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
    for config in (Config(aggregator="trimmed_mean"), Config(aggregator="centered_clip"), KRUM):
        assert np.array_equal(
            aggregate(rows, weights, config), aggregate(rows.copy(), weights.copy(), config)
        )


def reference_krum_kept(rows: np.ndarray, faulty: int) -> list[int]:
    """Blanchard et al.'s Multi-Krum written out row by row: the n - f rows with the lowest scores."""
    count = len(rows)
    wide = rows.astype(np.float64)
    scores = []
    for i in range(count):
        others = sorted(float(((wide[i] - wide[j]) ** 2).sum()) for j in range(count) if j != i)
        scores.append(sum(others[: count - faulty - 2]))
    return sorted(sorted(range(count), key=lambda i: scores[i])[: count - faulty])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(5))
def test_multi_krum_rejects_exactly_the_poisoned_rows_and_keeps_the_honest_mean(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    _, rows = honest_rows(rng)
    # The poisoned rows first, so peer order alone would keep them on a tie.
    attacked = np.concatenate([poison(kind, rows, rng), rows]).astype(np.float32)
    weights = np.ones(HONEST + POISONED)
    assert krum_kept(attacked, POISONED).tolist() == list(range(POISONED, POISONED + HONEST))
    # With the poisoned rows gone nothing else is lost: the result is the honest rows' plain mean.
    honest_mean = weighted_mean(rows, np.ones(HONEST))
    assert np.array_equal(aggregate(attacked, weights, KRUM), honest_mean)


@settings(max_examples=60, deadline=None)
@given(st.integers(5, 24), st.integers(1, 48), st.floats(0.0, 0.45), st.integers(0, 2**16))
def test_multi_krum_is_the_exact_weighted_mean_of_the_rows_krum_keeps(
    count: int, numel: int, trim_fraction: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, numel)).astype(np.float32)
    # Weights within 4x of each other: the robust modes' weight cap leaves them as they are.
    weights = rng.integers(1, 5, count).astype(np.float64)
    faulty = int(trim_fraction * count)
    config = Config(aggregator="multi_krum", trim_fraction=trim_fraction)
    kept = krum_kept(rows, faulty)
    assert kept.tolist() == reference_krum_kept(rows, faulty)
    wide = rows[kept].astype(np.float64)
    expected = (weights[kept, None] * wide).sum(axis=0) / weights[kept].sum()
    result = aggregate(rows, weights, config)
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-7)
    assert np.array_equal(result, weighted_mean(rows[kept], weights[kept]))


def test_multi_krum_keeps_the_earlier_row_of_equal_scores() -> None:
    # Five rows on a line, symmetric around the middle: rows 0 and 4 score the same, and f = 1 drops one.
    rows = np.array([[-2.0], [-1.0], [0.0], [1.0], [2.0]], dtype=np.float32)
    assert krum_kept(rows, 1).tolist() == [0, 1, 2, 3]
    # The same rows in the other peer order: the rule still keeps the earlier peer's row, now the +2 one.
    assert krum_kept(rows[::-1].copy(), 1).tolist() == [0, 1, 2, 3]
    # Two copies of one far row tie as well: f = 1 drops the later one.
    far = np.array([[0.0], [0.1], [-0.1], [0.05], [9.0], [9.0]], dtype=np.float32)
    assert krum_kept(far, 1).tolist() == [0, 1, 2, 3, 4]


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 16), st.integers(0, 2**16))
def test_members_receiving_rows_in_any_order_keep_the_same_rows_and_bits(count: int, seed: int) -> None:
    """Each member sorts what arrived by peer id (as the component does) before it aggregates."""
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((count, 8)).astype(np.float32)
    weights = rng.integers(1, 5, count).astype(np.float64)
    peer_ids = [rng.bytes(8) for _ in range(count)]
    results, kept_peers = [], []
    for _ in range(3):
        arrival = rng.permutation(count)
        in_peer_order = sorted(arrival, key=lambda i: peer_ids[i])
        kept = krum_kept(rows[in_peer_order], int(0.2 * count))
        kept_peers.append({peer_ids[in_peer_order[i]] for i in kept})
        results.append(aggregate(rows[in_peer_order], weights[in_peer_order], KRUM))
    assert all(peers == kept_peers[0] for peers in kept_peers)
    assert all(np.array_equal(result, results[0]) for result in results)


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_multi_krum_on_too_few_rows_to_score_is_the_plain_mean(count: int) -> None:
    """trim_fraction 0.2 assumes no poisoned row below 5 rows (f = floor(0.2 n) = 0): nothing is dropped."""
    rng = np.random.default_rng(count)
    rows = rng.standard_normal((count, 16)).astype(np.float32)
    weights = rng.integers(1, 5, count).astype(np.float64)
    assert np.array_equal(aggregate(rows, weights, KRUM), aggregate(rows, weights, Config(norm_clip=2.0)))


@pytest.mark.parametrize("kind", KINDS)
def test_multi_krum_on_three_rows_with_one_assumed_poisoned_takes_the_median(kind: str) -> None:
    """n = 3, f = 1 leaves no neighbour to score against: the fallback, the coordinate-wise median,
    still ignores the poisoned row."""
    rng = np.random.default_rng(7)
    _, rows = honest_rows(rng)
    attacked = np.concatenate([rows[:2], poison(kind, rows, rng)[:1]]).astype(np.float32)
    config = Config(aggregator="multi_krum", trim_fraction=0.34)
    result = aggregate(attacked, np.ones(3), config)
    assert np.array_equal(result, np.median(attacked, axis=0))
    # Whatever the poisoned row holds, the median stays between the two honest values of each coordinate.
    assert np.all((result >= attacked[:2].min(axis=0)) & (result <= attacked[:2].max(axis=0)))
