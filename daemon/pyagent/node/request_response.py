"""Request/response with deadlines: a fresh stream per request, one frame each way.

The client writes its request, half-closes, then reads one response frame; the server reads one frame,
calls the handler, writes one frame and closes. Neither side ever reads and writes at the same time,
which keeps clear of yamux holding a write back while a read is pending.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Literal

import trio
from libp2p.abc import INetStream
from libp2p.io.exceptions import IOException
from libp2p.network.stream.net_stream import NetStream

from pyagent.errors import RemoteProtocolError
from pyagent.node.counters import Counters
from pyagent.node.libp2p_factory import StreamHandler
from pyagent.node.streams import FrameReader, finish_stream
from pyagent.proto.wire import Limits, Message, encode_frame

logger = logging.getLogger(__name__)

RequestHandler = Callable[[str, Message], Awaitable[Message]]
RequestFailure = Literal["not-connected", "timeout", "refused", "stream", "protocol"]


class RequestError(Exception):
    """A request, ping or stream open failed. ``reason`` says why; the message names peer and protocol."""

    def __init__(self, reason: RequestFailure, peer: str, protocol: str, detail: str = "") -> None:
        self.reason: RequestFailure = reason
        message = f"{protocol} to {peer}: {reason}"
        super().__init__(f"{message} ({detail})" if detail else message)


async def request(
    open_stream: Callable[[str, str], Awaitable[NetStream]],
    peer: str,
    protocol: str,
    message: Message,
    limits: Limits,
    timeout_s: float,
    counters: Counters,
    read_chunk_size_bytes: int,
) -> Message:
    frame = encode_frame(message, limits)
    counters.add("requests_out", label=protocol)
    stream: NetStream | None = None
    failed = True
    try:
        with trio.fail_after(timeout_s):
            stream = await open_stream(peer, protocol)
            await stream.write(frame)
            counters.add("bytes_out", len(frame), label=protocol)
            await stream.close_write()
            reader = FrameReader(
                stream, limits, read_chunk_size_bytes, partial(counters.add, "bytes_in", label=protocol)
            )
            reply = await reader.one_message()
        failed = False
        return reply
    except trio.TooSlowError:
        raise RequestError("timeout", peer, protocol, f"no response within {timeout_s:.3f} s") from None
    except RemoteProtocolError as exc:
        counters.add("protocol_errors", label=protocol)
        raise RequestError("protocol", peer, protocol, str(exc)) from None
    except IOException as exc:
        raise RequestError("stream", peer, protocol, repr(exc)) from None
    finally:
        if failed:
            counters.add("request_errors")
        if stream is not None:
            await finish_stream(stream, reset=failed)


def request_handler(
    protocol: str,
    limits: Limits,
    handler: RequestHandler,
    timeout_s: float,
    counters: Counters,
    read_chunk_size_bytes: int,
) -> StreamHandler:
    async def handle(stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        counters.add("requests_in", label=protocol)
        reader = FrameReader(
            stream, limits, read_chunk_size_bytes, partial(counters.add, "bytes_in", label=protocol)
        )
        failed = True
        try:
            with trio.fail_after(timeout_s):
                request_message = await reader.one_message()
                reply = await handler(peer, request_message)
                frame = encode_frame(reply, limits)
                await stream.write(frame)
            counters.add("bytes_out", len(frame), label=protocol)
            failed = False
        except RemoteProtocolError as exc:
            counters.add("protocol_errors", label=protocol)
            logger.warning("protocol error from %s on %s: %s; resetting the stream", peer, protocol, exc)
        except trio.TooSlowError:
            counters.add("request_handler_timeouts")
            logger.info("request %s from %s not answered within %.3f s", protocol, peer, timeout_s)
        except IOException as exc:
            logger.debug("request stream %s from %s failed: %r", protocol, peer, exc)
        except Exception:
            # The handler is our own code: a bug there costs this request, not the host.
            counters.add("handler_errors")
            logger.exception("request handler for %s failed on a request from %s", protocol, peer)
        finally:
            await finish_stream(stream, reset=failed)

    return handle
