"""A peer's bad bytes on a registered protocol cost that peer its stream, and nothing else."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from test_host import GOSSIP, LIMITS, Node, running_nodes

from pyagent.errors import RemoteProtocolError
from pyagent.node.streams import FrameReader
from pyagent.proto.events import MessageReceived
from pyagent.proto.wire import FrameDecoder, Message, encode_frame
from pyagent.testing.garbage import garbage_frames, read_until_closed

GARBAGE = garbage_frames(LIMITS)


@pytest.mark.parametrize("name", sorted(GARBAGE))
async def test_garbage_costs_only_that_stream(name: str) -> None:
    async with running_nodes(2) as (a, b):
        await b.host.connect(a.addr)
        raw = await b.host.libp2p_host.new_stream(ID.from_base58(a.host.peer_id), [TProtocol(GOSSIP)])
        await raw.write(GARBAGE[name])
        await read_until_closed(raw.read)
        assert a.host.stats()["protocol_errors"] == 1
        await _still_serves(a, b)


async def _still_serves(a: Node, b: Node) -> None:
    b.host.send(a.host.peer_id, GOSSIP, {"v": 1, "t": "after"})
    assert await a.next_event(MessageReceived) == MessageReceived(
        b.host.peer_id, GOSSIP, {"v": 1, "t": "after"}
    )
    assert a.host.connected_peers() == [b.host.peer_id]


class _ChunkedStream:
    def __init__(self, chunks: list[bytes]) -> None:
        # An empty read means end of stream, as in py-libp2p.
        self._chunks = [chunk for chunk in chunks if chunk]

    async def read(self, n: int | None = None) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


def _read_all(chunks: list[bytes]) -> list[Message] | RemoteProtocolError:
    async def run() -> list[Message] | RemoteProtocolError:
        reader = FrameReader(_ChunkedStream(chunks), LIMITS, read_chunk_size_bytes=1 << 16)
        messages: list[Message] = []
        try:
            async for message in reader.messages():
                messages.append(message)
        except RemoteProtocolError as exc:
            return exc
        return messages

    return trio.run(run)


msgpack_scalars = st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
frames = st.lists(
    st.dictionaries(st.text(max_size=4), msgpack_scalars, max_size=3).map(
        lambda extra: encode_frame({**extra, "v": 1, "t": "m"})
    ),
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_reader_turns_any_bytes_into_messages_or_a_remote_protocol_error(chunks: list[bytes]) -> None:
    outcome = _read_all(chunks)
    if isinstance(outcome, list):
        decoder = FrameDecoder(LIMITS)
        assert outcome == decoder.feed(b"".join(chunks))
        assert decoder.buffered_bytes == 0


@settings(max_examples=200, deadline=None)
@given(frames, st.data())
def test_reader_reassembles_frames_split_anywhere(encoded: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(encoded)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    outcome = _read_all(chunks)
    assert outcome == FrameDecoder(LIMITS).feed(stream)
    truncated = _read_all([stream[:-1]]) if stream else []
    assert isinstance(truncated, RemoteProtocolError) or truncated == []
