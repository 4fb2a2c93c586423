"""Frames (``pyagent.proto.wire``) over libp2p streams.

Each stream carries frames one way only, because yamux in py-libp2p 0.8.1 holds a write back while a
read is pending on the same stream: a `Host.send` stream is written by the dialer and read by the
listener; a request stream carries one request frame, is half-closed, then carries one response frame.
A reset sometimes reaches the reader as a clean end of stream, so nothing here treats EOF as proof that
the peer finished on purpose: a stream that ends inside a frame is a protocol error either way.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import trio
from libp2p.abc import INetStream
from libp2p.network.stream.exceptions import StreamEOF

from pyagent.errors import RemoteProtocolError
from pyagent.proto.wire import FrameDecoder, Limits, Message

logger = logging.getLogger(__name__)

# Closing or resetting a stream on the way out must not wait on a peer that stopped answering.
STREAM_CLOSE_TIMEOUT_S = 1.0


class ReadableStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...


class FrameReader:
    """Reads whole messages from a stream; reports each chunk's size to ``on_bytes`` (for stats)."""

    def __init__(
        self,
        stream: ReadableStream,
        limits: Limits,
        read_chunk_size_bytes: int,
        on_bytes: Callable[[int], None] = lambda _size: None,
    ) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(limits)
        self._read_chunk_size_bytes = read_chunk_size_bytes
        self._on_bytes = on_bytes

    async def messages(self) -> AsyncIterator[Message]:
        """Yields each message until the stream ends. Raises ``RemoteProtocolError`` on bad bytes or on
        an end of stream inside a frame; stream errors (reset) propagate as py-libp2p raises them."""
        while True:
            chunk = await self._read_chunk()
            if not chunk:
                if self._decoder.buffered_bytes:
                    raise RemoteProtocolError(
                        f"stream ended inside a frame ({self._decoder.buffered_bytes} bytes buffered)"
                    )
                return
            for message in self._decoder.feed(chunk):
                yield message

    async def one_message(self) -> Message:
        """Reads exactly one message, for request/response streams that carry one frame each way."""
        while True:
            chunk = await self._read_chunk()
            if not chunk:
                raise RemoteProtocolError("stream ended before a whole frame arrived")
            messages = self._decoder.feed(chunk)
            if len(messages) > 1 or (messages and self._decoder.buffered_bytes):
                raise RemoteProtocolError("more than one frame on a one-frame stream")
            if messages:
                return messages[0]

    async def _read_chunk(self) -> bytes:
        try:
            chunk = await self._stream.read(self._read_chunk_size_bytes)
        except StreamEOF:
            return b""
        self._on_bytes(len(chunk))
        return chunk


async def finish_stream(stream: INetStream, *, reset: bool) -> None:
    """Closes (or resets) a stream without raising: shielded, so that a cancelled task still tells the
    peer; bounded, so that a dead connection cannot stall it."""
    with trio.CancelScope(shield=True, deadline=trio.current_time() + STREAM_CLOSE_TIMEOUT_S):
        try:
            await (stream.reset() if reset else stream.close())
        except Exception as exc:
            # The connection is already gone; the peer learns of it from that.
            logger.debug("finishing stream failed: %r", exc)
