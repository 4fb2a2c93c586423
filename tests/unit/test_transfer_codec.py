"""The transfer protocol's frame decoders are a trust boundary: any bytes, and any well-framed message,
either parse or raise RemoteProtocolError."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgpack_values import frame_messages, msgpack_values

from pyagent._core import blake3, blake3_chunks
from pyagent.errors import RemoteProtocolError
from pyagent.node.transfer import (
    CONTROL_LIMITS,
    Abort,
    Accept,
    Ack,
    Chunk,
    Done,
    Offer,
    Refuse,
    TransferConfig,
    blob_digest,
    chunk_limits,
    encode,
    parse_receiver_frame,
    parse_sender_frame,
)
from pyagent.proto.wire import FrameDecoder

DIGEST = bytes(range(32))
ints = st.integers(0, (1 << 63) - 1)
digests = st.binary(min_size=32, max_size=32)
texts = st.text(max_size=40)

sender_frames = st.one_of(
    st.builds(
        lambda p, i, size, chunk, frac, d: Offer("/" + p, i, size, chunk, size * frac // 100, d),
        st.text(max_size=30),
        ints,
        ints,
        st.integers(1, (1 << 63) - 1),
        st.integers(0, 100),
        digests,
    ),
    st.builds(Chunk, ints, digests, st.binary(max_size=300)),
)
receiver_frames = st.one_of(
    st.builds(Accept, ints, st.integers(1, (1 << 63) - 1)),
    st.builds(Refuse, st.text(max_size=64), texts),
    st.builds(Ack, ints),
    st.builds(Done, digests),
    st.builds(Abort, texts),
)

# Envelopes around arbitrary fields, plus ones with exactly a real frame type's keys and random values.
any_messages = frame_messages(msgpack_values(floats=True, leaves_max=12))
field_names = {
    "offer": ("p", "id", "size", "chunk", "from", "digest"),
    "chunk": ("o", "h", "d"),
    "accept": ("from", "window"),
    "refuse": ("code", "reason"),
    "ack": ("acked",),
    "done": ("digest",),
    "abort": ("reason",),
}
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**64), 2**64 - 1), st.text(max_size=8), st.binary(max_size=40)
)
typed_messages = st.sampled_from(sorted(field_names)).flatmap(
    lambda kind: st.fixed_dictionaries(
        {
            "v": st.sampled_from([1, 1, 1, 0, 2, True]),
            "t": st.just(kind),
            **dict.fromkeys(field_names[kind], scalars),
        }
    )
)


@given(sender_frames)
def test_sender_frames_round_trip(frame: Offer | Chunk) -> None:
    [message] = FrameDecoder(chunk_limits(1024)).feed(encode(frame, chunk_limits(1024)))
    assert parse_sender_frame(message) == frame


@given(receiver_frames)
def test_receiver_frames_round_trip(frame: Accept | Refuse | Ack | Done | Abort) -> None:
    [message] = FrameDecoder(CONTROL_LIMITS).feed(encode(frame))
    assert parse_receiver_frame(message) == frame


@given(st.binary(max_size=2048))
@settings(max_examples=500)
def test_any_bytes_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    for parse in (parse_sender_frame, parse_receiver_frame):
        try:
            for message in FrameDecoder(CONTROL_LIMITS).feed(data):
                parse(message)
        except RemoteProtocolError:
            pass


@given(st.one_of(any_messages, typed_messages))
@settings(max_examples=1000)
def test_any_message_parses_or_raises_remote_protocol_error(message: dict[str, Any]) -> None:
    for parse in (parse_sender_frame, parse_receiver_frame):
        try:
            frame = parse(message)
        except RemoteProtocolError:
            continue
        # What parses is well formed.
        if isinstance(frame, Offer):
            assert frame.protocol.startswith("/") and 0 <= frame.offset <= frame.size and frame.chunk_size > 0
        if isinstance(frame, Chunk | Done):
            assert len(frame.digest) == 32


@given(sender_frames, st.integers(0, 40), st.binary(min_size=1, max_size=8))
def test_a_damaged_frame_never_raises_anything_else(frame: Offer | Chunk, cut: int, junk: bytes) -> None:
    wire = encode(frame, chunk_limits(1024))
    damaged = wire[: max(0, len(wire) - cut)] + junk
    try:
        for message in FrameDecoder(chunk_limits(1024)).feed(damaged):
            parse_sender_frame(message)
    except RemoteProtocolError:
        pass


@pytest.mark.parametrize(
    ("message", "match"),
    [
        ({"v": 2, "t": "ack", "acked": 1}, "version"),
        ({"v": True, "t": "ack", "acked": 1}, "version"),
        ({"v": 1, "t": "ack", "acked": -1}, "acked"),
        ({"v": 1, "t": "ack", "acked": True}, "acked"),
        ({"v": 1, "t": "ack", "acked": 1, "extra": 0}, "fields"),
        ({"v": 1, "t": "done", "digest": b"short"}, "32 bytes"),
        ({"v": 1, "t": "refuse", "code": "x" * 65, "reason": ""}, "code"),
        ({"v": 1, "t": "offer"}, "unexpected"),
    ],
)
def test_receiver_frame_refusals(message: dict[str, Any], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        parse_receiver_frame(message)


def test_an_offer_must_resume_within_the_blob_and_name_a_protocol() -> None:
    base = {
        "v": 1,
        "t": "offer",
        "p": "/x/1.0.0",
        "id": 1,
        "size": 10,
        "chunk": 4,
        "from": 0,
        "digest": DIGEST,
    }
    assert parse_sender_frame(base) == Offer("/x/1.0.0", 1, 10, 4, 0, DIGEST)
    with pytest.raises(RemoteProtocolError, match="from"):
        parse_sender_frame({**base, "from": 11})
    with pytest.raises(RemoteProtocolError, match="chunk"):
        parse_sender_frame({**base, "chunk": 0})
    with pytest.raises(RemoteProtocolError, match="'/'"):
        parse_sender_frame({**base, "p": "x"})
    with pytest.raises(RemoteProtocolError, match="at most 256"):
        parse_sender_frame({**base, "p": "/" + "x" * 256})


def test_an_oversized_chunk_frame_is_refused_before_it_is_buffered() -> None:
    frame = encode(Chunk(0, DIGEST, bytes(8192)), chunk_limits(16384))
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        FrameDecoder(chunk_limits(1024)).feed(frame[:8])


def test_long_reasons_are_cut_to_what_the_peer_accepts() -> None:
    [message] = FrameDecoder(CONTROL_LIMITS).feed(encode(Abort("x" * 10_000)))
    assert parse_receiver_frame(message) == Abort("x" * 512)


def test_blob_digest_is_the_hash_of_the_chunk_hashes() -> None:
    data = bytes(range(256)) * 40
    hashes = blake3_chunks(data, 1000)
    assert hashes == b"".join(blake3(data[i : i + 1000]) for i in range(0, len(data), 1000))
    assert blob_digest(hashes) == blake3(hashes)
    assert blob_digest(b"") == blake3(b"")
    with pytest.raises(ValueError, match="positive"):
        blake3_chunks(data, 0)


def test_config_bounds() -> None:
    with pytest.raises(ValueError, match="positive"):
        TransferConfig(window_bytes=0)
    with pytest.raises(ValueError, match="chunk_size_bytes_max"):
        TransferConfig(chunk_size_bytes=8 << 20)
    with pytest.raises(ValueError, match="chunk_bytes_queued_max"):
        TransferConfig(chunk_bytes_queued_max=1 << 20)
