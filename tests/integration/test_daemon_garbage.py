"""A peer that sends garbage to a real daemon loses its stream; the daemon stays up and serves others."""

from __future__ import annotations

import json
from collections.abc import Callable

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from pyagent.localmesh import LocalPeer
from pyagent.node.host import Host, HostConfig
from pyagent.proto.events import Event
from pyagent.proto.ping import PROTOCOL_ID as PING
from pyagent.proto.ping import Ping
from pyagent.proto.wire import encode_frame
from pyagent.testing.cli import run_cli
from pyagent.testing.garbage import garbage_frames, read_until_closed

# Undecodable frames (the host's decoder rejects them) ...
FRAME_GARBAGE = list(garbage_frames(Ping.limits).values())
# ... and a well-formed frame that the ping core rejects.
CORE_GARBAGE = [encode_frame({"v": 1, "t": "ping", "nonce": "not a number"})]


async def send_and_wait_for_reset(attacker: Host, victim: str, payload: bytes) -> None:
    stream = await attacker.libp2p_host.new_stream(ID.from_base58(victim), [TProtocol(PING)])
    await stream.write(payload)
    await read_until_closed(stream.read)


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
