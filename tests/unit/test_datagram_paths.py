"""Two ``DatagramPaths`` on real UDP sockets on 127.0.0.1, their setup request passed straight across:
a path is proven before it carries a frame, frames arrive as the events a stream would give, forged,
replayed and garbage datagrams are dropped and counted, a peer's bad frame costs it its path, and a path
whose echoes go unanswered is never used."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio

from pyagent.node.counters import Counters
from pyagent.node.datagrams import COUNTER_NAMES, DatagramPaths
from pyagent.proto import datagram
from pyagent.proto.events import Event, MessageReceived
from pyagent.proto.wire import Limits, Message, encode_frame

PROTOCOL = "/test/gossip/1.0.0"
LIMITS = Limits(frame_size_bytes_max=4096)
HOST_COUNTERS = ("protocol_errors", "frames_in", "bytes_in")


@dataclass
class Side:
    name: str
    paths: DatagramPaths
    counters: Counters
    received: list[Event] = field(default_factory=list)

    async def send(self, event: Event) -> None:
        self.received.append(event)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def pair(nursery: trio.Nursery) -> AsyncIterator[tuple[Side, Side]]:
    sides: dict[str, Side] = {}

    def make(name: str, other: str) -> Side:
        async def request(peer: str, protocol: str, message: Message, timeout_ms: int) -> Message:
            return await sides[peer].paths.handle_open(name, message)

        counters = Counters((*COUNTER_NAMES, *HOST_COUNTERS))
        side = Side(name, None, counters)  # type: ignore[arg-type]
        side.paths = DatagramPaths(side, counters, request, lambda _peer: "127.0.0.1")
        side.paths.carry(PROTOCOL, LIMITS)
        return side

    a, b = sides["a"], sides["b"] = make("a", "b"), make("b", "a")
    for side in (a, b):
        side.paths.start(nursery, [("127.0.0.1", free_udp_port())])
    yield a, b
    for side in (a, b):
        side.paths.close()


def frame(n: int) -> bytes:
    return encode_frame({"v": 1, "t": "gossip", "n": n}, LIMITS)


async def prove(a: Side, b: Side) -> None:
    assert not a.paths.send("b", PROTOCOL, frame(0)), "no path yet: the caller must use the stream"
    with trio.fail_after(5):
        while a.counters.snapshot()["datagram_paths_proven"] == 0:
            await trio.sleep(0.01)


async def test_a_proven_path_carries_frames_as_received_messages(pair: tuple[Side, Side]) -> None:
    a, b = pair
    await prove(a, b)
    for n in range(1, 4):
        assert a.paths.send("b", PROTOCOL, frame(n))
    with trio.fail_after(5):
        while len(b.received) < 3:
            await trio.sleep(0.01)
    assert b.received == [
        MessageReceived("a", PROTOCOL, {"v": 1, "t": "gossip", "n": n}) for n in range(1, 4)
    ]
    assert b.counters.labelled()["frames_in"] == {PROTOCOL: 3}
    # Only the sender's path is set up: b's frames to a still take the stream until b sets up its own.
    assert not b.paths.send("a", PROTOCOL, frame(9))


async def test_frames_too_big_or_of_other_protocols_take_the_stream(pair: tuple[Side, Side]) -> None:
    a, _b = pair
    await prove(a, _b)
    assert not a.paths.send("b", "/test/other/1.0.0", frame(1))
    big = encode_frame({"v": 1, "t": "x", "pad": bytes(datagram.PAYLOAD_BYTES_MAX)}, LIMITS)
    assert not a.paths.send("b", PROTOCOL, big)


async def test_forged_replayed_and_garbage_datagrams_are_dropped_and_counted(
    pair: tuple[Side, Side],
) -> None:
    a, b = pair
    await prove(a, b)
    captured: list[bytes] = []
    real_sendto = a.paths._sendto

    def capture(packet: bytes, addr: tuple[str, int]) -> bool:
        captured.append(packet)
        return real_sendto(packet, addr)

    a.paths._sendto = capture  # type: ignore[method-assign]
    assert a.paths.send("b", PROTOCOL, frame(1))
    b_port = b.paths._ports[socket.AF_INET]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.sendto(captured[0], ("127.0.0.1", b_port))  # a replay
        attacker.sendto(b"\x00" * 40, ("127.0.0.1", b_port))  # an unknown channel
        attacker.sendto(b"junk", ("127.0.0.1", b_port))  # truncated
        tampered = bytearray(captured[0])
        tampered[-1] ^= 1
        attacker.sendto(bytes(tampered), ("127.0.0.1", b_port))  # a forgery
    with trio.fail_after(5):
        while b.counters.snapshot()["datagrams_dropped"] < 4:
            await trio.sleep(0.01)
    assert b.counters.labelled()["datagrams_dropped"] == {
        "replay": 1,
        "channel": 1,
        "truncated": 1,
        "auth": 1,
    }
    assert len(b.received) == 1


async def test_a_bad_frame_costs_the_sender_its_path(pair: tuple[Side, Side]) -> None:
    a, b = pair
    await prove(a, b)
    assert a.paths.send("b", PROTOCOL, b"\x03\xc1\xc1\xc1")  # a frame of msgpack's never-used byte
    with trio.fail_after(5):
        while b.counters.snapshot()["protocol_errors"] == 0:
            await trio.sleep(0.01)
    assert a.paths.send("b", PROTOCOL, frame(2))  # a still believes in its path ...
    await trio.sleep(0.2)
    assert b.received == []  # ... but b no longer holds its key
    assert b.counters.labelled()["datagrams_dropped"] == {"frame": 1, "channel": 1}


async def test_a_path_whose_echo_never_returns_is_not_used(pair: tuple[Side, Side]) -> None:
    a, b = pair
    b.paths.close()  # b's socket is gone: a's echoes go nowhere, as through a firewall that drops udp
    assert not a.paths.send("b", PROTOCOL, frame(0))
    with trio.fail_after(10):
        while a.counters.snapshot()["datagram_paths_failed"] == 0:
            await trio.sleep(0.05)
    assert a.counters.snapshot()["datagram_paths_proven"] == 0
    # Not retried at once: until RETRY_AFTER_S the frames take the stream without another setup.
    assert not a.paths.send("b", PROTOCOL, frame(1))
    assert a.counters.snapshot()["datagram_paths_failed"] == 1


async def test_doubt_sends_frames_to_the_stream_until_an_echo_proves_the_path_again(
    pair: tuple[Side, Side],
) -> None:
    a, b = pair
    await prove(a, b)
    a.paths.doubt("b")
    assert not a.paths.send("b", PROTOCOL, frame(1))
    with trio.fail_after(5):
        while not a.paths.send("b", PROTOCOL, frame(2)):
            await trio.sleep(0.01)


async def test_a_path_that_spent_its_counters_is_set_up_again_with_a_fresh_key(
    pair: tuple[Side, Side],
) -> None:
    a, _b = pair
    await prove(a, _b)
    path = a.paths._outbound[("b", PROTOCOL)]
    path.counter = datagram.COUNTER_MAX
    assert not a.paths.send("b", PROTOCOL, frame(1))  # no nonce left under this key: the stream
    assert ("b", PROTOCOL) not in a.paths._outbound
    with trio.fail_after(5):
        while not a.paths.send("b", PROTOCOL, frame(2)):
            await trio.sleep(0.01)
    assert a.paths._outbound[("b", PROTOCOL)].key != path.key


async def test_a_peer_gone_during_setup_leaves_nothing_behind(pair: tuple[Side, Side]) -> None:
    """Tables stay bounded by the connected peers: a setup that ends after its peer disconnected records
    neither a path nor a failure."""
    a, _b = pair
    connected = True
    a.paths._remote_ip = lambda _peer: "127.0.0.1" if connected else None  # type: ignore[method-assign]
    assert not a.paths.send("b", PROTOCOL, frame(0))  # starts the setup
    connected = False
    a.paths.drop_peer("b")
    await trio.sleep(2)
    assert a.paths._outbound == {} and a.paths._failed_at == {} and a.paths._outbound_by_id == {}
