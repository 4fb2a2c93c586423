"""In-process merges of the peers' flat deltas: the exact FP32 weighted mean, and the same mean of what
the Rust codecs deliver.

A merge takes a round's deltas (one flat float32 array per peer, all of one layout) and the peers'
weights (their sample counts), and returns the merged delta with the bytes each peer sent. The training
harness (:mod:`pyagent.lora.finetune`) takes any such callable, so a mesh-backed merge can replace these.

numpy and the core's codecs only: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from pyagent.lora.codecs import LoraCodec, LoraErrorFeedback, decode

__all__ = ["CodecMerge", "Merge", "Merged", "exact_mean", "weighted_mean"]


@dataclass(frozen=True)
class Merged:
    delta: npt.NDArray[np.float32]
    bytes_sent: tuple[int, ...]
    """What each peer put on the wire for its delta this round, in the order of the deltas."""


class Merge(Protocol):
    def __call__(
        self, round_number: int, deltas: Sequence[npt.NDArray[np.float32]], weights: Sequence[float]
    ) -> Merged: ...


def weighted_mean(
    arrays: Sequence[npt.NDArray[np.float32]], weights: Sequence[float]
) -> npt.NDArray[np.float32]:
    """``sum(w_i * a_i) / sum(w_i)``, accumulated in float64."""
    if len(arrays) != len(weights) or not arrays:
        raise ValueError(f"{len(arrays)} arrays and {len(weights)} weights: need as many, at least one")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights sum to {total}, not a positive number")
    acc = np.zeros(arrays[0].shape, dtype=np.float64)
    for array, weight in zip(arrays, weights, strict=True):
        acc += float(weight) * array
    return (acc / total).astype(np.float32)


def exact_mean(
    round_number: int, deltas: Sequence[npt.NDArray[np.float32]], weights: Sequence[float]
) -> Merged:
    """The reference: every delta sent as raw float32."""
    return Merged(weighted_mean(deltas, weights), tuple(delta.nbytes for delta in deltas))


class CodecMerge:
    """Each peer encodes its delta with ``codec`` (through its own error feedback when ``error_feedback``),
    and the merge is the exact weighted mean of the decoded deltas.

    Peer ``i`` is the ``i``-th delta of every round; its residual carries over to its next round.
    ``stochastic`` rounds with a seed of the round and the peer (unbiased), else to nearest.
    """

    def __init__(self, codec: LoraCodec, error_feedback: bool = True, stochastic: bool = False) -> None:
        self.codec = codec
        self.error_feedback = error_feedback
        self.stochastic = stochastic
        self._feedback: list[LoraErrorFeedback] = []

    def __call__(
        self, round_number: int, deltas: Sequence[npt.NDArray[np.float32]], weights: Sequence[float]
    ) -> Merged:
        frames = [self._encode(round_number, peer, delta) for peer, delta in enumerate(deltas)]
        decoded = [
            decode(frame, numel_max=delta.size)[1] for frame, delta in zip(frames, deltas, strict=True)
        ]
        return Merged(weighted_mean(decoded, weights), tuple(len(frame) for frame in frames))

    def _encode(self, round_number: int, peer: int, delta: npt.NDArray[np.float32]) -> bytes:
        seed = (round_number << 32 | peer) if self.stochastic else None
        if not self.error_feedback:
            return self.codec.encode(delta, seed=seed)
        while len(self._feedback) <= peer:
            self._feedback.append(LoraErrorFeedback(delta.shape))
        return self._feedback[peer].encode(self.codec, delta, seed=seed)
