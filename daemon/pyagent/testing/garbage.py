"""Bad bytes a misbehaving peer might send, and a way to watch the stream they cost it."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import msgpack
import trio
from libp2p.io.exceptions import IOException

from pyagent.proto.wire import Limits, encode_varint


def prefixed(body: bytes) -> bytes:
    """``body`` behind a correct length prefix, so that only the body is wrong."""
    return encode_varint(len(body)) + body


def nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


def garbage_frames(limits: Limits) -> dict[str, bytes]:
    """One frame per way of being undecodable under ``limits``, by name."""
    return {
        "random-bytes": prefixed(b"\xc1" + random.Random(7).randbytes(255)),
        "oversize-length-prefix": encode_varint(limits.frame_size_bytes_max + 1),
        "bad-msgpack": prefixed(b"\xc1"),
        "deeply-nested": prefixed(msgpack.packb({"v": 1, "t": "x", "d": nested(limits.depth_max * 4)})),
        "lacks-v-and-t": prefixed(msgpack.packb({"hello": "world"})),
    }


async def read_until_closed(read: Callable[[int], Awaitable[bytes]], timeout_s: float = 10.0) -> None:
    """Reads until the other side resets or closes the stream (py-libp2p sometimes reports a reset as a
    clean end of stream, so both count); fails the test if that takes longer than ``timeout_s``."""
    with trio.fail_after(timeout_s):
        try:
            while await read(4096):
                pass
        except IOException:
            pass
