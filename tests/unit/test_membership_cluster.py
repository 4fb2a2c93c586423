"""Whole-protocol behaviour: several Membership instances driven by the in-test message pump."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from membership_harness import US_PER_S, Cluster, join_command

from pyagent.proto.membership import LAN, Leave, Metadata, State, UpdateLocalMetadata

SETTLE_US = 10 * US_PER_S


def started(count: int, seed: int = 7, config: Any = LAN) -> tuple[Cluster, list[str]]:
    cluster = Cluster(seed, config)
    peers = cluster.start(count)
    cluster.run_for(SETTLE_US)
    return cluster, peers


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twenty_members_converge(seed: int) -> None:
    cluster, peers = started(20, seed)
    assert cluster.converged()
    for peer in peers:
        assert len(cluster.nodes[peer].membership.members()) == 20


@pytest.mark.parametrize("seed", [11, 12])
def test_killed_member_is_dead_everywhere_within_the_config_bound(seed: int) -> None:
    cluster, peers = started(20, seed)
    victim = peers[5]
    killed_us = cluster.now_us
    cluster.kill(victim)
    bound_us = int(LAN.dead_everywhere_bound_ms(20) * 1_000)
    cluster.run_for(bound_us)
    dead_at = cluster.first_seen(victim, State.DEAD, killed_us)
    survivors = [peer for peer in peers if peer != victim]
    assert sorted(dead_at) == survivors
    assert max(dead_at.values()) - killed_us <= bound_us
    # Nobody healthy was suspected on the way.
    wrongly = [
        seen
        for seen in cluster.seen
        if seen.change.peer != victim and seen.change.new_state is not State.ALIVE
    ]
    assert wrongly == []


def test_suspicion_timeout_shrinks_as_confirmations_arrive() -> None:
    """With everyone probing the dead member, the suspicion ends near its minimum, not its maximum."""
    cluster, peers = started(20, seed=5)
    victim = peers[9]
    killed_us = cluster.now_us
    cluster.kill(victim)
    cluster.run_for(60 * US_PER_S)
    suspected_at = cluster.first_seen(victim, State.SUSPECT, killed_us)
    dead_at = cluster.first_seen(victim, State.DEAD, killed_us)
    first_accuser = min(suspected_at, key=lambda peer: suspected_at[peer])
    suspicion_us = dead_at[first_accuser] - suspected_at[first_accuser]
    assert int(LAN.suspicion_min_ms(20) * 1_000) <= suspicion_us < LAN.suspicion_max_ms(20) * 1_000 / 2
    assert sum(node.membership.counters["suspicion_confirmations"] for node in cluster.nodes.values()) > 0


def test_suspected_member_refutes_with_a_higher_incarnation() -> None:
    cluster, peers = started(10, seed=3)
    victim = peers[2]
    cut_us = cluster.now_us
    cluster.isolated.add(victim)
    # Long enough to be suspected, shorter than the smallest suspicion timeout (2.1 s for 10 members), which
    # only starts when a probe fails, at least one probe interval after the cut.
    cluster.run_for(int(LAN.suspicion_min_ms(10) * 1_000))
    assert cluster.first_seen(victim, State.SUSPECT, cut_us)
    cluster.isolated.clear()
    cluster.run_for(10 * US_PER_S)
    assert cluster.first_seen(victim, State.DEAD, cut_us) == {}
    assert cluster.converged()
    incarnation = cluster.nodes[victim].membership.member(victim)
    assert incarnation is not None and incarnation.incarnation >= 1
    for peer in peers:
        record = cluster.nodes[peer].membership.member(victim)
        assert record is not None and record.incarnation == incarnation.incarnation
    assert cluster.nodes[victim].membership.counters["refutations"] >= 1


def slow_member_run(config: Any) -> tuple[Cluster, str]:
    cluster, peers = started(10, seed=21, config=config)
    slow = peers[1]
    # Every message to or from it takes 600 ms more: its own pings cannot be answered within a probe
    # interval, so without Lifeguard it blames whoever it probes.
    cluster.slow_us[slow] = 600_000
    cluster.run_for(120 * US_PER_S)
    return cluster, slow


def test_slow_member_does_not_accuse_healthy_peers_with_local_health() -> None:
    cluster, slow = slow_member_run(LAN)
    plain, _ = slow_member_run(LAN.without_lifeguard())
    raised = cluster.nodes[slow].membership.counters["suspicions_raised"]
    raised_plain = plain.nodes[slow].membership.counters["suspicions_raised"]
    assert raised <= 3
    assert raised_plain > 10 * max(1, raised)
    assert cluster.nodes[slow].membership.health_score > 0
    healthy_deaths = [s for s in cluster.seen if s.change.peer != slow and s.change.new_state is State.DEAD]
    assert healthy_deaths == []


def test_graceful_leave_is_seen_as_left_not_dead() -> None:
    cluster, peers = started(12, seed=4)
    leaver = peers[7]
    left_us = cluster.now_us
    request_id = cluster.request(leaver, Leave())
    reply = cluster.reply(leaver, request_id)
    assert reply is not None and reply.error is None and reply.value == LAN.gossip_nodes
    cluster.run_for(2 * US_PER_S)
    cluster.kill(leaver)
    cluster.run_for(40 * US_PER_S)
    others = [peer for peer in peers if peer != leaver]
    assert sorted(set(cluster.first_seen(leaver, State.LEFT, left_us)) - {leaver}) == others
    assert cluster.first_seen(leaver, State.DEAD, left_us) == {}
    assert cluster.first_seen(leaver, State.SUSPECT, left_us) == {}


def test_restarted_member_rejoins_with_a_higher_incarnation() -> None:
    cluster, peers = started(10, seed=8)
    victim = peers[3]
    cluster.request(victim, UpdateLocalMetadata(metadata=Metadata(load=0.5)))
    cluster.run_for(3 * US_PER_S)
    old = cluster.nodes[peers[0]].membership.member(victim)
    assert old is not None
    killed_us = cluster.now_us
    cluster.kill(victim)
    cluster.run_for(20 * US_PER_S)
    assert len(cluster.first_seen(victim, State.DEAD, killed_us)) == 9
    restarted_us = cluster.now_us
    cluster.add(victim, metadata=Metadata(load=0.25))
    cluster.request(victim, join_command([peers[0]]))
    cluster.run_for(5 * US_PER_S)
    assert len(set(cluster.first_seen(victim, State.ALIVE, restarted_us)) - {victim}) == 9
    assert cluster.converged()
    for peer in peers:
        record = cluster.nodes[peer].membership.member(victim)
        assert record is not None
        assert record.incarnation > old.incarnation
        assert record.meta_version > old.meta_version
        assert record.metadata.load == 0.25


def test_metadata_update_reaches_every_member() -> None:
    cluster, peers = started(15, seed=9)
    owner = peers[4]
    metadata = Metadata(
        protocols=("/pyagent/membership/1.0.0",),
        cpu_cores=16,
        memory_bytes=64 << 30,
        hardware_tags=("gpu:h100",),
        load=0.7,
        plugins=("lora",),
        software_version="0.1.0",
        extra={"region": "eu", "slots": 4, "spot": True},
    )
    request_id = cluster.request(
        owner, UpdateLocalMetadata(metadata=metadata, addrs=("/ip4/10.0.0.4/tcp/4001",))
    )
    reply = cluster.reply(owner, request_id)
    assert reply is not None and reply.error is None
    cluster.run_for(5 * US_PER_S)
    version = cluster.nodes[owner].membership.member(owner)
    assert version is not None
    for peer in peers:
        record = cluster.nodes[peer].membership.member(owner)
        assert record is not None
        assert record.metadata == metadata
        assert record.meta_version == version.meta_version
        assert record.addrs == ("/ip4/10.0.0.4/tcp/4001",)


def test_an_update_is_sent_retransmit_limit_times() -> None:
    cluster, peers = started(10, seed=10)
    owner = peers[0]
    request_id = cluster.request(owner, UpdateLocalMetadata(metadata=Metadata(load=0.9)))
    reply = cluster.reply(owner, request_id)
    assert reply is not None
    incarnation = reply.value.incarnation
    sent: list[str] = []

    def count(sender: str, receiver: str, message: dict[str, Any]) -> None:
        for entry in message.get("u", []):
            if sender == owner and entry[0] == owner and entry[2] == incarnation:
                sent.append(receiver)

    cluster.tap = count
    cluster.run_for(20 * US_PER_S)
    assert len(sent) == LAN.retransmit_limit(10)


def test_join_retries_with_backoff_then_reports_failure() -> None:
    cluster = Cluster(1, LAN)
    cluster.add("lonely")
    attempts: list[int] = []
    cluster.tap = lambda sender, receiver, message: (
        attempts.append(cluster.now_us) if message["t"] == "pp" else None
    )
    request_id = cluster.request("lonely", join_command(["nobody"]))
    cluster.run_for(300 * US_PER_S)
    reply = cluster.reply("lonely", request_id)
    assert reply is not None and reply.value is None
    error = reply.error
    assert error is not None and error.code == "unreachable"
    assert "no seed answered after 6 attempts" in error.message and "nobody" in error.message
    assert len(attempts) == LAN.join_attempts_max
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert all(gap >= LAN.join_backoff_initial_ms * 1_000 // 2 for gap in gaps)
    assert gaps[-1] > gaps[0]


def test_join_succeeds_once_a_seed_appears() -> None:
    cluster = Cluster(2, LAN)
    cluster.add("early")
    request_id = cluster.request("early", join_command(["late"]))
    cluster.run_for(3 * US_PER_S)
    assert cluster.reply("early", request_id) is None
    cluster.add("late")
    cluster.request("late", join_command([]))
    cluster.run_for(60 * US_PER_S)
    reply = cluster.reply("early", request_id)
    assert reply is not None and reply.error is None
    assert reply.value.seed == "late" and reply.value.attempts >= 2
    assert cluster.converged()


@pytest.mark.parametrize("seed", [1, 2])
def test_a_long_partition_heals_within_seconds(seed: int) -> None:
    cluster, peers = started(5, seed)
    cut_us = cluster.now_us
    cluster.partition(peers[:3], peers[3:])
    # Longer than gossip_to_dead: only reconnect attempts to dead members can bring the sides together.
    cluster.run_for(60 * US_PER_S)
    for big, small in ((peers[0], peers[4]), (peers[4], peers[0])):
        assert cluster.state_of(big, small) is State.DEAD
    cluster.side = {}
    cluster.run_for(2 * LAN.reconnect_interval_ms * 1_000 + US_PER_S)
    assert cluster.converged()
    assert cluster.first_seen(peers[0], State.DEAD, cut_us)
    assert sum(node.membership.counters["reconnects"] for node in cluster.nodes.values()) >= 1
