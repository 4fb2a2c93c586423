"""The Rust shape check (``pyagent._core.check_msgpack_shape``) that runs on frame bytes before msgpack.

It replaced a Python walk over the decoded value; the reference below is that walk, and the Rust check
must accept exactly what it accepts. Whatever the bytes, ``decode_body`` returns a message or raises
RemoteProtocolError.
"""

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgpack_values import frame_messages, msgpack_values

from pyagent._core import check_msgpack_shape
from pyagent.errors import RemoteProtocolError
from pyagent.proto import wire
from pyagent.proto.wire import Limits, decode_body, pack

LIMITS = Limits(frame_size_bytes_max=4096, depth_max=4, count_max=64)


def reference_accepts(value: object, depth_max: int, count_max: int) -> bool:
    """The Python check the Rust one replaced, level by level: containers from depth 1 at the top, every
    value counted once, map keys included."""
    if type(value) is not dict and type(value) is not list:
        return True
    level: list[Any] = [value]
    count = 1
    depth = 1
    while True:
        if depth > depth_max:
            return False
        children = [child for item in level for child in (item.values() if type(item) is dict else item)]
        count += len(children) + sum([len(item) for item in level if type(item) is dict])
        if count > count_max:
            return False
        level = [child for child in children if type(child) is list or type(child) is dict]
        if not level:
            return True
        depth += 1


values = msgpack_values(floats=True, leaves_max=60)


@given(values, st.integers(0, 8), st.integers(0, 80))
@settings(max_examples=1000)
def test_rust_check_accepts_exactly_what_the_python_walk_accepted(
    value: object, depth_max: int, count_max: int
) -> None:
    body = pack(value)
    if reference_accepts(value, depth_max, count_max):
        check_msgpack_shape(body, depth_max, count_max)
    else:
        with pytest.raises(ValueError, match=r"deeper than depth_max|more than count_max"):
            check_msgpack_shape(body, depth_max, count_max)


def _decodes_or_refuses(body: bytes) -> None:
    try:
        message = decode_body(body, LIMITS)
    except RemoteProtocolError:
        return
    assert isinstance(message, dict)


messages = frame_messages(values)


@given(st.binary(max_size=512))
@settings(max_examples=1000)
def test_arbitrary_bytes_decode_or_raise_remote_protocol_error(body: bytes) -> None:
    _decodes_or_refuses(body)


@given(messages, st.data())
@settings(max_examples=1000)
def test_mutated_valid_frames_decode_or_raise_remote_protocol_error(
    message: dict[str, object], data: st.DataObject
) -> None:
    body = bytearray(pack(message))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        mutation = data.draw(st.sampled_from(["truncate", "flip", "append", "overwrite"]))
        if mutation == "truncate":
            del body[data.draw(st.integers(0, len(body))) :]
        elif mutation == "flip" and body:
            body[data.draw(st.integers(0, len(body) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        elif mutation == "append":
            body += data.draw(st.binary(min_size=1, max_size=8))
        elif mutation == "overwrite" and body:
            # Length and count fields live in the marker byte and the bytes after it: set one to an
            # extreme.
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.sampled_from([0x00, 0x7F, 0xFF]))
    _decodes_or_refuses(bytes(body))


@pytest.mark.parametrize(
    ("body", "limits", "match"),
    [
        # array32 of 2^32 - 1 items, then three: refused by its declared size.
        (b"\xdd\xff\xff\xff\xff\x01\x02\x03", LIMITS, "count_max"),
        # The same with no practical count bound: refused when the three items run out.
        (b"\xdd\xff\xff\xff\xff\x01\x02\x03", Limits(count_max=2**62), "truncated"),
        # map32 of 2^32 - 1 pairs, str32 and bin32 of 4 GiB.
        (b"\xdf\xff\xff\xff\xff\xa0\x01", Limits(count_max=2**62), "truncated"),
        (b"\x91\xdb\xff\xff\xff\xffabc", LIMITS, "truncated"),
        (b"\x91\xc6\xff\xff\xff\xffabc", LIMITS, "truncated"),
    ],
)
def test_huge_declared_sizes_are_refused_fast(body: bytes, limits: Limits, match: str) -> None:
    started = time.perf_counter()
    with pytest.raises(RemoteProtocolError, match=match):
        decode_body(body, limits)
    # The refusal needs no work proportional to the declared size; a generous bound for a shared CI box.
    assert time.perf_counter() - started < 0.1


def test_a_refused_frame_never_reaches_msgpack(monkeypatch: pytest.MonkeyPatch) -> None:
    def unpackb(*args: object, **kwargs: object) -> object:
        raise AssertionError("msgpack decoded a frame the shape check should have refused")

    monkeypatch.setattr(wire.msgpack, "unpackb", unpackb)
    too_deep = pack({"v": 1, "t": "x", "n": [[[[[]]]]]})
    with pytest.raises(RemoteProtocolError, match="nested deeper than depth_max=4"):
        decode_body(too_deep, LIMITS)
    too_many = pack({"v": 1, "t": "x", "n": list(range(100))})
    with pytest.raises(RemoteProtocolError, match="more than count_max=64 values"):
        decode_body(too_many, LIMITS)
