"""The frame codec is the trust boundary: any bytes either decode or raise RemoteProtocolError."""

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgpack_values import frame_messages, msgpack_values

from pyagent.errors import LocalProtocolError, RemoteProtocolError
from pyagent.proto.wire import FrameDecoder, Limits, decode_body, encode_frame, encode_varint, pack

LIMITS = Limits(frame_size_bytes_max=4096, depth_max=4, count_max=64)

messages = frame_messages(msgpack_values(floats=False, leaves_max=20))


@given(st.binary(max_size=2048))
@settings(max_examples=500)
def test_any_bytes_decode_or_raise_remote_protocol_error(data: bytes) -> None:
    decoder = FrameDecoder(LIMITS)
    try:
        decoded = decoder.feed(data)
    except RemoteProtocolError:
        return
    assert all(isinstance(m, dict) and isinstance(m["t"], str) for m in decoded)


@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_round_trip_across_arbitrary_chunking(batch: list[dict], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(m) for m in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    decoder = FrameDecoder()
    out: list[dict] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        out += decoder.feed(wire[start:end])
    assert out == batch
    assert decoder.buffered_bytes == 0


def test_oversize_length_prefix_is_rejected_before_buffering() -> None:
    decoder = FrameDecoder(LIMITS)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        decoder.feed(encode_varint(LIMITS.frame_size_bytes_max + 1))
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"\x00")  # a failed decoder stays failed: the stream must be dropped


def test_runaway_varint_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="too long"):
        FrameDecoder().feed(b"\xff" * 6)


def test_deep_nesting_is_rejected() -> None:
    nested: object = {"v": 1, "t": "x"}
    for _ in range(LIMITS.depth_max + 1):
        nested = [nested]
    with pytest.raises(RemoteProtocolError, match="deeper"):
        decode_body(msgpack.packb({"v": 1, "t": "x", "n": nested}), LIMITS)


def test_too_many_values_are_rejected() -> None:
    body = msgpack.packb({"v": 1, "t": "x", "a": list(range(40)), "b": list(range(40))})
    with pytest.raises(RemoteProtocolError, match="count_max"):
        decode_body(body, LIMITS)


@pytest.mark.parametrize(
    "value",
    [[1, 2], {"t": "x"}, {"v": "1", "t": "x"}, {"v": True, "t": "x"}, {"v": 1}, {"v": 1, "t": 5}, {1: 2}],
)
def test_envelope_is_checked(value: object) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(msgpack.packb(value), LIMITS)


def test_bad_msgpack_and_trailing_bytes_are_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="reserved"):
        decode_body(b"\xc1", LIMITS)  # 0xc1 is never used in msgpack
    with pytest.raises(RemoteProtocolError, match="trailing"):
        decode_body(msgpack.packb({"v": 1, "t": "x"}) + b"\x00", LIMITS)
    with pytest.raises(RemoteProtocolError, match="truncated"):
        decode_body(msgpack.packb({"v": 1, "t": "x"})[:-1], LIMITS)


@pytest.mark.parametrize(
    "ext",
    [
        # An ext8 with no data: msgpack's max_ext_len=0 lets it through as an ExtType object.
        b"\xc7\x00\x05",
        b"\xd4\x05\x00",
        msgpack.packb(msgpack.ExtType(5, b"abcd")),
        msgpack.packb(msgpack.Timestamp(1)),
    ],
)
def test_ext_types_are_rejected(ext: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="ext types"):
        decode_body(b"\x83\xa1v\x01\xa1t\xa1x\xa1e" + ext, LIMITS)


def test_encoder_refuses_what_a_peer_would_refuse() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame({"t": "no version"})
    with pytest.raises(LocalProtocolError, match="exceeds"):
        encode_frame({"v": 1, "t": "x", "blob": b"\0" * 5000}, LIMITS)


def test_the_shared_packer_matches_packb_even_after_a_value_it_cannot_pack() -> None:
    with pytest.raises(TypeError):
        pack({"v": 1, "t": "x", "bad": [1, object()]})
    value = {"v": 1, "t": "x", "a": [1, "b", None, 2.5, b"\x00"]}
    assert pack(value) == msgpack.packb(value, use_bin_type=True)
