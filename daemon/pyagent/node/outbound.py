"""Datagram-like sends: one bounded queue and one long-lived outbound stream per (peer, protocol).

`send` never blocks the caller. A background writer opens the stream (with its own deadline), then
writes whatever frames are queued, batching those already waiting into one write. A full queue drops
the new frame; a failed open or write drops the whole queue and ends the writer, and the next send
starts over with a fresh stream. The writer never reads its stream (see ``streams``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio
from libp2p.abc import INetStream

from pyagent.node.counters import Counters
from pyagent.node.streams import finish_stream

logger = logging.getLogger(__name__)

OpenStream = Callable[[str, str], Awaitable[INetStream]]

# Frames coalesced into one stream write: amortizes yamux framing and noise encryption per write.
WRITE_BATCH_FRAMES_MAX = 64


@dataclass
class _Queue:
    send: trio.MemorySendChannel[bytes]
    receive: trio.MemoryReceiveChannel[bytes]


class OutboundQueues:
    def __init__(self, open_stream: OpenStream, frames_max: int, counters: Counters) -> None:
        self._open_stream = open_stream
        self._frames_max = frames_max
        self._counters = counters
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def enqueue(self, peer: str, protocol: str, frame: bytes) -> None:
        try:
            self._queue(peer, protocol).send.send_nowait(frame)
        except trio.WouldBlock:
            self._counters.add("send_dropped_overflow")

    def _queue(self, peer: str, protocol: str) -> _Queue:
        if self._nursery is None:
            raise RuntimeError("OutboundQueues used outside Host.running()")
        key = (peer, protocol)
        queue = self._queues.get(key)
        if queue is None:
            send, receive = trio.open_memory_channel[bytes](self._frames_max)
            queue = self._queues[key] = _Queue(send, receive)
            self._nursery.start_soon(self._write, peer, protocol, queue)
        return queue

    async def enqueue_waiting(self, peer: str, protocol: str, frame: bytes) -> None:
        """Like `enqueue`, but waits for queue space instead of dropping. The writer drains the queue
        only as fast as yamux's window lets it write, so this is flow control end to end. Raises
        ``trio.ClosedResourceError`` or ``trio.BrokenResourceError`` if the stream failed meanwhile."""
        await self._queue(peer, protocol).send.send(frame)

    def drop_peer(self, peer: str) -> None:
        """The peer is gone: end its writers, so that no task or queue outlives the connection."""
        for key in [key for key in self._queues if key[0] == peer]:
            self._discard(key, self._queues[key])

    def _discard(self, key: tuple[str, str], queue: _Queue) -> None:
        if self._queues.get(key) is queue:
            del self._queues[key]
        # Closing the send side lets the writer finish; what it has not sent is counted as dropped.
        queue.send.close()

    async def _write(self, peer: str, protocol: str, queue: _Queue) -> None:
        key = (peer, protocol)
        stream: INetStream | None = None
        failed = True
        try:
            stream = await self._open_stream(peer, protocol)
            async for frame in queue.receive:
                batch = [frame]
                while len(batch) < WRITE_BATCH_FRAMES_MAX:
                    try:
                        batch.append(queue.receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                data = b"".join(batch)
                await stream.write(data)
                self._counters.add("frames_out", len(batch), label=protocol)
                self._counters.add("bytes_out", len(data), label=protocol)
            failed = False
        except Exception as exc:
            logger.debug("send stream %s to %s failed: %r", protocol, peer, exc)
            self._counters.add("send_stream_errors")
        finally:
            self._discard(key, queue)
            self._counters.add("send_dropped_error", _drain(queue.receive))
            queue.receive.close()
            if stream is not None:
                await finish_stream(stream, reset=failed)


def _drain(receive: trio.MemoryReceiveChannel[bytes]) -> int:
    dropped = 0
    while True:
        try:
            receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return dropped
        dropped += 1
