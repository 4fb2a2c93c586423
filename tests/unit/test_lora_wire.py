"""The LoRA protocol's decoders take any bytes and either decode them or raise RemoteProtocolError."""

from __future__ import annotations

import contextlib

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyagent.errors import RemoteProtocolError
from pyagent.proto.lora import messages, values
from pyagent.proto.lora.config import Config
from pyagent.proto.wire import decode_body

LIMITS = messages.blob_limits(1 << 20)
NUMEL_MAX = 1 << 12
BLOB = messages.DeltaBlob(
    3, 1, 12.5, ("peerA", "peerB"), 4, "f32", np.arange(4, dtype="<f4").tobytes(), b"s" * 64
)


def test_a_blob_and_a_report_round_trip() -> None:
    assert messages.decode_blob(messages.encode_blob(BLOB), LIMITS, NUMEL_MAX) == BLOB
    report = messages.Report(3, 1, frozenset({"a", "b"}), frozenset({"c"}))
    encoded = msgpack.unpackb(msgpack.packb(messages.encode_report(report)))
    assert messages.decode_report(encoded) == report


def test_the_signed_bytes_cover_every_field_and_the_sender() -> None:
    base = messages.signed_bytes("peerA", BLOB)
    variants = [
        messages.DeltaBlob(4, 1, 12.5, BLOB.contributors, 4, "f32", BLOB.payload),
        messages.DeltaBlob(3, 2, 12.5, BLOB.contributors, 4, "f32", BLOB.payload),
        messages.DeltaBlob(3, 1, 13.0, BLOB.contributors, 4, "f32", BLOB.payload),
        messages.DeltaBlob(3, 1, 12.5, ("peerA",), 4, "f32", BLOB.payload),
        messages.DeltaBlob(3, 1, 12.5, BLOB.contributors, 4, "f32", BLOB.payload[:-1] + b"\x01"),
    ]
    assert all(messages.signed_bytes("peerA", blob) != base for blob in variants)
    assert messages.signed_bytes("peerB", BLOB) != base


@pytest.mark.parametrize(
    "change",
    [
        {"w": 0.0},
        {"w": float("nan")},
        {"w": 3},
        {"c": []},
        {"c": ["a", "a"]},
        {"c": [""]},
        {"n": 0},
        {"n": NUMEL_MAX + 1},
        {"k": "int3"},
        {"f": "text"},
        {"sig": b"x" * 200},
        {"r": -1},
        {"s": 16},
        {"v": 2},
        {"extra": 1},
    ],
)
def test_a_blob_with_a_bad_field_is_refused(change: dict[str, object]) -> None:
    body = msgpack.unpackb(messages.encode_blob(BLOB))
    body.update(change)
    with pytest.raises(RemoteProtocolError):
        messages.decode_blob(msgpack.packb(body), LIMITS, NUMEL_MAX)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_escape_as_anything_but_a_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        messages.decode_blob(data, LIMITS, NUMEL_MAX)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_blobs_never_escape_as_anything_but_a_protocol_error(data: st.DataObject) -> None:
    blob = bytearray(messages.encode_blob(BLOB))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    try:
        decoded = messages.decode_blob(bytes(blob), LIMITS, NUMEL_MAX)
        values.decode_payload(decoded.encoding, decoded.payload, decoded.numel)
    except RemoteProtocolError:
        pass


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=3), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "t", "r", "s", "h", "g", "x"]), msgpack_values))
def test_any_report_shaped_map_decodes_or_is_a_protocol_error(message: dict[str, object]) -> None:
    message.setdefault("v", 1)
    message.setdefault("t", "have")
    try:
        decoded = decode_body(msgpack.packb(message), messages.LIMITS)
        messages.decode_report(decoded)
    except RemoteProtocolError:
        pass


def test_a_blob_larger_than_the_limit_is_refused_before_decoding() -> None:
    big = messages.DeltaBlob(1, 0, 1.0, ("a",), 1, "f32", b"\0" * 2048)
    with pytest.raises(RemoteProtocolError):
        messages.decode_blob(messages.encode_blob(big), messages.blob_limits(1024), NUMEL_MAX)


@pytest.mark.parametrize("payload", [b"\0" * 15, np.array([1, np.inf, 0, 0], dtype="<f4").tobytes()])
def test_f32_values_of_the_wrong_length_or_not_finite_are_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        values.decode_payload("f32", payload, 4)


def test_a_frame_of_another_length_than_announced_is_refused() -> None:
    codec = values.codec_for(Config(codec="int8", density=1.0), relay=False)
    encoded = values.encode(np.ones(16, dtype=np.float32), codec, None)
    assert values.decode_payload(encoded.encoding, encoded.payload, 16).size == 16
    with pytest.raises(RemoteProtocolError):
        values.decode_payload(encoded.encoding, encoded.payload, 15)
    with pytest.raises(RemoteProtocolError):
        values.decode_payload(encoded.encoding, encoded.payload[:-1], 16)
