"""How a group combines its members' values: the weighted mean, or a robust aggregator.

Every function takes the values as rows of one matrix (members in peer-id order) and their weights, and
is deterministic: every member of a group that holds the same rows computes the same bits.

- ``mean``: the weighted mean, accumulated in float64. Exactly the weighted mean of what was delivered.
- ``trimmed_mean``: per coordinate, the ``trim_fraction`` smallest and largest values are dropped, the
  rest averaged with their weights (Yin et al. 2018). Survives up to that fraction of arbitrary rows.
- ``centered_clip``: start from the coordinate-wise median, then move toward each row by at most a
  radius (``clip_radius`` x the median distance to the start), a few times (Karimireddy et al. 2021).
- ``multi_krum``: with f = floor(``trim_fraction`` x n) rows assumed poisoned, score each row by the sum of
  squared distances to its n - f - 2 nearest other rows, keep the n - f rows with the lowest scores and
  take their exact weighted mean (Blanchard et al. 2017). Whole rows go, so with the poisoned ones gone the
  result is the plain mean of the honest rows, where the trimmed mean also drops honest values.

Robust modes first cap each weight at the group's median weight times ``WEIGHT_RATIO_MAX``: a weight is
the sender's word, and a poisoned row must not outweigh the others by claiming many samples. Norm
clipping (``norm_clip`` > 0) scales each row down to at most that multiple of the median row norm.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pyagent.proto.lora.config import Config

Matrix = npt.NDArray[np.float32]
Vector = npt.NDArray[np.float32]
Weights = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]
WEIGHT_RATIO_MAX = 4.0


def aggregate(rows: Matrix, weights: Weights, config: Config) -> Vector:
    """The group's value from ``rows`` (one per member) and their ``weights`` (all positive)."""
    assert rows.ndim == 2 and rows.shape[0] == weights.shape[0] >= 1
    if config.aggregator == "mean" and config.norm_clip == 0:
        return weighted_mean(rows, weights)
    if config.aggregator != "mean":
        weights = np.minimum(weights, float(np.median(weights)) * WEIGHT_RATIO_MAX)
    if config.norm_clip > 0:
        rows = clip_norms(rows, config.norm_clip)
    if config.aggregator == "trimmed_mean":
        return trimmed_mean(rows, weights, config.trim_fraction)
    if config.aggregator == "centered_clip":
        return centered_clip(rows, weights, config.clip_radius, config.clip_iterations)
    if config.aggregator == "multi_krum":
        return multi_krum(rows, weights, config.trim_fraction)
    return weighted_mean(rows, weights)


def weighted_mean(rows: Matrix, weights: Weights) -> Vector:
    total = weights.sum()
    mean = (weights[:, None] * rows.astype(np.float64)).sum(axis=0) / total
    result: Vector = mean.astype(np.float32)
    return result


def clip_norms(rows: Matrix, factor: float) -> Matrix:
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    limit = factor * float(np.median(norms))
    scale = np.where(norms > limit, limit / np.maximum(norms, 1e-300), 1.0)
    clipped: Matrix = (rows * scale[:, None]).astype(np.float32)
    return clipped


def trimmed_mean(rows: Matrix, weights: Weights, trim_fraction: float) -> Vector:
    count = rows.shape[0]
    trim = int(trim_fraction * count)
    if trim == 0:
        return weighted_mean(rows, weights)
    # A stable sort per coordinate, so equal values keep their peer order and the result its bits.
    order = np.argsort(rows, axis=0, kind="stable")[trim : count - trim]
    kept = np.take_along_axis(rows, order, axis=0).astype(np.float64)
    kept_weights = weights[order]
    mean = (kept * kept_weights).sum(axis=0) / kept_weights.sum(axis=0)
    result: Vector = mean.astype(np.float32)
    return result


def centered_clip(rows: Matrix, weights: Weights, radius_factor: float, iterations: int) -> Vector:
    wide = rows.astype(np.float64)
    center = np.median(wide, axis=0)
    radius = radius_factor * float(np.median(np.linalg.norm(wide - center, axis=1)))
    share = weights / weights.sum()
    for _ in range(iterations):
        offsets = wide - center
        distances = np.linalg.norm(offsets, axis=1)
        scale = np.minimum(1.0, radius / np.maximum(distances, 1e-300))
        center = center + (share * scale) @ offsets
    return center.astype(np.float32)


def multi_krum(rows: Matrix, weights: Weights, trim_fraction: float) -> Vector:
    count = rows.shape[0]
    faulty = int(trim_fraction * count)
    if faulty == 0:
        return weighted_mean(rows, weights)  # none assumed poisoned: every row is kept
    if count - faulty - 2 < 1:
        # No neighbour to score against (n = 3 with f = 1, as f < n / 2): the trimmed mean with the same f,
        # here the coordinate-wise median, needs none.
        return trimmed_mean(rows, weights, trim_fraction)
    kept = krum_kept(rows, faulty)
    return weighted_mean(rows[kept], weights[kept])


def krum_kept(rows: Matrix, faulty: int) -> Indices:
    """The rows Multi-Krum keeps, in ascending order: the n - ``faulty`` with the lowest Krum scores.

    Equal scores keep the earlier row (rows come in peer order), so every member keeps the same rows.
    """
    count = rows.shape[0]
    neighbours = count - faulty - 2
    assert faulty >= 0 and neighbours >= 1
    # Sorted, each row's distance to itself (0) comes first: the next ``neighbours`` are its nearest others.
    nearest = np.sort(squared_distances(rows), axis=1)[:, 1 : neighbours + 1]
    scores = nearest.sum(axis=1)
    best = np.argsort(scores, kind="stable")[: count - faulty]
    # Ascending, so the mean adds the kept rows in peer order whatever their scores' order.
    kept: Indices = np.sort(best)
    return kept


def squared_distances(rows: Matrix) -> npt.NDArray[np.float64]:
    """Every pair's squared Euclidean distance, from differences in float64 (not the Gram matrix, whose
    BLAS product may round differently on another machine and cancels badly for close rows)."""
    wide = rows.astype(np.float64)
    count = wide.shape[0]
    distances = np.zeros((count, count))
    for i in range(count - 1):
        offsets = wide[i + 1 :] - wide[i]
        squares = np.square(offsets, out=offsets)  # in place: one temporary of (n - 1) x d, not two
        distances[i, i + 1 :] = distances[i + 1 :, i] = squares.sum(axis=1)
    return distances
