"""The libp2p host wrapper on real py-libp2p hosts over 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
from libp2p import generate_new_ed25519_identity
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux import yamux as yamux_module

from pyagent.node.host import DialError, Host, HostConfig, RequestError
from pyagent.node.host_config import FloodLimits
from pyagent.node.libp2p_factory import CREDIT_BATCH_BYTES
from pyagent.node.multistream_limit import MULTISTREAM_MESSAGE_BYTES_MAX
from pyagent.proto.events import Event, MessageReceived, PeerConnected, PeerDisconnected
from pyagent.proto.wire import Limits, Message, encode_varint

GOSSIP = "/pyagent/test-gossip/1.0.0"
ECHO = "/pyagent/test-echo/1.0.0"
SLOW = "/pyagent/test-slow/1.0.0"
LIMITS = Limits()
# Generous upper bounds: these tests check that a deadline exists, not how fast the machine is.
EVENT_WAIT_S = 10.0


@dataclass
class Node:
    host: Host
    events: trio.MemoryReceiveChannel[Event]

    @property
    def addr(self) -> str:
        return self.host.listen_addrs()[0]

    async def next_event(self, kind: type[Event]) -> Event:
        """The next event of ``kind``, skipping others (e.g. PeerConnected before a message)."""
        with trio.fail_after(EVENT_WAIT_S):
            async for event in self.events:
                if isinstance(event, kind):
                    return event
        raise AssertionError("events channel closed")


@asynccontextmanager
async def running_node(config: HostConfig | None = None, events_max: int = 256) -> AsyncIterator[Node]:
    send, receive = trio.open_memory_channel[Event](events_max)
    host = Host(generate_new_ed25519_identity(), config or HostConfig(), send)
    host.register_protocol(GOSSIP, LIMITS)

    async def echo(peer: str, message: Message) -> Message:
        return {"v": 1, "t": "echo", "from": peer, "body": message.get("body")}

    async def slow(peer: str, message: Message) -> Message:
        await trio.sleep(30)
        return message

    host.register_request_handler(ECHO, LIMITS, echo)
    host.register_request_handler(SLOW, LIMITS, slow)
    async with host.running():
        yield Node(host, receive)


@asynccontextmanager
async def running_nodes(count: int, config: HostConfig | None = None) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running_node(config)) for _ in range(count)]


async def test_connect_identify_and_framed_messages() -> None:
    async with running_nodes(2) as (a, b):
        assert await b.host.connect(a.addr) == a.host.peer_id
        connected = await a.next_event(PeerConnected)
        assert isinstance(connected, PeerConnected)
        assert connected.peer == b.host.peer_id
        assert connected.agent_version.startswith("pyagent/")  # ours, not py-libp2p's default
        assert GOSSIP in connected.protocols and ECHO in connected.protocols
        assert b.addr.split("/p2p/")[0] in connected.addrs

        for index in range(3):
            b.host.send(a.host.peer_id, GOSSIP, {"v": 1, "t": "hello", "n": index})
        received = [await a.next_event(MessageReceived) for _ in range(3)]
        assert received == [
            MessageReceived(b.host.peer_id, GOSSIP, {"v": 1, "t": "hello", "n": n}) for n in range(3)
        ]
        assert a.host.stats()["frames_in"] == 3
        assert b.host.stats()["frames_out"] == 3
        assert a.host.connected_peers() == [b.host.peer_id]


async def test_three_hosts_exchange_messages() -> None:
    async with running_nodes(3) as nodes:
        hub, *spokes = nodes
        for spoke in spokes:
            await spoke.host.connect(hub.addr)
        for spoke in spokes:
            hub.host.send(spoke.host.peer_id, GOSSIP, {"v": 1, "t": "to-spoke", "to": spoke.host.peer_id})
            spoke.host.send(hub.host.peer_id, GOSSIP, {"v": 1, "t": "to-hub"})
        for spoke in spokes:
            got = await spoke.next_event(MessageReceived)
            assert isinstance(got, MessageReceived) and got.message["to"] == spoke.host.peer_id
        senders = set()
        for _ in spokes:
            got = await hub.next_event(MessageReceived)
            assert isinstance(got, MessageReceived)
            senders.add(got.peer)
        assert senders == {spoke.host.peer_id for spoke in spokes}


async def test_request_response_and_its_deadline() -> None:
    async with running_nodes(2) as (a, b):
        await b.host.connect(a.addr)
        reply = await b.host.request(a.host.peer_id, ECHO, {"v": 1, "t": "ask", "body": b"x" * 1000}, 5_000)
        assert reply == {"v": 1, "t": "echo", "from": b.host.peer_id, "body": b"x" * 1000}

        start = trio.current_time()
        with pytest.raises(RequestError) as caught:
            await b.host.request(a.host.peer_id, SLOW, {"v": 1, "t": "ask"}, 300)
        assert caught.value.reason == "timeout"
        assert trio.current_time() - start < 5.0
        # The timed-out request cost nothing else: the host still answers.
        assert (await b.host.request(a.host.peer_id, ECHO, {"v": 1, "t": "ask"}, 5_000))["t"] == "echo"


async def test_request_to_unknown_protocol_or_peer_fails_cleanly() -> None:
    async with running_nodes(2) as (a, b):
        with pytest.raises(RequestError) as caught:
            await b.host.request(a.host.peer_id, ECHO, {"v": 1, "t": "ask"}, 1_000)
        assert caught.value.reason == "not-connected"
        await b.host.connect(a.addr)
        with pytest.raises(RequestError) as caught:
            await b.host.request(
                a.host.peer_id, "/pyagent/nobody-speaks-this/1.0.0", {"v": 1, "t": "x"}, 5_000
            )
        assert caught.value.reason == "refused"


async def test_libp2p_ping() -> None:
    async with running_nodes(2) as (a, b):
        await b.host.connect(a.addr)
        rtt_s = await b.host.libp2p_ping(a.host.peer_id)
        assert 0 < rtt_s < 5.0


async def test_peer_disconnected_when_the_other_host_stops() -> None:
    async with running_node() as a:
        async with running_node() as b:
            await b.host.connect(a.addr)
            assert (await a.next_event(PeerConnected)).peer == b.host.peer_id  # type: ignore[union-attr]
        assert await a.next_event(PeerDisconnected) == PeerDisconnected(b.host.peer_id)
        assert a.host.connected_peers() == []


async def test_disconnect_then_reconnect_reports_each_presence_once() -> None:
    async with running_nodes(2) as (a, b):
        await b.host.connect(a.addr)
        assert isinstance(await b.next_event(PeerConnected), PeerConnected)
        await b.host.disconnect(a.host.peer_id)
        assert await b.next_event(PeerDisconnected) == PeerDisconnected(a.host.peer_id)
        await b.host.connect(a.addr)
        assert isinstance(await b.next_event(PeerConnected), PeerConnected)


async def test_send_drops_are_counted() -> None:
    async with running_nodes(2, HostConfig(send_queue_frames_max=2)) as (a, b):
        b.host.send(a.host.peer_id, GOSSIP, {"v": 1, "t": "nobody-home"})
        assert b.host.stats()["send_dropped_not_connected"] == 1
        await b.host.connect(a.addr)
        # Synchronous sends: the writer task cannot run in between, so only 2 fit in the queue.
        for index in range(10):
            b.host.send(a.host.peer_id, GOSSIP, {"v": 1, "t": "burst", "n": index})
        assert b.host.stats()["send_dropped_overflow"] == 8
        got = [await a.next_event(MessageReceived) for _ in range(2)]
        assert [m.message["n"] for m in got if isinstance(m, MessageReceived)] == [0, 1]


@asynccontextmanager
async def silent_tcp_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers; yields its port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SocketStream] = []

    async def accept_forever() -> None:
        while True:
            held.append(await listeners[0].accept())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_forever)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()
    for stream in held:
        await stream.aclose()
    await listeners[0].aclose()


def random_peer_id() -> str:
    return str(ID.from_pubkey(generate_new_ed25519_identity().public_key))


async def test_dial_to_silent_server_times_out() -> None:
    async with running_node(HostConfig(dial_timeout_ms=500)) as a, silent_tcp_server() as port:
        address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{random_peer_id()}"
        start = trio.current_time()
        with pytest.raises(DialError) as caught:
            await a.host.connect(address)
        assert caught.value.reason == "timeout"
        assert not caught.value.nothing_listens  # silence is not a refusal
        assert trio.current_time() - start < 5.0
        assert address in str(caught.value) and "\n" not in str(caught.value)


async def test_dial_to_refused_port_is_unreachable() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    async with running_node() as a:
        with pytest.raises(DialError) as caught:
            await a.host.connect(f"/ip4/127.0.0.1/tcp/{port}/p2p/{random_peer_id()}")
        assert caught.value.reason == "unreachable"
        # The reset itself, seen through py-libp2p's wrapping: membership acts on it (skips helpers).
        assert caught.value.nothing_listens


async def test_dial_with_wrong_peer_id() -> None:
    async with running_nodes(2) as (a, b):
        transport_addr = a.addr.split("/p2p/")[0]
        with pytest.raises(DialError) as caught:
            await b.host.connect(f"{transport_addr}/p2p/{random_peer_id()}")
        assert caught.value.reason == "wrong-peer-id"
        # The right id still works right after: no negative cache, no lingering state.
        assert await b.host.connect(a.addr) == a.host.peer_id


async def test_silent_inbound_connections_are_closed_by_the_upgrade_deadline() -> None:
    # Flood limits set high enough for all 20 to be admitted: this is about the deadline.
    limits = FloodLimits(pending_handshakes_per_ip_max=20, connections_per_ip_max=20)
    async with running_node(HostConfig(upgrade_timeout_ms=500, flood_limits=limits)) as a:
        port = int(a.addr.split("/tcp/")[1].split("/")[0])
        streams = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(20)]
        closed = 0

        async def wait_closed(stream: trio.SocketStream) -> None:
            nonlocal closed
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
            closed += 1

        # py-libp2p's own default would keep them open 10 s; ours is 0.5 s.
        with trio.move_on_after(5.0):
            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(wait_closed, stream)
        for stream in streams:
            await stream.aclose()
        assert closed == 20


async def test_oversize_multistream_message_is_refused_before_the_deadline() -> None:
    async with running_node(HostConfig(upgrade_timeout_ms=60_000)) as a:
        port = int(a.addr.split("/tcp/")[1].split("/")[0])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        # The start of a 2 GiB "protocol name". Uncapped, py-libp2p waits for the rest (it reads up to
        # 101 chunks, 6-8 MiB) until the upgrade deadline; capped, it hangs up at once.
        await stream.send_all(encode_varint(1 << 31) + b"/" * (MULTISTREAM_MESSAGE_BYTES_MAX * 4))
        with trio.fail_after(10.0):
            try:
                while await stream.receive_some(4096):
                    pass
            except trio.BrokenResourceError:
                pass
        await stream.aclose()


def _live_task_names() -> list[str]:
    names: list[str] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                names.append(child.name)
                pending.append(child)
    return names


async def test_clean_shutdown_frees_the_port_and_leaves_no_tasks() -> None:
    baseline = sorted(_live_task_names())
    async with running_nodes(2) as (a, b):
        await b.host.connect(a.addr)
        b.host.send(a.host.peer_id, GOSSIP, {"v": 1, "t": "x"})
        await a.next_event(MessageReceived)
        await b.host.request(a.host.peer_id, ECHO, {"v": 1, "t": "ask"}, 5_000)
        port = int(a.addr.split("/tcp/")[1].split("/")[0])
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    assert sorted(_live_task_names()) == baseline


async def test_handler_exceptions_cost_only_their_stream() -> None:
    async with running_nodes(2) as (a, b):

        async def broken(stream: INetStream) -> None:
            await stream.read(10)
            raise ValueError("a bug in some handler")

        a.host.libp2p_host.set_stream_handler(TProtocol("/pyagent/test-broken/1.0.0"), broken)

        async def failing(peer: str, message: Message) -> Message:
            raise RuntimeError("a bug in a request handler")

        a.host.register_request_handler("/pyagent/test-failing/1.0.0", LIMITS, failing)
        await b.host.connect(a.addr)

        raw = await b.host.libp2p_host.new_stream(
            ID.from_base58(a.host.peer_id), [TProtocol("/pyagent/test-broken/1.0.0")]
        )
        await raw.write(b"boom")
        with pytest.raises(RequestError):
            await b.host.request(a.host.peer_id, "/pyagent/test-failing/1.0.0", {"v": 1, "t": "x"}, 5_000)
        with trio.fail_after(EVENT_WAIT_S):
            while a.host.stats()["handler_errors"] < 2:
                await trio.sleep(0.05)
        assert (await b.host.request(a.host.peer_id, ECHO, {"v": 1, "t": "ask"}, 5_000))["t"] == "echo"
        assert a.host.connected_peers() == [b.host.peer_id]


async def test_libp2p_logs_reach_the_applications_handlers() -> None:
    async with running_node():
        assert logging.getLogger("libp2p").propagate


async def test_small_frames_cost_no_window_update_each() -> None:
    """Yamux credit comes back in batches of CREDIT_BATCH_BYTES read, not after each read: py-libp2p's
    default answered most small frames with a WINDOW_UPDATE segment of its own (libp2p_factory)."""
    async with running_nodes(2) as (a, b):
        await a.host.connect(b.addr)

        async def send_window_after(frames: int, padding: str = "") -> int:
            for index in range(frames):
                a.host.send(b.host.peer_id, GOSSIP, {"v": 1, "t": "small", "i": index, "pad": padding})
            for index in range(frames):
                got = await b.next_event(MessageReceived)
                assert isinstance(got, MessageReceived) and got.message["i"] == index
            # B's reply follows on the same connection any credit B gave back for those frames.
            await a.host.request(b.host.peer_id, ECHO, {"v": 1, "t": "echo", "body": "sync"}, 5_000)
            swarm = a.host.libp2p_host.get_network()
            [connection] = swarm.connections[ID.from_base58(b.host.peer_id)]
            [gossip] = [s for s in connection.get_streams() if s.get_protocol() == GOSSIP]
            window: int = gossip.muxed_stream.send_window
            return window

        def gossip_bytes_sent() -> int:
            return a.host._counters.labelled()["bytes_out"][GOSSIP]

        # 100 small frames, under one batch: not one byte of credit comes back. (The stream also carried
        # its protocol negotiation, which our frame counter does not count.)
        window = await send_window_after(100)
        assert gossip_bytes_sent() < CREDIT_BATCH_BYTES
        assert window <= yamux_module.DEFAULT_WINDOW_SIZE - gossip_bytes_sent()
        # Past a batch, the credit for what was read comes back.
        window = await send_window_after(20, padding="x" * 1024)
        assert gossip_bytes_sent() > CREDIT_BATCH_BYTES
        assert window > yamux_module.DEFAULT_WINDOW_SIZE - gossip_bytes_sent()
