"""The LoRA delta codecs through the binding: round trips within stated error bounds for every value
codec and density, decoders that refuse malformed frames cleanly, and error feedback that loses nothing.

Bounds, with ``scale`` the largest magnitude of the value's block and ``L`` the codec's largest level
(127, 7, 1 for INT8, INT4, INT2): nearest rounding ``|x - x'| <= scale / (2 L)``; stochastic rounding
``|x - x'| <= scale / L``; FP16 ``|x - x'| <= |x| / 2**11`` (plus 2**-25 for subnormals).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyagent._core import blake3, lora_decode_into
from pyagent.lora.codecs import (
    LoraCodec,
    LoraErrorFeedback,
    LoraFrameError,
    decode,
    lora_choose_codec,
    residual,
)

LEVELS = {"int8": 127, "int4": 7, "int2": 1}
CODECS = ["fp16", *LEVELS]
# Relative slack for float32 arithmetic in the scale and level products.
SLACK = 1e-5

values_1d = hnp.arrays(
    np.float32,
    st.integers(1, 3000),
    elements=st.floats(-1e3, 1e3, width=32),
)
block_sizes = st.sampled_from([8, 24, 64, 256])


def block_scales(values: np.ndarray, block_size: int) -> np.ndarray:
    """Each value's block scale (the block's largest magnitude)."""
    padded = np.zeros(-(-values.size // block_size) * block_size, np.float32)
    padded[: values.size] = np.abs(values)
    scales = padded.reshape(-1, block_size).max(axis=1)
    return np.repeat(scales, block_size)[: values.size]


def assert_within_bound(
    original: np.ndarray, decoded: np.ndarray, codec: str, block_size: int, stochastic: bool
) -> None:
    error = np.abs(original.astype(np.float64) - decoded.astype(np.float64))
    if codec == "fp16":
        bound = np.abs(original.astype(np.float64)) / 2**11 + 2**-25
    else:
        step = block_scales(original, block_size).astype(np.float64) / LEVELS[codec]
        bound = (step if stochastic else step / 2) * (1 + SLACK) + 1e-30
    worst = int(np.argmax(error - bound))
    assert error[worst] <= bound[worst], (codec, worst, original[worst], decoded[worst])


def top_k_positions(values: np.ndarray, chunk_size: int, k: int) -> np.ndarray:
    """The reference selection: per chunk the k largest magnitudes, ties to the lower position."""
    kept = []
    for base in range(0, values.size, chunk_size):
        chunk = np.abs(values[base : base + chunk_size])
        order = np.argsort(-chunk, kind="stable")[: min(k, chunk.size)]
        kept.append(np.sort(order) + base)
    return np.concatenate(kept)


@settings(max_examples=200, deadline=None)
@given(values_1d, st.sampled_from(CODECS), block_sizes, st.none() | st.integers(0, 2**64 - 1))
def test_dense_round_trip_is_within_the_bound(
    values: np.ndarray, codec: str, block_size: int, seed: int | None
) -> None:
    if codec == "fp16":
        seed = None  # FP16 always rounds to nearest
    frame = LoraCodec(codec, block_size).encode(values, seed=seed)
    got_codec, decoded = decode(frame, values.size)
    assert got_codec == LoraCodec(codec, block_size)
    assert decoded.shape == values.shape
    assert_within_bound(values, decoded, codec, block_size, stochastic=seed is not None)
    assert LoraCodec(codec, block_size).encode(values, seed=seed) == frame  # deterministic


@settings(max_examples=200, deadline=None)
@given(
    values_1d,
    st.sampled_from(CODECS),
    block_sizes,
    st.sampled_from([8, 100, 4096]),
    st.sampled_from([0.002, 0.01, 0.03, 0.1, 0.5, 1.0]),
    st.none() | st.integers(0, 2**64 - 1),
)
def test_sparse_round_trip_keeps_the_top_k_within_the_bound(
    values: np.ndarray, codec: str, block_size: int, chunk_size: int, density: float, seed: int | None
) -> None:
    if codec == "fp16":
        seed = None
    k = max(1, round(density * chunk_size))
    lora = LoraCodec(codec, block_size, chunk_size, k)
    frame = lora.encode(values, seed=seed)
    assert len(frame) <= lora.frame_len_max(values.size)
    _, decoded = decode(frame, values.size)
    kept = top_k_positions(values, chunk_size, k)
    dropped = np.ones(values.size, bool)
    dropped[kept] = False
    assert not decoded[dropped].any()
    assert_within_bound(values[kept], decoded[kept], codec, block_size, stochastic=seed is not None)


def test_the_shape_travels_and_bits_per_parameter_are_what_the_layout_says() -> None:
    values = np.random.default_rng(1).standard_normal((64, 4096), dtype=np.float32)
    for codec, bits in [("fp16", 16), ("int8", 8.5), ("int4", 4.5), ("int2", 2.5)]:
        frame = LoraCodec(codec, 64).encode(values)
        _, decoded = decode(frame, values.size)
        assert decoded.shape == (64, 4096)
        header_bits = 8 * (20 + 2 * 8 + 8 + 32)
        assert len(frame) * 8 - header_bits == pytest.approx(bits * values.size)
    # SparseLoCo's point: 3% of 2-bit values cost well under one bit per parameter.
    frame = LoraCodec("int2", 64, 4096, 123).encode(values)
    assert len(frame) * 8 / values.size < 0.5


def rehashed(frame: bytes) -> bytes:
    return frame[:-32] + blake3(frame[:-32])


valid_frames = st.builds(
    lambda values, codec, chunk, k: LoraCodec(codec, 8, chunk, min(k, chunk) if chunk else 0).encode(values),
    hnp.arrays(np.float32, st.integers(1, 300), elements=st.floats(-10, 10, width=32)),
    st.sampled_from(CODECS),
    st.sampled_from([0, 8, 64]),
    st.integers(1, 64),
)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_are_refused_cleanly(data: bytes) -> None:
    with pytest.raises(LoraFrameError):
        decode(data, 1 << 20)
    with pytest.raises(LoraFrameError):
        decode(rehashed(data) if len(data) >= 32 else data, 1 << 20)


@settings(max_examples=1000, deadline=None)
@given(valid_frames, st.data())
def test_mutated_frames_are_refused_or_decode_within_the_limit(frame: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(frame) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != frame[at]))
    mutated = frame[:at] + bytes([byte]) + frame[at + 1 :]
    with pytest.raises(LoraFrameError):
        decode(mutated, 1 << 20)  # the hash no longer matches
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(LoraFrameError):
        decode(frame[:cut], 1 << 20)
    # With the hash made good, the field itself is checked: a clean error or a delta within the limit.
    try:
        _, decoded = decode(rehashed(mutated), 4096)
    except LoraFrameError:
        return
    assert decoded.size <= 4096
    assert np.isfinite(decoded).all()


def test_a_frame_over_the_callers_limit_is_refused_before_allocation() -> None:
    frame = LoraCodec("int2", 64, 4096, 8).encode(np.ones(1 << 16, np.float32))
    with pytest.raises(LoraFrameError, match="more than"):
        decode(frame, (1 << 16) - 1)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 500),
    st.integers(1, 8),
    st.sampled_from(CODECS),
    st.sampled_from([0.01, 0.1, 1.0]),
    st.integers(0, 2**32),
)
def test_error_feedback_loses_nothing(n: int, rounds: int, codec: str, density: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = max(1, round(density * 64))
    lora = LoraCodec(codec, 8, 64, k)
    feedback = LoraErrorFeedback((n,))
    given_sum = np.zeros(n, np.float64)
    sent_sum = np.zeros(n, np.float64)
    for round_index in range(rounds):
        delta = rng.standard_normal(n).astype(np.float32)
        frame = feedback.encode(lora, delta, seed=None if codec == "fp16" else seed + round_index)
        given_sum += delta
        sent_sum += decode(frame, n)[1]
    np.testing.assert_allclose(sent_sum + residual(feedback), given_sum, rtol=1e-5, atol=1e-4)


def test_error_feedback_sends_what_was_held_back_earlier() -> None:
    lora = LoraCodec("int8", 8, 8, 1)
    feedback = LoraErrorFeedback((8,))
    first = np.array([4, 3, 0, 0, 0, 0, 0, 0], np.float32)
    decode(feedback.encode(lora, first), 8)
    # Round two gives nothing new: the 3 held back last round is now the largest and goes out.
    _, sent = decode(feedback.encode(lora, np.zeros(8, np.float32)), 8)
    assert sent[1] == pytest.approx(3.0)
    assert not residual(feedback).any()
    feedback.reset()
    assert not residual(feedback).any()


def test_the_chosen_codec_fits_the_budget_and_is_the_most_precise_that_does() -> None:
    numel = 10_000_000
    previous_size = None
    for bandwidth in [1e4, 1e5, 1e6, 1e7, 1e8, 1e9]:
        codec = lora_choose_codec(bandwidth, numel, 5.0)
        size = codec.frame_len_max(numel, 8)
        if bandwidth >= 1e5:
            assert size <= bandwidth * 5.0
        if previous_size is not None:
            assert size >= previous_size
        previous_size = size
    assert lora_choose_codec(1e9, numel, 5.0) == LoraCodec("fp16", 256)
    smallest = lora_choose_codec(1.0, numel, 5.0)
    assert (smallest.codec, smallest.k_per_chunk, smallest.chunk_size) == ("int2", 8, 4096)


def test_caller_mistakes_are_value_errors_that_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="codec must be one of"):
        LoraCodec("int3")
    with pytest.raises(ValueError, match="block_size"):
        LoraCodec("int8", 4)
    with pytest.raises(ValueError, match="multiple of 8"):
        LoraCodec("int8", 12)
    with pytest.raises(ValueError, match="k_per_chunk"):
        LoraCodec("int8", 64, 64, 65)
    with pytest.raises(ValueError, match="finite"):
        LoraCodec("int8").encode(np.array([1.0, np.nan], np.float32))
    with pytest.raises(ValueError, match="fp16 carries"):
        LoraCodec("fp16").encode(np.array([1e6], np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        LoraCodec("int8").encode(np.ones((4, 4), np.float32)[:, ::2])
    with pytest.raises((BufferError, TypeError, ValueError)):
        LoraCodec("int8").encode(np.ones(4, np.float64))
    frame = LoraCodec("int8").encode(np.ones(4, np.float32))
    read_only = np.zeros(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        lora_decode_into(frame, read_only)
    with pytest.raises(ValueError, match="values"):
        lora_decode_into(frame, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="residual"):
        LoraErrorFeedback((4,)).encode(LoraCodec("int8"), np.ones(5, np.float32))
