"""The network model on three peers: each fault does what it says to real frames and real decoders."""

from __future__ import annotations

from typing import Any

from numbered import Numbered, SendNumbered

from pyagent.proto.ping import PingPeer
from pyagent.proto.ready import Reply
from pyagent_simnet import Sim


def make(seed: int = 1, **network: Any) -> Sim:
    latency = network.pop("latency", {"kind": "constant", "ms": 5})
    sim = Sim(
        {
            "peers": 3,
            "components": ["ping"],
            "extra_components": ["numbered:factory"],
            "network": {"latency": latency, **network},
        },
        seed=seed,
    )
    sim.run(0.001)  # every node starts at t=0
    return sim


def numbered(sim: Sim, index: int) -> Numbered:
    core = sim.nodes[index].core
    assert core is not None
    component = core.component("numbered")
    assert isinstance(component, Numbered)
    return component


def send(sim: Sim, src: int, dst: int, count: int) -> None:
    for number in range(count):
        sim.request(sim.nodes[src], SendNumbered(sim.nodes[dst].peer, number))


def ping(sim: Sim, src: int, dst: int) -> list[Reply]:
    replies: list[Reply] = []
    sim.request(sim.nodes[src], PingPeer(sim.nodes[dst].peer), lambda node, reply: replies.append(reply))
    return replies


def test_a_partition_stops_delivery_across_it_only() -> None:
    sim = make()
    sim.inject(dict(action="partition", sides=[[0], [1, 2]]))
    across, inside = ping(sim, 0, 1), ping(sim, 1, 2)
    sim.run(10)
    assert across[0].error is not None
    assert inside[0].error is None
    assert sim.drops["partition"] >= 1
    sim.network.heal(sim.now_us)
    healed = ping(sim, 0, 1)
    sim.run(20)
    assert healed[0].error is None


def test_a_one_way_partition_is_one_way() -> None:
    sim = make()
    sim.inject(dict(action="partition", sides=[[0], [1, 2]], one_way=True))
    send(sim, 0, 1, 5)
    send(sim, 1, 0, 5)
    sim.run(1)
    assert numbered(sim, 1).received == []
    assert numbered(sim, 0).received == [0, 1, 2, 3, 4]


def test_jitter_reorders_and_constant_latency_does_not() -> None:
    steady = make()
    send(steady, 0, 1, 200)
    steady.run(1)
    assert numbered(steady, 1).received == list(range(200))

    jittery = make(latency={"kind": "uniform", "min_ms": 1, "max_ms": 50})
    send(jittery, 0, 1, 200)
    jittery.run(1)
    received = numbered(jittery, 1).received
    assert sorted(received) == list(range(200))
    assert received != list(range(200))


def test_corruption_reaches_the_real_decoders_and_the_sim_survives() -> None:
    sim = make(corrupt=1.0)
    send(sim, 0, 1, 300)
    sim.run(1)
    rejected = (
        sim.counters["decode_errors"] + sim.counters["truncated_frames"] + sim.counters["step_rejected"]
    )
    assert sim.counters["decode_errors"] > 0
    assert rejected > 0
    assert sim.counters["delivered"] == 300
    sim.network.set_param("corrupt", 0.0)
    ok = ping(sim, 1, 0)  # the peer that took the bad bytes still works
    sim.run(10)
    assert ok[0].error is None


def test_loss_drops_about_the_configured_fraction() -> None:
    sim = make(loss=0.3)
    send(sim, 0, 1, 1000)
    sim.run(1)
    received = len(numbered(sim, 1).received)
    assert 600 < received < 800
    assert sim.drops["loss"] == 1000 - received


def test_duplication_delivers_extra_copies() -> None:
    sim = make(duplicate=0.5)
    send(sim, 0, 1, 1000)
    sim.run(1)
    received = numbered(sim, 1).received
    assert set(received) == set(range(1000))
    assert 1350 < len(received) < 1650


def test_a_clogged_link_holds_frames_until_it_is_unclogged() -> None:
    sim = make()
    sim.inject(dict(action="clog", links=[[0, 1]]))
    send(sim, 0, 1, 10)
    send(sim, 0, 2, 3)
    sim.run(5)
    assert numbered(sim, 1).received == []
    assert numbered(sim, 2).received == [0, 1, 2]
    sim.inject(dict(action="unclog"))
    sim.run(6)
    assert numbered(sim, 1).received == list(range(10))


def test_a_clogged_peer_neither_sends_nor_receives() -> None:
    sim = make()
    sim.inject(dict(action="clog", peers=[2]))
    send(sim, 0, 2, 3)
    send(sim, 2, 1, 3)
    sim.run(5)
    assert numbered(sim, 2).received == []
    assert numbered(sim, 1).received == []
    sim.release_held()
    sim.run(6)
    assert numbered(sim, 2).received == [0, 1, 2]
    assert numbered(sim, 1).received == [0, 1, 2]


def test_a_paused_peer_queues_events_and_a_crashed_one_loses_them() -> None:
    sim = make()
    sim.pause(sim.nodes[1])
    send(sim, 0, 1, 3)
    sim.run(1)
    assert numbered(sim, 1).received == []
    sim.resume(sim.nodes[1])
    sim.run(2)
    assert numbered(sim, 1).received == [0, 1, 2]
    sim.crash(sim.nodes[1])
    send(sim, 0, 1, 3)
    sim.run(3)
    assert sim.drops[_down()] == 3
    sim.restart(sim.nodes[1])
    assert numbered(sim, 1).received == []  # a new NodeCore, built fresh


def test_limited_bandwidth_queues_on_egress() -> None:
    fast, slow = make(), make(bandwidth_bps=8_000)  # 1 kB/s: each ~15-byte frame takes ~15 ms to leave
    for sim in (fast, slow):
        send(sim, 0, 1, 20)
    fast.run(0.01)
    slow.run(0.01)
    assert len(numbered(fast, 1).received) == 20
    assert len(numbered(slow, 1).received) == 0
    slow.run(1)
    assert len(numbered(slow, 1).received) == 20


def _down() -> str:
    from pyagent_simnet.network import DROP_DOWN

    return DROP_DOWN
