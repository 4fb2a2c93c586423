"""A peer that sends garbage to a real daemon loses its stream; the daemon stays up and serves others."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import msgpack
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException
from libp2p.peer.id import ID

from pyagent.localmesh import LocalPeer
from pyagent.node.host import Host, HostConfig
from pyagent.proto.events import Event
from pyagent.proto.ping import PROTOCOL_ID as PING
from pyagent.proto.wire import encode_frame, encode_varint
from pyagent.testing.cli import run_cli


def prefixed(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


def nested(depth: int) -> object:
    value: object = []
    for _ in range(depth):
        value = [value]
    return value


# Undecodable frames (the host's decoder rejects them) ...
FRAME_GARBAGE = [
    prefixed(b"\xc1" + random.Random(3).randbytes(100)),
    encode_varint(1 << 30),
    prefixed(b"\xc1"),
    prefixed(msgpack.packb({"v": 1, "t": "ping", "nonce": nested(64)})),
]
# ... and a well-formed frame that the ping core rejects.
CORE_GARBAGE = [encode_frame({"v": 1, "t": "ping", "nonce": "not a number"})]


async def send_and_wait_for_reset(attacker: Host, victim: str, payload: bytes) -> None:
    stream = await attacker.libp2p_host.new_stream(ID.from_base58(victim), [TProtocol(PING)])
    await stream.write(payload)
    with trio.fail_after(10):
        try:
            while await stream.read(4096):
                pass
        except IOException:
            pass  # reset: what we expect


async def test_garbage_costs_the_stream_not_the_daemon(mesh: Callable[..., list[LocalPeer]]) -> None:
    victim, friend = await trio.to_thread.run_sync(mesh, 2)
    await trio.to_thread.run_sync(lambda: friend.call("connect", addr=victim.addr))
    events_in, events_out = trio.open_memory_channel[Event](1024)
    attacker = Host(create_new_key_pair(), HostConfig(), events_in)
    async with attacker.running(), events_out:
        await attacker.connect(victim.addr)
        for payload in FRAME_GARBAGE + CORE_GARBAGE:
            await send_and_wait_for_reset(attacker, victim.peer_id, payload)

    shown = await trio.to_thread.run_sync(lambda: run_cli(victim.home, "stats", "--json"))
    stats = json.loads(shown.stdout)
    assert stats["protocol_errors"] == len(FRAME_GARBAGE)
    assert stats["core_remote_errors"] == len(CORE_GARBAGE)
    assert victim.process is not None and victim.process.poll() is None
    pinged = await trio.to_thread.run_sync(lambda: run_cli(friend.home, "ping", victim.peer_id, "-c", "2"))
    assert pinged.returncode == 0, pinged.stderr
