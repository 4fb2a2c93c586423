"""The stream handler of a registered message protocol: frames in, `MessageReceived` events out.

Awaiting the bounded events channel is the backpressure: while the daemon is busy, this stream stops
reading, yamux's window fills, and the sender's writes wait. Bad bytes cost the peer this stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import trio
from libp2p.abc import INetStream
from libp2p.io.exceptions import IOException

from pyagent.errors import RemoteProtocolError
from pyagent.node.counters import Counters
from pyagent.node.inbox import EventSender
from pyagent.node.libp2p_factory import StreamHandler
from pyagent.node.streams import FrameReader, finish_stream
from pyagent.proto.events import Event, MessageReceived
from pyagent.proto.wire import Limits

logger = logging.getLogger(__name__)


class InboundStreams:
    """The open inbound message streams of each (peer, protocol).

    A frame can decode cleanly and still be nonsense to the protocol core; the core's verdict arrives
    after the frame has left the reader. This registry lets that verdict cost the sender its stream,
    just as a decoder error does. Its size is bounded by py-libp2p's per-connection stream limit.
    """

    def __init__(self) -> None:
        self._open: dict[tuple[str, str], set[INetStream]] = {}

    @contextmanager
    def track(self, peer: str, protocol: str, stream: INetStream) -> Iterator[None]:
        streams = self._open.setdefault((peer, protocol), set())
        streams.add(stream)
        try:
            yield
        finally:
            streams.discard(stream)
            if not streams:
                self._open.pop((peer, protocol), None)

    def take(self, peer: str, protocol: str) -> set[INetStream]:
        return self._open.pop((peer, protocol), set())


def message_handler(
    protocol: str,
    limits: Limits,
    events: EventSender[Event],
    counters: Counters,
    read_chunk_size_bytes: int,
    registry: InboundStreams,
) -> StreamHandler:
    async def handle(stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        reader = FrameReader(
            stream, limits, read_chunk_size_bytes, partial(counters.add, "bytes_in", label=protocol)
        )
        try:
            with registry.track(peer, protocol, stream):
                async for message in reader.messages():
                    counters.add("frames_in", label=protocol)
                    await events.send(MessageReceived(peer, protocol, message))
        except RemoteProtocolError as exc:
            counters.add("protocol_errors", label=protocol)
            logger.warning("protocol error from %s on %s: %s; resetting the stream", peer, protocol, exc)
            await finish_stream(stream, reset=True)
            return
        except (IOException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The peer reset the stream, its connection died, or the daemon stopped listening.
            logger.debug("message stream %s from %s ended: %r", protocol, peer, exc)
            await finish_stream(stream, reset=True)
            return
        await finish_stream(stream, reset=False)

    return handle
