"""A merge through a running mesh: peer ``i``'s delta goes to the daemon whose home is ``homes[i]``,
and the merged delta is what the daemons' averaging protocol delivers.

It has the shape of the in-process merges (:mod:`pyagent.lora.merge`), so the fine-tuning harness and
the demo run unchanged on real daemons. numpy and trio only: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import trio

from pyagent.client import Mesh
from pyagent.lora.merge import Merged
from pyagent.proto.lora import MergeResult


class MeshMerge:
    """Every call is one round of the mesh: numbered ``first_round + round_number``, because a daemon
    takes each round number once."""

    def __init__(self, homes: Sequence[Path], first_round: int = 0) -> None:
        self.homes = tuple(homes)
        self.first_round = first_round
        self.last: list[MergeResult] = []
        """Each daemon's view of the latest round: who took part, bytes, codec."""

    def __call__(
        self, round_number: int, deltas: Sequence[npt.NDArray[np.float32]], weights: Sequence[float]
    ) -> Merged:
        if len(deltas) != len(self.homes) or len(weights) != len(self.homes):
            raise ValueError(f"{len(self.homes)} daemons, {len(deltas)} deltas, {len(weights)} weights")
        self.last = trio.run(self._round, self.first_round + round_number, deltas, weights)
        first = self.last[0]
        if any(not np.array_equal(result.delta, first.delta) for result in self.last[1:]):
            raise RuntimeError(f"round {first.round}: the daemons ended with different merged deltas")
        return Merged(first.delta, tuple(result.bytes_sent for result in self.last))

    async def _round(
        self, number: int, deltas: Sequence[npt.NDArray[np.float32]], weights: Sequence[float]
    ) -> list[MergeResult]:
        results: list[MergeResult | None] = [None] * len(self.homes)

        async def one(index: int) -> None:
            async with Mesh.open(self.homes[index]) as mesh:
                await mesh.lora.contribute(deltas[index], weights[index], round=number)
                results[index] = await mesh.lora.merged(number)

        async with trio.open_nursery() as nursery:
            for index in range(len(self.homes)):
                nursery.start_soon(one, index)
        return [result for result in results if result is not None]
