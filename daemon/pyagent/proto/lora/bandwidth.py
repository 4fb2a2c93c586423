"""How fast this peer's deltas leave: an estimate from its finished transfers, for ``codec = "auto"``.

Each ``Transfer`` that ends with ``TransferDone`` gives one sample, its bytes over the time from the
``Transfer`` to its ``Done``. A round's transfers run side by side on one uplink, so a sample is the
share of the link one transfer gets, which is what the next round's frame will get too. Samples are
smoothed (an exponentially weighted mean) so one slow transfer does not swing the codec.
"""

from __future__ import annotations

from pyagent.proto.types import US_PER_S

# The weight of a new sample: about the last five transfers count.
SMOOTHING = 0.2
# Transfers shorter than this measure latency, not bandwidth: they are not counted.
SAMPLE_BYTES_MIN = 16 << 10


class UplinkEstimate:
    def __init__(self, guess_bytes_per_s: float) -> None:
        self.bytes_per_s = float(guess_bytes_per_s)
        self.samples = 0

    def observe(self, size_bytes: int, elapsed_us: int) -> None:
        if size_bytes < SAMPLE_BYTES_MIN:
            return
        rate = size_bytes * US_PER_S / max(1, elapsed_us)
        self.bytes_per_s = (
            rate if self.samples == 0 else self.bytes_per_s + SMOOTHING * (rate - self.bytes_per_s)
        )
        self.samples += 1
