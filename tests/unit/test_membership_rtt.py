"""Round-trip times measured by membership's own probes: no ping is ever sent for them."""

from __future__ import annotations

import itertools
import random
from typing import Any

from membership_harness import US_PER_S, Cluster

from pyagent.proto.events import LocalRequest, MessageReceived, Started, TimerFired
from pyagent.proto.membership import LAN, PROTOCOL_ID, Join, Membership, State, codec
from pyagent.proto.membership.records import Entry
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import Ready, Send


def test_every_member_gets_a_round_trip_time_from_the_probes() -> None:
    cluster = Cluster(3, LAN, latency_us=(1_000, 3_000))
    peers = cluster.start(4)
    cluster.run_for(15 * US_PER_S)
    for observer in peers:
        for record in cluster.nodes[observer].membership.members():
            if record.peer == observer:
                assert record.rtt_us is None  # we never probe ourselves
                continue
            # Two one-way hops of 1-3 ms each, smoothed: within the range a single sample can take.
            assert record.rtt_us is not None, (observer, record.peer)
            assert 2_000 <= record.rtt_us <= 6_000, (observer, record.peer, record.rtt_us)
        assert cluster.nodes[observer].membership.counters["rtt_samples"] > 0


def test_a_slow_member_shows_a_larger_round_trip_time() -> None:
    cluster = Cluster(4, LAN, latency_us=(500, 500))
    peers = cluster.start(3)
    cluster.slow_us[peers[2]] = 40_000  # each hop to or from it takes 40 ms more
    cluster.run_for(20 * US_PER_S)
    record = cluster.nodes[peers[0]].membership.member(peers[2])
    fast = cluster.nodes[peers[0]].membership.member(peers[1])
    assert record is not None and fast is not None
    assert record.rtt_us is not None and 60_000 <= record.rtt_us <= 81_000
    assert fast.rtt_us is not None and fast.rtt_us < 2_000


class _Driver:
    """One Membership by hand, so that we choose exactly which acks arrive and when."""

    def __init__(self) -> None:
        self.membership = Membership("me", random.Random(1), LAN, None, ("/sim/me",))
        self.core = NodeCore("me", [self.membership])
        self.now_us = 0
        self.step(Started())
        self.step(LocalRequest(1, Join(())))

    def step(self, event: Any, advance_us: int = 1_000) -> Ready:
        self.now_us += advance_us
        return self.core.step(event, self.now_us)

    def receive(self, sender: str, message: dict[str, Any], advance_us: int) -> Ready:
        return self.step(MessageReceived(sender, PROTOCOL_ID, message), advance_us)

    def probe(self) -> Send:
        """Fires the probe timer; returns the ping it sent."""
        ready = self.step(TimerFired("membership/probe"), LAN.probe_interval_ms * 1_000)
        (ping,) = [send for send in ready.send if send.message["t"] == "p"]
        return ping


def test_the_value_is_smoothed_and_follows_a_lasting_change() -> None:
    driver = _Driver()
    gossip = codec.gossip([codec.encode_entry(Entry("a", State.ALIVE, 0, 1, ("/sim/a",)))])
    driver.receive("a", gossip, 1_000)
    samples = []
    for rtt_us in [10_000] * 3 + [2_000] * 30:
        ping = driver.probe()
        assert ping.peer == "a"
        driver.receive("a", codec.ack(ping.message["s"], []), rtt_us)
        record = driver.membership.member("a")
        assert record is not None and record.rtt_us is not None
        samples.append(record.rtt_us)
    assert samples[:3] == [10_000, 10_000, 10_000]  # the first sample is taken as it is
    assert samples[3] == 9_000  # one faster ack moves it by an eighth of the difference
    assert all(later <= earlier for earlier, later in itertools.pairwise(samples[3:]))
    assert samples[-1] < 2_200  # and a lasting change is followed (8 ms x (7/8)^30 is left)


def test_an_ack_relayed_by_a_helper_does_not_time_the_target() -> None:
    driver = _Driver()
    entries = [codec.encode_entry(Entry(p, State.ALIVE, 0, 1, (f"/sim/{p}",))) for p in ("a", "b", "c")]
    driver.receive("a", codec.gossip(entries), 1_000)
    ping = driver.probe()
    target = ping.peer
    # No direct ack: after the probe timeout the helpers are asked, and one relays the target's ack.
    ready = driver.step(TimerFired("membership/probe-timeout"), LAN.probe_timeout_ms * 1_000)
    helpers = [send.peer for send in ready.send if send.message["t"] == "i"]
    assert helpers and target not in helpers
    driver.receive(helpers[0], codec.ack(ping.message["s"], []), 5_000)
    record = driver.membership.member(target)
    assert record is not None and record.state is State.ALIVE
    assert record.rtt_us is None
    assert driver.membership.counters["rtt_samples"] == 0
