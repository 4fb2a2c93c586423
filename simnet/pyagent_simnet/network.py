"""The simulated network: what happens to a frame between one peer's ``Send`` and another's decoder.

Every decision (loss, delay, duplication, corruption) draws from the network's own generator, in the
order the sends happen, so a seed fixes the whole schedule. Partitions and clogs are checked at send
time: a partitioned frame is dropped, a clogged one is held and re-sent when the clog lifts.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from pyagent_simnet import latency

US_PER_MS = 1_000
US_PER_S = 1_000_000
BITS_PER_BYTE = 8
# A flipped frame gets this many bit flips at most: enough to hit prefix, envelope or payload.
CORRUPT_FLIPS_MAX = 3

# Why a frame never reached a decoder; these names appear in the report.
DROP_LOSS = "loss"
DROP_PARTITION = "partition"
DROP_QUEUE = "egress_queue_full"
DROP_DOWN = "destination_down"
DROP_UNKNOWN = "unknown_peer"
DROP_UNSUPPORTED = "protocol_unsupported"
DROP_HELD_FULL = "clog_buffer_full"


# The fate of one frame: a drop reason, or its delivery times (two when duplicated) and its bytes (maybe
# corrupted). A plain tuple: one is made for every frame of a run.
Verdict = tuple[str | None, tuple[int, ...], bytes]


@dataclass(frozen=True, slots=True)
class Faults:
    """The cuts and clogs in force at one moment (what the last heal or unclog lifted)."""

    cut: frozenset[tuple[int, int]]
    clogged_peers: frozenset[int]
    clogged_links: frozenset[tuple[int, int]]

    def touches(self, peer: int) -> bool:
        return _touches(self.cut, self.clogged_peers, self.clogged_links, peer)


def _touches(
    cut: Collection[tuple[int, int]], peers: Collection[int], links: Collection[tuple[int, int]], peer: int
) -> bool:
    """True when a cut or clog affects ``peer``'s traffic with anyone. A partition touches every peer:
    each is cut off from someone, and rumours from the far side may be about any of them."""
    return bool(cut) or peer in peers or any(peer in link for link in links)


class Network:
    def __init__(self, config: dict[str, Any], rng: random.Random, source: str) -> None:
        self.rng = rng
        self.loss: float = config["loss"]
        self.duplicate: float = config["duplicate"]
        self.corrupt: float = config["corrupt"]
        self.bandwidth_bps: int = config["bandwidth_bps"]
        self.egress_queue_bytes_max: int = config["egress_queue_bytes_max"]
        self.held_messages_max: int = config["held_messages_max"]
        self.sample_latency_us = latency.build(config["latency"], f"{source}: network.latency")
        self.region_names: list[str] = list(config["regions"]) or ["default"]
        self.region_weights: list[float] = [float(w) for w in config["region_weights"]] or [1.0] * len(
            self.region_names
        )
        matrix = config["region_latency_ms"] or [[0.0]]
        self.region_base_us: list[list[int]] = [[int(ms * US_PER_MS) for ms in row] for row in matrix]
        # Partition state: a side label per peer index, and the (from_side, to_side) pairs that are cut.
        self.side: dict[int, int] = {}
        self.cut: set[tuple[int, int]] = set()
        self.clogged_peers: set[int] = set()
        self.clogged_links: set[tuple[int, int]] = set()
        # Frames held by a clog, in send order: (src, dst, protocol, frame, dst_epoch).
        self.held: list[tuple[int, int, str, bytes, int]] = []
        self.egress_free_at_us: dict[int, int] = {}
        # The cuts and clogs in force before the last heal or unclog, and when that was: a checker needs
        # them to tell a stale consequence of a lifted fault from a fresh mistake.
        self.lifted_at_us = -1
        self.lifted: Faults | None = None

    def pick_region(self) -> int:
        return self.rng.choices(range(len(self.region_names)), weights=self.region_weights)[0]

    def set_param(self, key: str, value: float) -> None:
        if key == "bandwidth_bps":
            self.bandwidth_bps = int(value)
        else:
            setattr(self, key, float(value))

    def blocked(self, src: int, dst: int) -> bool:
        cut = self.cut
        return bool(cut) and (self.side.get(src, 0), self.side.get(dst, 0)) in cut

    def clogged(self, src: int, dst: int) -> bool:
        return bool(self.clogged_peers or self.clogged_links) and (
            src in self.clogged_peers or dst in self.clogged_peers or (src, dst) in self.clogged_links
        )

    def partition(self, sides: list[list[int]], one_way: bool) -> None:
        """Cut between the given sides; peers not named stay on side 0 with the first list."""
        self.side = {peer: label for label, members in enumerate(sides) for peer in members}
        labels = range(len(sides))
        if one_way:
            # Only frames from side 0 to the other sides are lost: the classic asymmetric route failure.
            self.cut = {(0, other) for other in labels if other != 0}
        else:
            self.cut = {(a, b) for a in labels for b in labels if a != b}

    def heal(self, now_us: int) -> None:
        self._remember(now_us)
        self.side, self.cut = {}, set()

    def unclog(self, now_us: int) -> list[tuple[int, int, str, bytes, int]]:
        self._remember(now_us)
        released, self.held = self.held, []
        self.clogged_peers, self.clogged_links = set(), set()
        return released

    def _remember(self, now_us: int) -> None:
        if not (self.cut or self.clogged_peers or self.clogged_links):
            return
        self.lifted, self.lifted_at_us = self.faults(), now_us

    def faults(self) -> Faults:
        return Faults(frozenset(self.cut), frozenset(self.clogged_peers), frozenset(self.clogged_links))

    def touches(self, peer: int) -> bool:
        return _touches(self.cut, self.clogged_peers, self.clogged_links, peer)

    def route(
        self, src: int, dst: int, src_region: int, dst_region: int, frame: bytes, now_us: int
    ) -> Verdict:
        """Decide one frame's fate. Partition and clog are the caller's checks; this is the wire itself."""
        rng = self.rng
        if self.loss and rng.random() < self.loss:
            return DROP_LOSS, (), frame
        depart_us = now_us
        if self.bandwidth_bps:
            free_us = self.egress_free_at_us.get(src, now_us)
            start_us = free_us if free_us > now_us else now_us
            backlog_bytes = (start_us - now_us) * self.bandwidth_bps // (BITS_PER_BYTE * US_PER_S)
            if backlog_bytes + len(frame) > self.egress_queue_bytes_max:
                return DROP_QUEUE, (), frame
            depart_us = start_us + len(frame) * BITS_PER_BYTE * US_PER_S // self.bandwidth_bps
            self.egress_free_at_us[src] = depart_us
        base_us = self.region_base_us[src_region][dst_region]
        sample = self.sample_latency_us
        at_us = depart_us + base_us + sample(rng)
        times: tuple[int, ...] = (at_us,)
        if self.duplicate and rng.random() < self.duplicate:
            times = (at_us, depart_us + base_us + sample(rng))
        if self.corrupt and rng.random() < self.corrupt:
            frame = self._flip(frame)
        return None, times, frame

    def _flip(self, frame: bytes) -> bytes:
        damaged = bytearray(frame)
        for _ in range(1 + self.rng.randrange(CORRUPT_FLIPS_MAX)):
            damaged[self.rng.randrange(len(damaged))] ^= 1 << self.rng.randrange(BITS_PER_BYTE)
        return bytes(damaged)
