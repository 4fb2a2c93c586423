"""The membership decoder is the trust boundary: any input decodes or raises RemoteProtocolError, and a
rejected message leaves the component exactly as it was."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pyagent.errors import RemoteProtocolError
from pyagent.proto import wire
from pyagent.proto.events import LocalRequest, MessageReceived
from pyagent.proto.membership import PROTOCOL_ID, Join, Membership, Metadata, State, codec
from pyagent.proto.membership.records import Entry
from pyagent.proto.node import NodeCore

METADATA_BYTES_MAX = 512
DECODED_TYPES = (
    codec.Ping,
    codec.Ack,
    codec.Nack,
    codec.PingReq,
    codec.Gossip,
    codec.PushPull,
    codec.MetadataQuery,
    codec.MetadataReply,
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(1 << 64), max_value=(1 << 64) - 1),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner, max_size=6),
    max_leaves=8,
)
entry_like = st.lists(scalars | st.lists(scalars, max_size=3), min_size=6, max_size=6)
keys = st.sampled_from(["s", "u", "tg", "a", "nk", "w", "e", "r", "j", "q", "m", "zz"])
kinds = st.sampled_from(["p", "a", "n", "i", "g", "pp", "pr", "mq", "md", "x"])


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    message: dict[str, Any] = {"v": draw(st.sampled_from([1, 1, 1, 0, 2])), "t": draw(kinds)}
    for key in draw(st.lists(keys, max_size=6)):
        message[key] = draw(st.one_of(values, st.lists(entry_like, max_size=3)))
    return message


def valid_messages() -> list[dict[str, Any]]:
    alive = codec.encode_entry(Entry("peer-a", State.ALIVE, 3, 2, ("/ip4/10.0.0.1/tcp/1",)))
    suspect = codec.encode_entry(Entry("peer-b", State.SUSPECT, 1, 1, accuser="peer-a"))
    dead = codec.encode_entry(Entry("peer-c", State.DEAD, 7, 1))
    metadata = {"c": 8, "h": ["gpu:h100"], "x": {"zone": "b", "slots": 2}}
    return [
        codec.ping(1, [alive, suspect]),
        codec.ack(2, [dead]),
        codec.nack(3),
        codec.ping_req(4, "peer-b", ("/ip4/10.0.0.2/tcp/1",), True, 400, [alive]),
        codec.gossip([alive, suspect, dead]),
        codec.push_pull([alive, dead], response=False, reply_wanted=True, join=True),
        codec.push_pull([suspect], response=True, reply_wanted=False, join=False),
        codec.metadata_query(["peer-a", "peer-b"]),
        codec.metadata_reply([["peer-a", 2, metadata]]),
    ]


@pytest.mark.parametrize("message", valid_messages(), ids=lambda m: m["t"])
def test_valid_messages_survive_the_frame_codec(message: dict[str, Any]) -> None:
    (received,) = wire.FrameDecoder(Membership.limits).feed(wire.encode_frame(message, Membership.limits))
    decoded = codec.decode(received, METADATA_BYTES_MAX)
    assert isinstance(decoded, DECODED_TYPES)


def test_decoded_values_are_typed() -> None:
    decoded = codec.decode(valid_messages()[0], METADATA_BYTES_MAX)
    assert isinstance(decoded, codec.Ping)
    assert decoded.updates[0] == Entry("peer-a", State.ALIVE, 3, 2, ("/ip4/10.0.0.1/tcp/1",))
    assert decoded.updates[1].accuser == "peer-a"
    reply = codec.decode(valid_messages()[-1], METADATA_BYTES_MAX)
    assert isinstance(reply, codec.MetadataReply)
    assert reply.records[0][2] == Metadata(
        cpu_cores=8, hardware_tags=("gpu:h100",), extra={"zone": "b", "slots": 2}
    )


@pytest.mark.parametrize(
    "message",
    [
        {"v": 1, "t": "g", "u": [["me", 1, 0, 0, [], "me"]]},  # self-accusation
        {"v": 1, "t": "g", "u": [["x", 0, 0, 0, [], "y"]]},  # accuser on an alive entry
        {"v": 1, "t": "g", "u": [["x", 4, 0, 0, [], None]]},  # unknown state
        {"v": 1, "t": "g", "u": [["x", 0, True, 0, [], None]]},  # bool is not an incarnation
        {"v": 1, "t": "g", "u": []},  # gossip without news
        {"v": 1, "t": "p", "s": 1 << 40},
        {"v": 1, "t": "mq", "q": ["x" * 200]},
        {"v": 1, "t": "md", "m": [["x", 1, {"x": {"k": "v" * 300}}]]},
        {"v": 1, "t": "md", "m": [["x", 1, {"x": {f"k{i}": "v" * 200 for i in range(3)}}]]},  # > 512 bytes
        {"v": 2, "t": "p", "s": 1},
    ],
)
def test_bad_messages_are_rejected(message: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        codec.decode(message, METADATA_BYTES_MAX)


@given(messages())
@settings(max_examples=250, deadline=None)
def test_decoder_returns_a_message_or_raises_remote_protocol_error(message: dict[str, Any]) -> None:
    try:
        decoded = codec.decode(message, METADATA_BYTES_MAX)
    except RemoteProtocolError:
        return
    assert isinstance(decoded, DECODED_TYPES)


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with one field or one entry element replaced: reaches the deep checks."""
    message = dict(draw(st.sampled_from(valid_messages())))
    key = draw(st.sampled_from(sorted(message)))
    target = message[key]
    if isinstance(target, list) and target and isinstance(target[0], list) and draw(st.booleans()):
        items = [list(item) for item in target]
        row = draw(st.integers(0, len(items) - 1))
        items[row][draw(st.integers(0, len(items[row]) - 1))] = draw(values)
        message[key] = items
    else:
        message[key] = draw(values)
    return message


def fresh_node() -> tuple[NodeCore, Membership]:
    rng = random.Random(3)
    membership = Membership("me", rng)
    core = NodeCore("me", [membership])
    core.start(0)
    core.step(LocalRequest(1, Join(())), 0)
    news = codec.gossip(
        [
            codec.encode_entry(Entry("peer-a", State.ALIVE, 1, 1, ("/a",))),
            codec.encode_entry(Entry("peer-b", State.SUSPECT, 2, 1, accuser="peer-a")),
            codec.encode_entry(Entry("peer-c", State.ALIVE, 0, 1)),
        ]
    )
    core.step(MessageReceived("peer-a", PROTOCOL_ID, news), 10)
    return core, membership


def snapshot(membership: Membership) -> tuple[object, ...]:
    return (membership.members(), dict(membership.counters), membership.health_score, membership.live_count())


@given(st.one_of(messages(), mutated()))
# Found by CI: an unknown key holding an integer msgpack cannot encode made byte counting raise OverflowError.
@example(message={"v": 1, "t": "mq", "q": [], "s": -(2**63) - 1})
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_rejected_message_leaves_the_component_unchanged(message: dict[str, Any]) -> None:
    core, membership = fresh_node()
    before = snapshot(membership)
    try:
        core.step(MessageReceived("peer-c", PROTOCOL_ID, message), 20)
    except RemoteProtocolError:
        assert snapshot(membership) == before


@given(st.binary(max_size=512))
@settings(max_examples=200, deadline=None)
def test_arbitrary_bytes_through_the_frame_decoder(data: bytes) -> None:
    core, membership = fresh_node()
    before = snapshot(membership)
    try:
        message = wire.decode_body(data, Membership.limits)
        core.step(MessageReceived("peer-c", PROTOCOL_ID, message), 20)
    except RemoteProtocolError:
        assert snapshot(membership) == before
