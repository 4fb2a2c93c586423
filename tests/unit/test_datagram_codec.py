"""Sealed datagrams (``pyagent.proto.datagram``): what one key seals only that key opens, unchanged; any
other bytes are refused as ``Rejected`` and nothing else; the replay window accepts each counter once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyagent.proto import datagram
from pyagent.proto.datagram import Kind, Rejected, ReplayWindow

keys = st.binary(min_size=datagram.KEY_BYTES, max_size=datagram.KEY_BYTES)
kinds = st.sampled_from(list(Kind))
channels = st.integers(0, datagram.CHANNEL_MAX)
counters = st.integers(0, datagram.COUNTER_MAX)
payloads = st.binary(max_size=datagram.PAYLOAD_BYTES_MAX)


def unseal(key: bytes, packet: bytes) -> tuple[datagram.Header, bytes]:
    header = datagram.read_header(packet)
    return header, datagram.open_sealed(key, header, packet)


@given(keys, kinds, channels, counters, payloads)
def test_a_sealed_packet_opens_to_what_was_sealed(
    key: bytes, kind: Kind, channel: int, counter: int, payload: bytes
) -> None:
    packet = datagram.seal(key, kind, channel, counter, payload)
    assert len(packet) == len(payload) + datagram.OVERHEAD_BYTES <= datagram.PACKET_BYTES_MAX
    assert unseal(key, packet) == (datagram.Header(kind, channel, counter), payload)


@given(keys, kinds, channels, counters, payloads, st.data())
def test_any_changed_byte_is_refused(
    key: bytes, kind: Kind, channel: int, counter: int, payload: bytes, data: st.DataObject
) -> None:
    packet = bytearray(datagram.seal(key, kind, channel, counter, payload))
    index = data.draw(st.integers(0, len(packet) - 1))
    packet[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(Rejected):
        unseal(key, bytes(packet))


@given(keys, keys, kinds, payloads)
def test_another_key_cannot_open_it(key: bytes, other: bytes, kind: Kind, payload: bytes) -> None:
    packet = datagram.seal(key, kind, 1, 1, payload)
    if other != key:
        with pytest.raises(Rejected, match="auth"):
            unseal(other, packet)


@given(keys, st.binary(max_size=datagram.PACKET_BYTES_MAX + 64))
def test_arbitrary_bytes_are_rejected_and_nothing_else(key: bytes, packet: bytes) -> None:
    with pytest.raises(Rejected) as refused:
        unseal(key, packet)
    assert refused.value.reason in {"oversize", "truncated", "kind", "auth"}


def test_the_size_limits_hold_on_both_sides() -> None:
    key = bytes(datagram.KEY_BYTES)
    with pytest.raises(ValueError, match="exceeds"):
        datagram.seal(key, Kind.DATA, 1, 1, bytes(datagram.PAYLOAD_BYTES_MAX + 1))
    with pytest.raises(Rejected, match="oversize"):
        datagram.read_header(bytes(datagram.PACKET_BYTES_MAX + 1))
    with pytest.raises(Rejected, match="truncated"):
        datagram.read_header(bytes(datagram.OVERHEAD_BYTES - 1))


def test_the_two_directions_under_one_key_never_share_a_nonce() -> None:
    """The sender's ECHO and the receiver's ECHO_REPLY use the same key and may use the same counter;
    the kind in the nonce keeps them apart, so one cannot be passed off as the other."""
    key = bytes(range(datagram.KEY_BYTES))
    echo = datagram.seal(key, Kind.ECHO, 7, 1, b"token")
    forged = bytes([Kind.ECHO_REPLY]) + echo[1:]
    with pytest.raises(Rejected, match="auth"):
        unseal(key, forged)


@given(st.lists(st.integers(0, 300), max_size=200))
def test_the_replay_window_accepts_each_recent_counter_once(arrivals: list[int]) -> None:
    window, seen, highest = ReplayWindow(), set[int](), -1
    for counter in arrivals:
        fresh = counter not in seen and counter > highest - datagram.REPLAY_WINDOW
        assert window.accept(counter) == fresh, (counter, highest)
        if fresh:
            seen.add(counter)
            highest = max(highest, counter)
