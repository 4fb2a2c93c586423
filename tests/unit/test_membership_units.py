"""The small parts of membership on their own: config, Lifeguard arithmetic, the broadcast queue."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from pyagent.proto.membership import LAN, WAN, Config
from pyagent.proto.membership.broadcasts import BroadcastQueue
from pyagent.proto.membership.lifeguard import Awareness, Suspicion


def test_presets_are_memberlists_defaults_but_lan_detects_faster() -> None:
    # LAN probes every 700 ms with memberlist's DefaultLocalConfig suspicion_mult (docs/membership.md).
    assert (LAN.probe_interval_ms, LAN.probe_timeout_ms, LAN.suspicion_mult) == (700, 350, 3)
    assert (LAN.suspicion_max_timeout_mult, WAN.suspicion_max_timeout_mult) == (12, 6)
    assert (LAN.gossip_interval_ms, LAN.gossip_nodes, LAN.push_pull_interval_ms) == (200, 3, 30_000)
    assert (WAN.probe_interval_ms, WAN.probe_timeout_ms, WAN.suspicion_mult) == (5_000, 3_000, 6)
    assert (WAN.gossip_interval_ms, WAN.gossip_nodes, WAN.push_pull_interval_ms) == (500, 4, 60_000)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"probe_interval_ms": 0}, "probe_interval_ms"),
        ({"gossip_nodes": -1}, "gossip_nodes"),
        ({"nacks": 1}, "nacks"),
        ({"probe_timeout_ms": 1_000}, "probe_timeout_ms"),
        ({"metadata_bytes_max": 1 << 20}, "metadata_bytes_max"),
        ({"piggyback_bytes_max": 100}, "piggyback_bytes_max"),
        ({"push_pull_chunk_entries_max": 1 << 20}, "push_pull_chunk_entries_max"),
        ({"join_backoff_initial_ms": 60_000}, "join_backoff_initial_ms"),
    ],
)
def test_config_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Config(**changes)  # type: ignore[arg-type]


def test_suspicion_bounds_follow_memberlist() -> None:
    memberlist_lan = Config(
        probe_interval_ms=1_000, probe_timeout_ms=500, suspicion_mult=4, suspicion_max_timeout_mult=6
    )
    assert memberlist_lan.suspicion_min_ms(1) == 4_000  # log10 floor of 1 for small clusters
    assert memberlist_lan.suspicion_min_ms(100) == pytest.approx(8_000)
    assert memberlist_lan.suspicion_max_ms(100) == pytest.approx(48_000)
    assert memberlist_lan.without_lifeguard().suspicion_max_ms(100) == pytest.approx(8_000)
    # The LAN preset's minimum at 1,000 members leaves room for the probe wait and the gossip within 12 s.
    assert LAN.suspicion_min_ms(1_000) == pytest.approx(6_300)


def test_retransmit_limit_and_push_pull_scale() -> None:
    assert [LAN.retransmit_limit(n) for n in (1, 9, 10, 99, 100, 10_000)] == [4, 4, 8, 8, 12, 20]
    assert LAN.push_pull_period_ms(32) == 30_000
    assert LAN.push_pull_period_ms(64) == 60_000
    assert LAN.push_pull_period_ms(10_000) == 30_000 * (math.ceil(math.log2(10_000) - 5) + 1)


def test_suspicion_timeout_shrinks_logarithmically_with_confirmations() -> None:
    suspicion = Suspicion("a", incarnation=1, k=3, min_us=4_000_000, max_us=24_000_000, start_us=1_000)
    deadlines = [suspicion.deadline_us()]
    for accuser in ("b", "c", "d"):
        assert suspicion.confirm(accuser)
        deadlines.append(suspicion.deadline_us())
    assert deadlines[0] == 1_000 + 24_000_000
    assert deadlines == sorted(deadlines, reverse=True)
    assert deadlines[-1] == 1_000 + 4_000_000
    expected_after_one = 24_000_000 - 20_000_000 * math.log(2) / math.log(4)
    assert deadlines[1] == 1_000 + math.floor(expected_after_one)
    # Beyond k, and repeated accusers, change nothing.
    assert not suspicion.confirm("e")
    assert not suspicion.confirm("b")
    assert suspicion.confirmations == 3


def test_suspicion_without_expected_confirmations_uses_the_minimum() -> None:
    suspicion = Suspicion("a", incarnation=0, k=0, min_us=4_000_000, max_us=24_000_000, start_us=0)
    assert suspicion.deadline_us() == 4_000_000
    assert not suspicion.confirm("b")


def test_awareness_is_clamped_and_scales_timeouts() -> None:
    awareness = Awareness(awareness_max=8)
    awareness.apply(-3)
    assert awareness.score == 0 and awareness.scale(500) == 500
    awareness.apply(3)
    assert awareness.scale(500) == 2_000
    awareness.apply(100)
    assert awareness.score == 7
    disabled = Awareness(awareness_max=1)
    disabled.apply(5)
    assert disabled.scale(500) == 500


RECEIVERS = itertools.count()


def take(queue: BroadcastQueue, budget_bytes: int, transmit_limit: int) -> list[object]:
    """Updates for a new receiver each time, in a large mesh: only the retransmit limit ends an update."""
    return queue.take(budget_bytes, transmit_limit, f"r{next(RECEIVERS)}", others=1_000)


def entry(peer: str, incarnation: int) -> list[object]:
    return [peer, 0, incarnation, 1, [], None]


def test_queue_respects_the_retransmit_limit() -> None:
    queue = BroadcastQueue(queue_max=16)
    queue.push("a", entry("a", 1), 20)
    sent = 0
    while queue:
        sent += len(take(queue, budget_bytes=1_000, transmit_limit=8))
    assert sent == 8


def test_queue_keeps_one_update_per_member_newest_wins() -> None:
    queue = BroadcastQueue(queue_max=16)
    queue.push("a", entry("a", 1), 20)
    take(queue, 1_000, 8)
    queue.push("a", entry("a", 2), 20)
    assert len(queue) == 1
    assert take(queue, 1_000, 8) == [entry("a", 2)]


def test_queue_prefers_least_transmitted_and_fits_the_budget() -> None:
    queue = BroadcastQueue(queue_max=16)
    queue.push("old", entry("old", 1), 40)
    take(queue, 1_000, 8)
    queue.push("new", entry("new", 1), 40)
    assert take(queue, budget_bytes=50, transmit_limit=8) == [entry("new", 1)]
    assert take(queue, budget_bytes=30, transmit_limit=8) == []
    # Both now sent once: the newer goes first within a tier.
    assert take(queue, budget_bytes=100, transmit_limit=8) == [entry("new", 1), entry("old", 1)]


def test_queue_is_bounded_and_drops_the_most_sent() -> None:
    queue = BroadcastQueue(queue_max=3)
    for name in ("a", "b", "c"):
        queue.push(name, entry(name, 1), 10)
    take(queue, budget_bytes=12, transmit_limit=8)  # sends "c", the newest
    queue.push("d", entry("d", 1), 10)
    assert len(queue) == 3 and queue.dropped == 1
    remaining = take(queue, budget_bytes=1_000, transmit_limit=8)
    assert sorted(item[0] for item in remaining) == ["a", "b", "d"]  # type: ignore[type-var]


def test_an_update_is_not_sent_to_whoever_told_us_nor_twice_to_one_member() -> None:
    queue = BroadcastQueue(queue_max=16)
    queue.push("a", entry("a", 1), 20, heard_from="b")
    assert queue.take(1_000, 8, "b", others=4) == []
    assert queue.take(1_000, 8, "c", others=4) == [entry("a", 1)]
    assert queue.take(1_000, 8, "c", others=4) == []
    assert queue.take(1_000, 8, "d", others=4) == [entry("a", 1)]
    # b told us, c and d heard it from us: e is the last member without it, and then it is done.
    assert queue.take(1_000, 8, "e", others=4) == [entry("a", 1)]
    assert len(queue) == 0


def test_a_newer_update_about_a_member_starts_with_its_own_holders() -> None:
    queue = BroadcastQueue(queue_max=16)
    queue.push("a", entry("a", 1), 20)
    queue.take(1_000, 8, "c", others=4)
    queue.push("a", entry("a", 2), 20, heard_from="d")
    assert queue.take(1_000, 8, "c", others=4) == [entry("a", 2)]
    assert queue.take(1_000, 8, "d", others=4) == []


def test_queue_take_is_fair_under_random_load() -> None:
    rng = random.Random(5)
    queue = BroadcastQueue(queue_max=64)
    counts: dict[str, int] = {}
    for step in range(2_000):
        if step % 10 == 0:
            name = f"m{rng.randrange(200)}"
            queue.push(name, entry(name, step), rng.randrange(10, 60))
        for item in take(queue, budget_bytes=120, transmit_limit=6):
            key = f"{item[0]}@{item[2]}"
            counts[key] = counts.get(key, 0) + 1
    assert max(counts.values()) <= 6
