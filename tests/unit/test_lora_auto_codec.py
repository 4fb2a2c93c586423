"""``[lora] codec = "auto"``: each round's own-delta codec follows the bandwidth this peer measured on its
last round's transfers (the core's ``lora_choose_codec``)."""

from __future__ import annotations

import numpy as np
import pytest
from lora_harness import Members, peers

from pyagent.errors import ConfigError
from pyagent.proto.events import LocalRequest, TransferDone
from pyagent.proto.lora import PROTOCOL, Config, Contribute, LoraAveraging, LoraStatus
from pyagent.proto.lora.bandwidth import SAMPLE_BYTES_MIN, UplinkEstimate
from pyagent.proto.ready import Ready, Transfer
from pyagent.proto.types import US_PER_S
from pyagent_simnet.lora_keys import SeededKeyring

NUMEL = 1 << 20
# A round of 3 peers is one step, and the codec's frame must move within a quarter of it: 0.25 s.
ROUND_TIMEOUT_MS = 1_000


def first_round_then_second(bytes_per_s: float) -> tuple[int, int, str]:
    """A peer's frame size in round 0 (at the guessed bandwidth), its frame size in round 1 after its
    round-0 transfers finished at ``bytes_per_s``, and its status's codec."""
    mesh = peers(3)
    config = Config(codec="auto", round_timeout_ms=ROUND_TIMEOUT_MS)
    keyring = SeededKeyring(7)
    me = mesh[0]
    component = LoraAveraging(me, np.random.default_rng(0), config, Members(mesh), keyring.identity(me))
    delta = np.random.default_rng(1).standard_normal(NUMEL).astype(np.float32)

    def contribute(round_number: int, now_us: int) -> list[Transfer]:
        out = Ready()
        component.on_request(
            LocalRequest(round_number + 1, Contribute(round_number, delta, 1.0)), now_us, out
        )
        transfers = [t for t in out.transfers if isinstance(t, Transfer)]
        assert transfers, "the peer sent its delta to nobody"
        return transfers

    first = contribute(0, 0)
    for transfer in first:
        took_us = int(transfer.source.size * US_PER_S / bytes_per_s)
        component.on_transfer(
            TransferDone(PROTOCOL, transfer.transfer_id, transfer.source.size, b""), took_us, Ready()
        )
    second = contribute(1, 10 * US_PER_S)
    status = Ready()
    component.on_request(LocalRequest(99, LoraStatus()), 10 * US_PER_S, status)
    codec = status.apply[0].value["codec"]  # type: ignore[index]
    return first[0].source.size, second[0].source.size, codec


def test_a_slow_link_gets_a_coarser_codec_and_a_fast_one_a_finer() -> None:
    guess_size, slow_size, slow_codec = first_round_then_second(bytes_per_s=200_000)
    _, fast_size, fast_codec = first_round_then_second(bytes_per_s=1_000_000_000)
    # 0.25 s at 200 kB/s is 50 kB: a 1M-value delta must go at well under a bit per value.
    assert slow_size <= 50_000 < guess_size, (slow_size, guess_size)
    # At 1 GB/s the most precise codec, FP16, fits.
    assert fast_size > 2 * NUMEL - 1 and fast_codec.startswith("auto: fp16"), (fast_size, fast_codec)
    assert slow_codec.startswith("auto: int2 top-"), slow_codec


def test_the_estimate_follows_large_transfers_and_ignores_small_ones() -> None:
    uplink = UplinkEstimate(guess_bytes_per_s=1e6)
    uplink.observe(SAMPLE_BYTES_MIN - 1, 1)
    assert uplink.bytes_per_s == 1e6 and uplink.samples == 0
    uplink.observe(1_000_000, US_PER_S // 10)  # 10 MB/s: the first sample replaces the guess
    assert uplink.bytes_per_s == pytest.approx(1e7)
    uplink.observe(1_000_000, US_PER_S)  # one slow transfer moves it a fifth of the way
    assert uplink.bytes_per_s == pytest.approx(1e7 - 0.2 * 9e6)


def test_auto_is_for_own_deltas_only() -> None:
    with pytest.raises(ConfigError, match="relay_codec must be one of"):
        Config.from_table({"relay_codec": "auto"})
    assert Config.from_table({"codec": "auto"}).codec == "auto"
