"""NodeCore and its first components, driven with an injected clock and seeded generator (no trio)."""

import pytest

from pyagent.composition import build_core
from pyagent.errors import LocalProtocolError, RemoteProtocolError
from pyagent.proto.events import LocalRequest, MessageReceived, PeerConnected, PeerDisconnected, TimerFired
from pyagent.proto.node import NodeCore
from pyagent.proto.peers import ListPeers
from pyagent.proto.ping import PROTOCOL_ID, PingPeer
from pyagent.proto.ready import CancelTimer, Ready, Reply, SetTimer


def started(peer: str, seed: int) -> NodeCore:
    core = build_core(peer, seed)
    core.start(0)
    return core


def make_pair() -> tuple[NodeCore, NodeCore]:
    a, b = started("A", 1), started("B", 2)
    a.step(PeerConnected("B", ("/ip4/127.0.0.1/tcp/1",), (PROTOCOL_ID,), "pyagent/test"), 0)
    b.step(PeerConnected("A"), 0)
    return a, b


def deliver(ready: Ready, sender: str, receiver: NodeCore, now_us: int) -> Ready:
    assert [s.peer for s in ready.send] == [receiver.local_peer]
    out = Ready()
    for send in ready.send:
        step = receiver.step(MessageReceived(sender, send.protocol, send.message), now_us)
        out.send += step.send
        out.apply += step.apply
    return out


def test_ping_measures_rtt_and_records_it_in_the_peer_table() -> None:
    a, b = make_pair()
    ready = a.step(LocalRequest(7, PingPeer("B")), 1_000)
    assert isinstance(ready.timers[0], SetTimer)
    pong = deliver(ready, "A", b, 1_200)
    done = deliver(pong, "B", a, 1_450)
    assert done.apply == [Reply(7, value=450)]
    peers = a.step(LocalRequest(8, ListPeers()), 1_500).apply[0].value
    assert [(p.peer, p.rtt_us, p.agent_version) for p in peers] == [("B", 450, "pyagent/test")]


def test_ping_times_out_and_a_late_pong_is_ignored() -> None:
    a, b = make_pair()
    ready = a.step(LocalRequest(1, PingPeer("B")), 0)
    timer = ready.timers[0]
    assert isinstance(timer, SetTimer)
    expired = a.step(TimerFired(timer.key), timer.at_us)
    error = expired.apply[0].error
    assert error is not None and error.code == "timeout" and "no pong" in error.message
    late = deliver(deliver(ready, "A", b, 1), "B", a, timer.at_us + 1)
    assert late.apply == []


def test_pong_completes_the_ping_and_cancels_its_timer() -> None:
    a, b = make_pair()
    ready = a.step(LocalRequest(1, PingPeer("B")), 0)
    key = ready.timers[0].key
    pong = b.step(MessageReceived("A", PROTOCOL_ID, ready.send[0].message), 5)
    done = a.step(MessageReceived("B", PROTOCOL_ID, pong.send[0].message), 10)
    assert CancelTimer(key) in done.timers


def test_pong_from_the_wrong_peer_does_not_complete_a_ping() -> None:
    a, b = make_pair()
    ready = a.step(LocalRequest(1, PingPeer("B")), 0)
    pong = b.step(MessageReceived("A", PROTOCOL_ID, ready.send[0].message), 5)
    assert a.step(MessageReceived("C", PROTOCOL_ID, pong.send[0].message), 10).apply == []


@pytest.mark.parametrize(
    "message",
    [
        {"v": 1, "t": "pong", "nonce": "x"},
        {"v": 1, "t": "pong", "nonce": -1},
        {"v": 1, "t": "pong"},
        {"v": 1, "t": "what", "nonce": 1},
        {"v": 1, "t": "ping", "nonce": 2**64},
    ],
)
def test_bad_ping_messages_raise_and_change_nothing(message: dict) -> None:
    a, _ = make_pair()
    ready = a.step(LocalRequest(1, PingPeer("B")), 0)
    nonce = ready.send[0].message["nonce"]
    with pytest.raises(RemoteProtocolError):
        a.step(MessageReceived("B", PROTOCOL_ID, message), 1)
    good = a.step(MessageReceived("B", PROTOCOL_ID, {"v": 1, "t": "pong", "nonce": nonce}), 2)
    assert good.apply == [Reply(1, value=2)]


def test_pings_in_flight_are_bounded() -> None:
    a, _ = make_pair()
    ping = a.component("ping")
    limit = ping.config.pings_in_flight_max
    for request_id in range(limit):
        assert a.step(LocalRequest(request_id, PingPeer("B")), 0).send
    refused = a.step(LocalRequest(limit, PingPeer("B")), 0)
    assert refused.send == [] and refused.apply[0].error is not None
    assert refused.apply[0].error.code == "busy"


def test_disconnect_removes_the_peer() -> None:
    a, _ = make_pair()
    a.step(PeerDisconnected("B"), 1)
    assert a.step(LocalRequest(1, ListPeers()), 2).apply[0].value == []


def test_peer_table_is_bounded_and_evicts_the_oldest() -> None:
    core = started("A", 0)
    table = core.component("peers")
    table.config.peers_max = 3
    for index in range(5):
        core.step(PeerConnected(f"P{index}"), index)
    assert [p.peer for p in table.snapshot()] == ["P2", "P3", "P4"]


def test_time_must_not_go_backwards() -> None:
    core = started("A", 0)
    core.step(PeerConnected("B"), 10)
    with pytest.raises(LocalProtocolError):
        core.step(PeerConnected("C"), 9)


def test_same_seed_same_wire_bytes() -> None:
    runs = []
    for _ in range(2):
        a, _ = make_pair()
        runs.append([a.step(LocalRequest(i, PingPeer("B")), i).send[0].message["nonce"] for i in range(5)])
    assert runs[0] == runs[1]
