"""The LoRA averaging component's local commands, its answers and its notices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pyagent.proto.types import PeerId


@dataclass(frozen=True, slots=True)
class Contribute:
    """This peer's delta for round ``round`` (float32, 1-D; every peer of a mesh uses one length) and its
    weight (its sample count). Reply value None; errors ``invalid`` and ``stale_round``."""

    round: int
    delta: npt.NDArray[np.float32]
    weight: float


@dataclass(frozen=True, slots=True)
class AwaitMerged:
    """Reply with a ``MergeResult`` once this peer's round ``round`` is finished (at the latest the
    round timeout after it started)."""

    round: int


@dataclass(frozen=True, slots=True)
class LoraStatus:
    """Reply with a JSON-able dict of this peer's averaging figures."""


@dataclass(frozen=True, slots=True)
class MergeResult:
    round: int
    delta: npt.NDArray[np.float32]
    weight: float
    # The peers whose deltas are in ``delta`` (this one included when its own delta made it).
    peers: tuple[PeerId, ...]
    bytes_sent: int
    bytes_received: int
    codec: str


@dataclass(frozen=True, slots=True)
class RoundFinished:
    """Notice: this peer finished a round."""

    round: int
    peers: int
    weight: float
    elapsed_us: int
    bytes_sent: int
    bytes_received: int
    # Whether the round ran into its timeout (some step decided on what it had by then).
    timed_out: bool


COMMAND_TYPES = (Contribute, AwaitMerged, LoraStatus)
