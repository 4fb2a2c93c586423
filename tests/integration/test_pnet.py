"""Private networks on real py-libp2p hosts over 127.0.0.1: the same key connects, any other is refused fast.

The 2 s bound is the operator-facing requirement (py-libp2p's own pnet takes 15-31 s to give up); the
measured times are printed (run with ``-s`` to see them).
"""

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import multiaddr
import pytest
import trio
from libp2p import generate_new_ed25519_identity, new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.network.connection.exceptions import RawConnError
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_ID
from libp2p.security.noise.transport import Transport as Noise
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from pyagent.node.pnet import NonceExchangeError, PnetTCP, find_key_mismatch

LOOPBACK = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
ECHO = TProtocol("/pyagent/test-echo/1.0.0")
REJECTION_SECONDS_MAX = 2.0


@asynccontextmanager
async def running_host(psk: bytes | None) -> AsyncIterator[IHost]:
    """A host as the daemon builds one: Ed25519, Noise only, yamux, one connection per peer."""
    key_pair = generate_new_ed25519_identity()
    host = new_host(
        key_pair=key_pair,
        sec_opt={NOISE_ID: Noise(key_pair, noise_privkey=new_x25519_key_pair().private_key)},
        muxer_opt={TProtocol(YAMUX_ID): Yamux},
        transports=None if psk is None else [PnetTCP(psk)],
        connection_config=ConnectionConfig(max_connections_per_peer=1),
    )
    async with host.run(listen_addrs=[LOOPBACK]):
        yield host
        await host.close()


def listen_address(host: IHost) -> multiaddr.Multiaddr:
    """The host's first listen address with its peer id, as another peer would dial it."""
    return host.get_addrs()[0].encapsulate(multiaddr.Multiaddr(f"/p2p/{host.get_id()}"))


def peer_info(host: IHost) -> PeerInfo:
    return info_from_p2p_addr(listen_address(host))


async def echo(stream: INetStream) -> None:
    await stream.write(await stream.read(100))
    await stream.close()


async def timed_failed_connect(dialer: IHost, listener: IHost) -> tuple[float, BaseException]:
    started = time.perf_counter()
    with pytest.raises(Exception) as failure:  # py-libp2p wraps errors in several types
        await dialer.connect(peer_info(listener))
    return time.perf_counter() - started, failure.value


async def test_same_key_connects_and_echoes() -> None:
    psk = os.urandom(32)
    async with running_host(psk) as listener, running_host(psk) as dialer:
        listener.set_stream_handler(ECHO, echo)
        await dialer.connect(peer_info(listener))
        stream = await dialer.new_stream(listener.get_id(), [ECHO])
        await stream.write(b"same key")
        assert await stream.read(100) == b"same key"


@pytest.mark.parametrize("direction", ["we dial them", "they dial us"])
async def test_wrong_key_is_refused_fast_as_a_key_mismatch(direction: str) -> None:
    async with running_host(os.urandom(32)) as ours, running_host(os.urandom(32)) as theirs:
        dialer, listener = (ours, theirs) if direction == "we dial them" else (theirs, ours)
        elapsed, error = await timed_failed_connect(dialer, listener)
        print(f"\nwrong key, {direction}: refused after {elapsed:.3f} s")
        assert find_key_mismatch(error) is not None, repr(error)
        assert elapsed < REJECTION_SECONDS_MAX
        assert not listener.get_network().get_connections(dialer.get_id())


async def test_we_refuse_fast_a_peer_without_key(caplog: pytest.LogCaptureFixture) -> None:
    async with running_host(os.urandom(32)) as ours, running_host(None) as theirs:
        with caplog.at_level(logging.WARNING, logger="pyagent.node.pnet"):
            elapsed, _ = await timed_failed_connect(theirs, ours)
        print(f"\nno key, they dial us: refused after {elapsed:.3f} s")
        assert elapsed < REJECTION_SECONDS_MAX
        assert "it has no swarm.key" in caplog.text
        assert not ours.get_network().get_connections(theirs.get_id())


async def test_we_refuse_fast_to_join_a_peer_without_key() -> None:
    async with running_host(os.urandom(32)) as ours, running_host(None) as theirs:
        elapsed, error = await timed_failed_connect(ours, theirs)
        print(f"\nno key, we dial them: refused after {elapsed:.3f} s")
        mismatch = find_key_mismatch(error)
        assert mismatch is not None, repr(error)
        assert "it has no swarm.key" in str(mismatch)
        assert elapsed < REJECTION_SECONDS_MAX


async def test_a_silent_peer_cannot_hold_the_handshake() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        transport = PnetTCP(os.urandom(32), nonce_timeout_ms=300)
        connection = await transport.dial(multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}"))
        with pytest.raises(RawConnError) as failure:
            await connection.read(1)
        assert isinstance(failure.value.__cause__, NonceExchangeError)
        assert "sent no nonce within 300 ms" in str(failure.value.__cause__)
        nursery.cancel_scope.cancel()
