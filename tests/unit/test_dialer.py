"""The on-demand dialer: frames wait for a dial, failures back off, idle connections are pruned."""

from __future__ import annotations

import trio
import trio.testing

from pyagent.node.dial_errors import DialError
from pyagent.node.dialer import Dialer, DialerConfig
from pyagent.proto.events import SendFailed


class FakeHost:
    def __init__(self, reachable: set[str], closed: frozenset[str] = frozenset()) -> None:
        self.reachable = reachable
        # Addresses (by their /p2p/ peer) whose host answers with a reset: nothing listens there.
        self.closed = closed
        self.connected: set[str] = set()
        self.sent: list[tuple[str, str, dict]] = []
        self.dials: list[str] = []
        self.dial_delay_s = 0.1

    def send(self, peer: str, protocol_id: str, message: dict) -> None:
        if peer in self.connected:
            self.sent.append((peer, protocol_id, message))

    async def connect(self, maddr: str) -> str:
        peer = maddr.rsplit("/p2p/", 1)[1]
        self.dials.append(peer)
        await trio.sleep(self.dial_delay_s)
        if peer not in self.reachable:
            raise DialError("unreachable", maddr, nothing_listens=maddr in self.closed)
        self.connected.add(peer)
        return peer

    async def disconnect(self, peer: str) -> None:
        self.connected.discard(peer)

    def connected_peers(self) -> list[str]:
        return sorted(self.connected)

    def reset_inbound(self, peer: str, protocol_id: str) -> None:
        raise AssertionError("not used here")


def message(n: int) -> dict:
    return {"v": 1, "t": "x", "n": n}


async def test_frames_wait_for_the_dial_then_flow(autojump_clock: trio.testing.MockClock) -> None:
    host = FakeHost(reachable={"B"})
    failed: list[SendFailed] = []
    dialer = Dialer(host, DialerConfig(frames_pending_per_peer_max=2), failed.append)
    async with trio.open_nursery() as nursery:
        dialer.attach(nursery)
        for n in range(3):
            dialer.send("B", "/p", message(n), ("/ip4/192.0.2.2/tcp/1",))
        await trio.sleep(1)
    assert host.dials == ["B"]  # one dial, however many frames
    assert [m["n"] for _, _, m in host.sent] == [0, 1]  # the buffer holds two; the third was dropped
    assert dialer.frames_dropped == 1
    assert failed == [SendFailed("B", "/p", "queue full: frames are waiting for the dial to this peer")]
    dialer.send("B", "/p", message(9), ("/ip4/192.0.2.2/tcp/1",))
    assert host.sent[-1][2]["n"] == 9  # connected now: straight through


async def test_a_failed_peer_is_not_redialled_until_its_backoff_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = FakeHost(reachable=set())
    config = DialerConfig(backoff_initial_ms=1_000, backoff_max_ms=4_000)
    failed: list[SendFailed] = []
    dialer = Dialer(host, config, failed.append)
    addrs = ("/ip4/192.0.2.3/tcp/1",)
    async with trio.open_nursery() as nursery:
        dialer.attach(nursery)
        dialer.send("C", "/p", message(0), addrs)
        await trio.sleep(0.5)
        dialer.send("C", "/p", message(1), addrs)  # inside the 1 s backoff: dropped, no dial
        assert host.dials == ["C"]
        await trio.sleep(1)
        dialer.send("C", "/p", message(2), addrs)
        await trio.sleep(0.5)
        assert host.dials == ["C", "C"]
        # The backoff doubled to 2 s: 1 s later is still too soon.
        await trio.sleep(1)
        dialer.send("C", "/p", message(3), addrs)
        assert host.dials == ["C", "C"]
    assert dialer.dial_failures == 2 and host.sent == []
    # Every frame given up on is reported, with the reason the dialer knows.
    reasons = [failure.reason for failure in failed]
    assert len(reasons) == 4 and reasons[0].startswith("unreachable: ") and "unreachable" in reasons[0]
    assert "next try in" in reasons[1] and "next try in" in reasons[3]


async def test_idle_connections_beyond_the_target_are_closed_oldest_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peers = [f"P{n}" for n in range(4)]
    host = FakeHost(reachable=set(peers))
    dialer = Dialer(host, DialerConfig(connections_target=2, idle_ms=10_000))
    async with trio.open_nursery() as nursery:
        dialer.attach(nursery)
        for peer in peers[:3]:
            dialer.send(peer, "/p", message(0), (f"/ip4/192.0.2.9/tcp/1/p2p/{peer}",))
            await trio.sleep(1)
        assert host.connected == {"P0", "P1", "P2"}  # P0 and P1 are not idle long enough yet
        await trio.sleep(20)
        dialer.touch("P1")  # P1 is in use again
        dialer.send("P3", "/p", message(0), ("/ip4/192.0.2.9/tcp/1",))
        await trio.sleep(1)
    assert host.connected == {"P1", "P3"}


async def test_sends_without_addresses_go_to_the_host_as_they_are(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = FakeHost(reachable={"D"})
    dialer = Dialer(host)
    async with trio.open_nursery() as nursery:
        dialer.attach(nursery)
        dialer.send("D", "/p", message(0))
    assert host.dials == [] and host.sent == []  # the host counts its own drop of an unconnected send


async def test_a_dropped_peer_is_disconnected_and_redialled_fresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = FakeHost(reachable={"E"})
    dialer = Dialer(host)
    async with trio.open_nursery() as nursery:
        dialer.attach(nursery)
        dialer.send("E", "/p", message(0), ("/ip4/192.0.2.5/tcp/1",))
        await trio.sleep(1)
        assert host.connected == {"E"}
        dialer.drop("E")  # the mesh declared it dead
        await trio.testing.wait_all_tasks_blocked()
        assert host.connected == set()
        dialer.send("E", "/p", message(1), ("/ip4/192.0.2.5/tcp/1",))
        await trio.sleep(1)
    assert host.dials == ["E", "E"] and host.sent[-1][2]["n"] == 1


async def test_a_leaving_node_sends_only_over_the_connections_it_has(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Members that heard of the leave hang up on the leaver; it must not dial them again to repeat it."""
    host = FakeHost(reachable={"B", "C"})
    host.connected.add("B")
    failed: list[SendFailed] = []
    dialer = Dialer(host, DialerConfig(), failed.append)
    async with trio.open_nursery() as nursery:
        dialer.attach(nursery)
        dialer.stop_dialing()
        dialer.send("B", "/p", message(0), ("/ip4/192.0.2.2/tcp/1",))
        dialer.send("C", "/p", message(1), ("/ip4/192.0.2.3/tcp/1",))
        await trio.sleep(1)
    assert host.dials == []
    assert [(peer, m["n"]) for peer, _, m in host.sent] == [("B", 0)]
    assert failed == [SendFailed("C", "/p", "this node is leaving the mesh: no new connections")]


async def test_a_peer_whose_every_address_refused_is_reported_as_nothing_listening(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Membership skips indirect probes for such a peer, so one address that merely failed must not
    count: only a refusal at every address, and the drops during its backoff, say nothing listens."""
    closed_a, closed_b, silent = (
        "/ip4/192.0.2.4/tcp/1/p2p/D",
        "/ip4/192.0.2.5/tcp/1/p2p/D",
        "/ip4/192.0.2.6/tcp/1",
    )
    host = FakeHost(reachable=set(), closed=frozenset({closed_a, closed_b}))
    failed: list[SendFailed] = []
    dialer = Dialer(host, DialerConfig(), failed.append)
    async with trio.open_nursery() as nursery:
        dialer.attach(nursery)
        dialer.send("D", "/p", message(0), (closed_a.removesuffix("/p2p/D"), closed_b.removesuffix("/p2p/D")))
        await trio.sleep(0.5)
        dialer.send("D", "/p", message(1), (closed_a,))  # in the backoff: dropped, still nothing listening
        await trio.sleep(2)
        dialer.send("D", "/p", message(2), (closed_a, silent))
        await trio.sleep(0.5)
    assert [failure.nothing_listens for failure in failed] == [True, True, False]
