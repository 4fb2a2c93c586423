"""Push-pull (full state exchange) merges, joins that merge two meshes, and the isolation notice."""

from __future__ import annotations

from typing import Any

from membership_harness import US_PER_S, Cluster, join_command
from test_membership_component import Driver, alive

from pyagent.proto.events import TimerFired
from pyagent.proto.membership import LAN, Config, Isolated, State, codec
from pyagent.proto.membership.records import Entry
from pyagent.proto.ready import Ready


def push_pull(
    driver: Driver, sender: str, *entries: Entry, join: bool = False, response: bool = False
) -> Ready:
    message = codec.push_pull([codec.encode_entry(entry) for entry in entries], response, False, join)
    return driver.receive(sender, message)


def record(driver: Driver, peer: str) -> tuple[State, int] | None:
    found = driver.membership.member(peer)
    return None if found is None else (found.state, found.incarnation)


def gossiped_peers(ready: Ready) -> set[str]:
    return {entry[0] for send in ready.send if send.message["t"] == "g" for entry in send.message["u"]}


def test_the_higher_incarnation_wins_and_an_older_one_changes_nothing() -> None:
    driver = Driver()
    push_pull(driver, "a", alive("a"), alive("b", incarnation=3))
    push_pull(driver, "a", Entry("b", State.ALIVE, 5, 1, ("/sim/b-moved",)))
    assert record(driver, "b") == (State.ALIVE, 5)
    assert driver.membership.member("b").addrs == ("/sim/b-moved",)  # type: ignore[union-attr]
    push_pull(driver, "a", Entry("b", State.ALIVE, 4, 1, ("/sim/b-old",)))
    assert driver.membership.member("b").addrs == ("/sim/b-moved",)  # type: ignore[union-attr]
    # A suspicion at an incarnation the member has already refuted is stale.
    push_pull(driver, "a", Entry("b", State.SUSPECT, 4, 1, accuser="a"))
    assert record(driver, "b") == (State.ALIVE, 5)
    push_pull(driver, "a", Entry("b", State.SUSPECT, 5, 1, accuser="a"))
    assert record(driver, "b") == (State.SUSPECT, 5)
    # The suspect refutes with a newer incarnation in the next exchange.
    push_pull(driver, "a", alive("b", incarnation=6))
    assert record(driver, "b") == (State.ALIVE, 6)


def test_dead_and_left_records_merge_by_incarnation_and_left_beats_dead() -> None:
    driver = Driver()
    push_pull(driver, "a", alive("a"), alive("b", incarnation=2), alive("c", incarnation=2))
    push_pull(driver, "a", Entry("b", State.DEAD, 1, 1))  # older than what we hold: ignored
    assert record(driver, "b") == (State.ALIVE, 2)
    push_pull(driver, "a", Entry("b", State.DEAD, 2, 1), Entry("c", State.LEFT, 3, 1))
    assert record(driver, "b") == (State.DEAD, 2)
    assert record(driver, "c") == (State.LEFT, 3)
    # A graceful leave replaces an inferred death; a death never replaces a leave.
    push_pull(driver, "a", Entry("b", State.LEFT, 2, 1), Entry("c", State.DEAD, 3, 1))
    assert record(driver, "b") == (State.LEFT, 2)
    assert record(driver, "c") == (State.LEFT, 3)
    # Only a newer alive brings a departed member back (a restart: it bumped its incarnation).
    push_pull(driver, "a", alive("b", incarnation=2), alive("c", incarnation=4))
    assert record(driver, "b") == (State.LEFT, 2)
    assert record(driver, "c") == (State.ALIVE, 4)


def test_records_of_departed_strangers_add_no_member() -> None:
    driver = Driver()
    push_pull(driver, "a", alive("a"), Entry("d", State.DEAD, 7, 1), Entry("l", State.LEFT, 7, 1))
    assert record(driver, "d") is None and record(driver, "l") is None


def test_a_state_calling_us_dead_is_refuted_above_its_incarnation() -> None:
    driver = Driver()
    ready = push_pull(driver, "a", alive("a"), Entry("me", State.DEAD, 9, 1))
    assert record(driver, "me") == (State.ALIVE, 10)
    assert driver.membership.counters["refutations"] == 1
    ready = driver.fire("gossip")
    assert "me" in gossiped_peers(ready)


def test_plain_push_pulls_relay_no_new_member_but_joins_between_meshes_do() -> None:
    driver = Driver()
    push_pull(driver, "a", alive("a"), alive("b"))
    # The sender announces itself; the members its state brings are not relayed.
    gossiped = gossiped_peers(driver.fire("gossip"))
    assert "a" in gossiped and "b" not in gossiped
    # A joiner's state at a seed: whatever it brings is relayed (here, the members of another mesh).
    push_pull(driver, "x", alive("x"), alive("y"), join=True)
    assert gossiped_peers(driver.fire("gossip")) >= {"x", "y"}


def test_a_joiner_in_a_mesh_relays_the_seeds_state_and_a_fresh_joiner_does_not() -> None:
    fresh = Driver()
    fresh.request(join_command(["s"]))
    push_pull(fresh, "s", alive("s"), alive("t"), join=True, response=True)
    assert "t" not in gossiped_peers(fresh.fire("gossip"))

    in_a_mesh = Driver()
    push_pull(in_a_mesh, "a", alive("a"))
    in_a_mesh.request(join_command(["s"]))
    push_pull(in_a_mesh, "s", alive("s"), alive("t"), join=True, response=True)
    assert {"s", "t"} <= gossiped_peers(in_a_mesh.fire("gossip"))


def _alive_views(cluster: Cluster, peers: list[str]) -> dict[str, set[str]]:
    views = {}
    for peer in peers:
        members = cluster.nodes[peer].membership.members()
        views[peer] = {m.peer for m in members if m.state is State.ALIVE}
    return views


def test_two_meshes_formed_apart_merge_after_one_join() -> None:
    cluster = Cluster(seed=21, config=LAN)
    left = cluster.start(6, prefix="l")
    right = cluster.start(6, prefix="r")
    cluster.run_for(10 * US_PER_S)
    views = _alive_views(cluster, left + right)
    assert all(views[peer] == set(left) for peer in left)
    assert all(views[peer] == set(right) for peer in right)

    request_id = cluster.request(left[3], join_command([right[4]]))
    cluster.run_for(5 * US_PER_S)
    reply = cluster.reply(left[3], request_id)
    assert reply is not None and reply.error is None
    assert cluster.converged()


def _probe_ticks(driver: Driver, seconds: int) -> list[Any]:
    notices = []
    for _ in range(seconds):
        ready = driver.step(TimerFired("membership/probe"), advance_us=US_PER_S)
        notices.extend(n for n in ready.notices if isinstance(n, Isolated))
    return notices


def test_a_node_alone_says_so_once_and_once_again_when_a_member_is_back() -> None:
    driver = Driver(Config(isolation_warning_ms=5_000))
    assert _probe_ticks(driver, 4) == []
    assert driver.membership.alone_since_us() is None
    (notice,) = _probe_ticks(driver, 10)  # once, not at every tick
    assert notice.alone and notice.at_us - notice.since_us >= 5 * US_PER_S
    assert driver.membership.alone_since_us() == notice.since_us
    driver.gossip("a", alive("a"))
    assert driver.membership.alone_since_us() is None  # at once, not at the next tick
    (back,) = _probe_ticks(driver, 3)
    assert not back.alone and back.since_us == notice.since_us
