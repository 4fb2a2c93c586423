"""One Membership instance driven by hand: trust rules, refutation, commands and bounds."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pyagent.proto.events import LocalRequest, MessageReceived, SendFailed, Started, TimerFired
from pyagent.proto.membership import (
    LAN,
    PROTOCOL_ID,
    Config,
    Join,
    Leave,
    ListMembers,
    Membership,
    Metadata,
    State,
    UpdateLocalMetadata,
    codec,
)
from pyagent.proto.membership.records import Entry, MemberChanged, MemberRecord
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import Ready, ReplyError, SetTimer


class Driver:
    def __init__(
        self, config: Config = LAN, metadata: Metadata | None = None, allowed: frozenset[str] | None = None
    ) -> None:
        self.membership = Membership(
            "me", random.Random(1), config, metadata, ("/ip4/127.0.0.1/tcp/1",), allowed
        )
        self.core = NodeCore("me", [self.membership])
        self.now_us = 0
        self.request_ids = 0
        self.step(Started())
        self.request(Join(()))

    def step(self, event: Any, advance_us: int = 1_000) -> Ready:
        self.now_us += advance_us
        return self.core.step(event, self.now_us)

    def request(self, command: object) -> Ready:
        self.request_ids += 1
        return self.step(LocalRequest(self.request_ids, command))

    def receive(self, sender: str, message: dict[str, Any]) -> Ready:
        return self.step(MessageReceived(sender, PROTOCOL_ID, message))

    def gossip(self, sender: str, *entries: Entry, advance_us: int = 1_000) -> Ready:
        message = codec.gossip([codec.encode_entry(entry) for entry in entries])
        return self.step(MessageReceived(sender, PROTOCOL_ID, message), advance_us)

    def fire(self, suffix: str) -> Ready:
        return self.step(TimerFired(f"membership/{suffix}"))

    def state(self, peer: str) -> State | None:
        record = self.membership.member(peer)
        return None if record is None else record.state


def alive(peer: str, incarnation: int = 0) -> Entry:
    return Entry(peer, State.ALIVE, incarnation, 1, (f"/sim/{peer}",))


def sent_entries(ready: Ready) -> list[list[Any]]:
    return [entry for send in ready.send for entry in send.message.get("u", [])]


def test_a_suspicion_of_ourselves_is_refuted_with_a_higher_incarnation() -> None:
    driver = Driver()
    driver.gossip("a", alive("a"))
    driver.gossip("a", Entry("me", State.SUSPECT, 0, 1, accuser="a"))
    me = driver.membership.member("me")
    assert me is not None and me.incarnation == 1 and me.state is State.ALIVE
    assert driver.membership.counters["refutations"] == 1
    assert driver.membership.health_score == 1
    ready = driver.fire("gossip")
    assert ["me", 0, 1, me.meta_version, ["/ip4/127.0.0.1/tcp/1"], None] in sent_entries(ready)


def test_old_suspicions_of_ourselves_are_ignored() -> None:
    driver = Driver()
    driver.gossip("a", alive("a"))
    driver.gossip("a", Entry("me", State.SUSPECT, 0, 1, accuser="a"))
    driver.gossip("a", Entry("me", State.DEAD, 0, 1))
    me = driver.membership.member("me")
    assert me is not None and me.incarnation == 1 and driver.membership.counters["refutations"] == 1


def test_a_sender_cannot_be_suspect_or_dead_by_its_own_message() -> None:
    driver = Driver()
    driver.gossip("a", alive("a"), alive("b"))
    driver.gossip("a", Entry("a", State.DEAD, 0, 1), Entry("a", State.SUSPECT, 0, 1, accuser="b"))
    assert driver.state("a") is State.ALIVE
    driver.gossip("a", Entry("a", State.LEFT, 1, 1))
    assert driver.state("a") is State.LEFT


def test_confirmations_only_count_live_accusers() -> None:
    driver = Driver()
    driver.gossip("a", *(alive(peer) for peer in "abcdefg"))
    driver.gossip("a", Entry("g", State.SUSPECT, 0, 1, accuser="a"))
    driver.gossip("a", Entry("g", State.SUSPECT, 0, 1, accuser="stranger"))
    assert driver.membership.counters["suspicion_confirmations"] == 0
    ready = driver.gossip("b", Entry("g", State.SUSPECT, 0, 1, accuser="b"))
    assert driver.membership.counters["suspicion_confirmations"] == 1
    deadline = [t for t in ready.timers if isinstance(t, SetTimer) and t.key == "membership/s/g"]
    assert deadline and deadline[0].at_us < driver.now_us + LAN.suspicion_max_ms(8) * 1_000


def test_a_suspected_member_is_refuted_by_a_newer_alive_and_dies_otherwise() -> None:
    driver = Driver()
    driver.gossip("a", alive("a"), alive("b"))
    driver.gossip("a", Entry("b", State.SUSPECT, 0, 1, accuser="a"))
    assert driver.state("b") is State.SUSPECT
    driver.gossip("a", alive("b", incarnation=0))
    assert driver.state("b") is State.SUSPECT
    driver.gossip("a", alive("b", incarnation=1))
    assert driver.state("b") is State.ALIVE
    driver.gossip("a", Entry("b", State.SUSPECT, 1, 1, accuser="a"))
    driver.fire("s/b")
    assert driver.state("b") is State.DEAD
    driver.gossip("a", Entry("b", State.LEFT, 1, 1))
    assert driver.state("b") is State.LEFT
    driver.gossip("a", Entry("b", State.DEAD, 1, 1))
    assert driver.state("b") is State.LEFT


def test_a_stale_accusation_is_answered_with_the_refutation_once_per_gossip_interval() -> None:
    driver = Driver()
    driver.gossip("a", alive("a"), alive("b", incarnation=2), alive("c"))
    driver.gossip("a", Entry("me", State.SUSPECT, 0, 1, accuser="a"))
    stale = Entry("b", State.SUSPECT, 1, 1, accuser="c")
    ready = driver.gossip(
        "a", stale, Entry("me", State.DEAD, 0, 1), advance_us=LAN.gossip_interval_ms * 1_000
    )
    corrections = [send for send in ready.send if send.peer == "a" and send.message["t"] == "g"]
    assert len(corrections) == 1
    (b, me) = corrections[0].message["u"]
    assert b[:3] == ["b", int(State.ALIVE), 2] and me[:3] == ["me", int(State.ALIVE), 1]
    assert driver.state("b") is State.ALIVE
    # Many holders relay one stale claim at once: within a gossip interval only the first is answered.
    assert not driver.gossip("c", stale).send
    ready = driver.gossip("c", stale, advance_us=LAN.gossip_interval_ms * 1_000)
    assert [send.peer for send in ready.send] == ["c"]
    assert driver.membership.counters["stale_claims_corrected"] == 3


def test_without_the_buddy_system_stale_accusations_go_unanswered() -> None:
    driver = Driver(LAN.without_lifeguard())
    driver.gossip("a", alive("a"), alive("b", incarnation=2))
    assert not driver.gossip("a", Entry("b", State.SUSPECT, 1, 1, accuser="a")).send
    assert driver.state("b") is State.ALIVE


def test_dead_members_are_retried_only_while_there_are_any() -> None:
    driver = Driver()
    ready = driver.gossip("a", alive("a"), alive("b"))
    assert not [t for t in ready.timers if isinstance(t, SetTimer) and t.key == "membership/reconnect"]
    ready = driver.gossip("a", Entry("b", State.DEAD, 0, 1))
    assert [t for t in ready.timers if isinstance(t, SetTimer) and t.key == "membership/reconnect"]
    (ping,) = driver.fire("reconnect").send
    assert ping.peer == "b" and ping.message["t"] == "p"
    driver.gossip("a", alive("b", incarnation=1))
    ready = driver.fire("reconnect")
    assert not ready.send and not ready.timers


def test_a_known_view_is_adopted_at_construction() -> None:
    records = [
        MemberRecord("a", ("/sim/a",), State.ALIVE, 3, 0, 1, Metadata()),
        MemberRecord("b", ("/sim/b",), State.DEAD, 1, 0, 1, Metadata()),
        MemberRecord("me", (), State.DEAD, 9, 0, 1, Metadata()),
    ]
    membership = Membership("me", random.Random(1), LAN, known=records)
    assert sorted((m.peer, m.state, m.incarnation) for m in membership.members()) == [
        ("a", State.ALIVE, 3),
        ("b", State.DEAD, 1),
        ("me", State.ALIVE, 0),
    ]
    assert membership.live_count() == 2
    # What was adopted is reported with the first Ready, Started's.
    ready = NodeCore("me", [membership]).step(Started(), 0)
    assert [(n.peer, n.new_state) for n in ready.notices if isinstance(n, MemberChanged)] == [
        ("a", State.ALIVE),
        ("b", State.DEAD),
    ]


def probe_once(driver: Driver) -> tuple[str, int]:
    ready = driver.fire("probe")
    (ping,) = [send for send in ready.send if send.message["t"] == "p"]
    return ping.peer, ping.message["s"]


def test_only_the_probed_member_or_a_helper_can_ack_a_probe() -> None:
    driver = Driver()
    driver.gossip("a", alive("a"), alive("b"), alive("c"))
    target, seq = probe_once(driver)
    stranger = next(peer for peer in "abc" if peer != target)
    driver.receive(stranger, codec.ack(seq, []))
    assert driver.membership.counters["acks_late_or_unknown"] == 1
    driver.fire("probe-timeout")
    driver.fire("probe")
    assert driver.membership.counters["probes_failed"] == 1
    assert driver.state(target) is State.SUSPECT


def test_missing_nacks_raise_our_health_score_and_nacks_do_not() -> None:
    driver = Driver()
    driver.gossip("a", alive("a"), alive("b"), alive("c"), alive("d"))
    target, seq = probe_once(driver)
    ready = driver.fire("probe-timeout")
    helpers = [send.peer for send in ready.send if send.message["t"] == "i"]
    assert len(helpers) == 3 and target not in helpers
    driver.receive(helpers[0], codec.nack(seq))
    driver.receive(helpers[0], codec.nack(seq))  # a helper's nack counts once
    driver.fire("probe")
    assert driver.membership.health_score == 2


def test_a_probe_refused_where_the_target_listened_skips_the_helpers() -> None:
    """A reset at every address says the target's process is gone: no relay could reach it either. The
    probe fails into a suspicion as before, and the refusal, being an answer, leaves our health alone."""
    driver = Driver()
    driver.gossip("a", alive("a"), alive("b"), alive("c"), alive("d"))
    target, _ = probe_once(driver)
    driver.step(SendFailed(target, PROTOCOL_ID, "unreachable: refused", nothing_listens=True))
    ready = driver.fire("probe-timeout")
    assert [send for send in ready.send if send.message["t"] == "i"] == []
    driver.fire("probe")
    assert driver.state(target) is State.SUSPECT
    assert driver.membership.counters["probes_refused"] == 1
    assert driver.membership.health_score == 0


@pytest.mark.parametrize(
    "failure",
    [
        SendFailed("x", PROTOCOL_ID, "unreachable: timeout"),  # silent: maybe only our packets are lost
        SendFailed("someone-else", PROTOCOL_ID, "unreachable: refused", nothing_listens=True),
    ],
    ids=["not-a-refusal", "another-peer"],
)
def test_only_a_refusal_by_the_probed_target_skips_the_helpers(failure: SendFailed) -> None:
    driver = Driver()
    driver.gossip("a", alive("a"), alive("b"), alive("c"), alive("d"))
    target, _ = probe_once(driver)
    if failure.peer == "x":
        failure = SendFailed(target, failure.protocol, failure.reason)
    driver.step(failure)
    ready = driver.fire("probe-timeout")
    assert len([send for send in ready.send if send.message["t"] == "i"]) == 3


def test_a_helper_relays_an_ack_or_nacks() -> None:
    driver = Driver()
    ready = driver.receive("origin", codec.ping_req(77, "target", ("/t",), True, 400, []))
    (ping,) = [send for send in ready.send if send.message["t"] == "p"]
    assert ping.peer == "target" and ping.addrs == ("/t",)
    ready = driver.receive("target", codec.ack(ping.message["s"], []))
    assert [(s.peer, s.message["t"], s.message["s"]) for s in ready.send] == [("origin", "a", 77)]
    ready = driver.receive("origin", codec.ping_req(78, "target", ("/t",), True, 400, []))
    (ping,) = [send for send in ready.send if send.message["t"] == "p"]
    ready = driver.fire(f"r/{ping.message['s']}")
    assert [(s.peer, s.message["t"], s.message["s"]) for s in ready.send] == [("origin", "n", 78)]


def test_the_member_table_is_bounded() -> None:
    driver = Driver(Config(members_max=3))
    driver.gossip("a", *(alive(peer) for peer in "abcde"))
    assert len(driver.membership.members()) == 3
    assert driver.membership.counters["members_refused"] == 3


def test_an_allow_list_keeps_gossiped_strangers_out() -> None:
    driver = Driver(allowed=frozenset({"me", "a", "b"}))
    driver.gossip("a", *(alive(peer) for peer in "abcx"))
    assert sorted(r.peer for r in driver.membership.members()) == ["a", "b", "me"]
    assert driver.membership.counters["members_refused"] == 2


def test_metadata_is_validated_and_versioned() -> None:
    with pytest.raises(ValueError, match="metadata_bytes_max"):
        Membership("me", random.Random(1), LAN, Metadata(extra={f"k{i}": "v" * 100 for i in range(8)}))
    driver = Driver()
    ready = driver.request(UpdateLocalMetadata(metadata=Metadata(hardware_tags=("x" * 300,))))
    error = ready.apply[0].error
    assert error is not None and error.code == "invalid" and "hardware_tags" in error.message
    ready = driver.request(UpdateLocalMetadata(metadata=Metadata(cpu_cores=4)))
    record = ready.apply[0].value
    assert record.meta_version == 2 and record.incarnation == 1 and record.metadata.cpu_cores == 4


def test_metadata_newer_than_ours_is_fetched_from_the_sender() -> None:
    driver = Driver()
    ready = driver.gossip("a", Entry("a", State.ALIVE, 0, 5, ("/a",)))
    (query,) = [send for send in ready.send if send.message["t"] == "mq"]
    assert query.peer == "a" and query.message["q"] == ["a"]
    driver.receive("a", codec.metadata_reply([["a", 5, {"c": 32}]]))
    record = driver.membership.member("a")
    assert record is not None and record.meta_version == 5 and record.metadata.cpu_cores == 32
    ready = driver.receive("b", codec.metadata_query(["a", "unknown"]))
    (reply,) = ready.send
    assert reply.peer == "b" and reply.message["m"] == [["a", 5, {"c": 32}]]


def test_commands_list_join_and_leave() -> None:
    driver = Driver()
    driver.gossip("a", alive("a"))
    ready = driver.request(ListMembers())
    assert [record.peer for record in ready.apply[0].value] == ["a", "me"]
    ready = driver.request(Join([(b"seed", ["/seed"])]))  # type: ignore[list-item]
    error = ready.apply[0].error
    assert error is not None and error.code == "invalid" and "peer id" in error.message
    driver.request(Join([("seed", ["/seed"])]))
    ready = driver.request(Join([("seed", ["/seed"])]))
    assert ready.apply[0].error == ReplyError("busy", "a join is already in progress")
    ready = driver.request(Leave())
    assert ready.apply[0].value == 1
    assert driver.membership.member("me").state is State.LEFT  # type: ignore[union-attr]
    assert driver.request(Leave()).apply[0].value == 0
    error = driver.request(UpdateLocalMetadata(metadata=Metadata())).apply[0].error
    assert error is not None and error.code == "left"
    assert driver.fire("probe").send == []


def test_changes_are_reported_and_bounded() -> None:
    driver = Driver(Config(changes_max=2))
    ready = driver.gossip("a", alive("a"), alive("b"), alive("c"))
    changes = [notice for notice in ready.notices if isinstance(notice, MemberChanged)]
    assert [(change.peer, change.old_state, change.new_state) for change in changes] == [
        ("b", None, State.ALIVE),
        ("c", None, State.ALIVE),
    ]
    # Three changes in one step with room for two: the oldest (a) is the one dropped.
    assert driver.membership.counters["changes_dropped"] == 1
    assert driver.request(ListMembers()).notices == []  # each change is reported once


def _push_pulls_to(ready: Ready, peer: str) -> list[dict[str, Any]]:
    return [send.message for send in ready.send if send.peer == peer and send.message["t"] == "pp"]


def test_a_stranger_still_unknown_a_probe_interval_later_gets_a_push_pull() -> None:
    driver = Driver()
    interval_us = LAN.probe_interval_ms * 1_000
    assert not _push_pulls_to(driver.receive("s", codec.ping(1, [])), "s")
    assert not _push_pulls_to(driver.fire("probe"), "s")  # too soon: its news may still be on its way
    ready = driver.step(TimerFired("membership/probe"), advance_us=interval_us)
    assert len(_push_pulls_to(ready, "s")) == 1
    assert driver.membership.counters["stranger_push_pulls"] == 1
    assert not _push_pulls_to(driver.step(TimerFired("membership/probe"), advance_us=interval_us), "s")


def test_a_stranger_met_by_gossip_in_the_meantime_costs_no_push_pull() -> None:
    driver = Driver()
    driver.receive("t", codec.ping(1, []))
    driver.gossip("a", alive("a"), alive("t"))
    ready = driver.step(TimerFired("membership/probe"), advance_us=LAN.probe_interval_ms * 1_000)
    assert not _push_pulls_to(ready, "t")
    assert driver.membership.counters["stranger_push_pulls"] == 0
