"""The KV component on the real multi-Raft driver, in a deterministic in-process cluster (kv_harness)."""

from __future__ import annotations

from typing import Any

import pytest
from kv_harness import Cluster

from pyagent.errors import RemoteProtocolError
from pyagent.proto.events import Event, MessageReceived, TransferChunk, TransferReceived
from pyagent.proto.kv import Config
from pyagent.proto.kv.messages import PROTOCOL_ID, encode_raft
from pyagent.proto.kv.ops import Cas, Delete, Get, ListShards, Put, Scan, Session
from pyagent.proto.kv.placement import node_id_of, shard_of
from pyagent.proto.ready import Ready

SHARDS = 4


def ok(reply: Any) -> Any:
    assert reply.error is None, reply.error
    return reply.value


def formed(size: int = 3, **config: Any) -> Cluster:
    cluster = Cluster(size, Config(shards=SHARDS, tick_ms=10, **config))
    cluster.found()
    cluster.run_until(
        lambda: all(_replicas(cluster, "peer-0", shard) == min(size, 3) for shard in range(SHARDS)), 20
    )
    return cluster


def leader_after_a_write(cluster: Cluster, key: bytes, value: bytes) -> str:
    """Write ``key`` and return the peer that leads its shard."""
    ok(cluster.request("peer-0", Put(key, value)))
    leader = cluster.leader_of(shard_of(key, SHARDS))
    assert leader is not None
    return leader


def _replicas(cluster: Cluster, peer: str, shard: int) -> int:
    statuses = {s.shard: s for s in cluster.nodes[peer].kv.shard_statuses()}
    status = statuses.get(shard)
    return len(status.voters) if status is not None and status.leader else 0


def test_every_node_answers_for_every_shard_and_leaders_spread() -> None:
    cluster = formed()
    ok(cluster.request("peer-1", Put(b"hello", b"world")))
    assert [ok(cluster.request(p, Get(b"hello"))) for p in cluster.nodes] == [b"world"] * 3
    assert ok(cluster.request("peer-2", Cas(b"hello", b"world", b"there"))) == (True, b"world")
    assert ok(cluster.request("peer-0", Cas(b"hello", b"world", b"x"))) == (False, b"there")
    assert ok(cluster.request("peer-0", Delete(b"hello"))) is True
    assert ok(cluster.request("peer-1", Get(b"hello"))) is None
    cluster.run_for(20)  # leader balancing waits leader_balance_interval_ms between moves
    leaders = {cluster.leader_of(shard) for shard in range(SHARDS)}
    assert len(leaders) >= 2, f"leaders stay on {leaders}"


def test_a_scan_reads_one_shard_picked_by_the_hash_tag() -> None:
    cluster = formed()
    for name in (b"b", b"a", b"c"):
        ok(cluster.request("peer-0", Put(b"{user}/" + name, name)))
    other = next(t for t in (b"o1", b"o2", b"o3", b"o4") if shard_of(t, SHARDS) != shard_of(b"user", SHARDS))
    ok(cluster.request("peer-0", Put(b"{" + other + b"}/a", b"x")))
    pairs = ok(cluster.request("peer-2", Scan(b"{user}/", limit=2)))
    assert pairs == [[b"{user}/a", b"a"], [b"{user}/b", b"b"]]
    everything = ok(cluster.request("peer-1", Scan(b"", shard=shard_of(b"user", SHARDS))))
    assert [k for k, _ in everything] == [b"{user}/a", b"{user}/b", b"{user}/c"]


def test_bad_input_is_refused_with_a_clear_error() -> None:
    cluster = formed(1)
    reply = cluster.request("peer-0", Put(b"k" * 2000, b"v"))
    assert reply.error is not None and reply.error.code == "invalid" and "1024" in reply.error.message
    reply = cluster.request("peer-0", Scan(b"", shard=SHARDS))
    assert reply.error is not None and reply.error.code == "invalid"


def test_writes_go_on_after_a_shard_leader_dies_and_nothing_acknowledged_is_lost() -> None:
    cluster = formed()
    key = b"survivor"
    victim = leader_after_a_write(cluster, key, b"1")
    cluster.kill(victim)
    other = next(p for p in cluster.nodes if p != victim)
    ok(cluster.request(other, Put(key, b"2"), within_s=10))
    cluster.start(victim)
    cluster.run_for(2)
    assert ok(cluster.request(victim, Get(key))) == b"2"


def test_the_answer_to_a_committed_write_leaves_before_the_leaders_batch_is_durable() -> None:
    cluster = formed()
    leader = leader_after_a_write(cluster, b"k", b"0")
    core = cluster.nodes[leader].core
    assert core is not None
    readies: list[Ready] = []
    step = core.step

    def recording_step(event: Event, now_us: int, *, flush: bool = True) -> Ready:
        readies.append(step(event, now_us, flush=flush))
        return readies[-1]

    core.step = recording_step  # type: ignore[method-assign]
    ok(cluster.request(leader, Put(b"k", b"1")))
    [answered] = [ready for ready in readies if ready.apply_before_persist]
    # The entry is on a quorum's disks; the leader's own batch (the applied state) is still to come.
    assert answered.writes and not any(ready.apply for ready in readies)


def test_a_retried_write_is_applied_once_across_a_leader_change() -> None:
    cluster = formed()
    key = b"counter"
    session = Session(client=77, seq=1, ack=1)
    assert ok(cluster.request("peer-0", Cas(key, None, b"first", session))) == (True, None)
    ok(cluster.request("peer-1", Put(key, b"second")))
    victim = cluster.leader_of(shard_of(key, SHARDS))
    assert victim is not None
    cluster.kill(victim)
    other = next(p for p in cluster.nodes if p != victim)
    # The retry of the first write gets the first answer and changes nothing.
    assert ok(cluster.request(other, Cas(key, None, b"first", session))) == (True, None)
    assert ok(cluster.request(other, Get(key))) == b"second"


def test_a_replica_that_missed_compacted_entries_catches_up_by_snapshot() -> None:
    cluster = formed(compact_after_entries=20)
    cluster.kill("peer-2")
    for index in range(120):
        ok(cluster.request("peer-0", Put(f"k{index}".encode(), f"v{index}".encode())))
    assert sum(n.kv.counters["compactions"] for n in cluster.nodes.values()) > 0
    cluster.start("peer-2")
    cluster.run_for(5)
    assert cluster.nodes["peer-2"].kv.counters["snapshots_installed"] > 0
    assert sum(n.kv.counters["snapshots_sent"] for n in cluster.nodes.values()) > 0
    cluster.kill("peer-0")
    cluster.kill("peer-1")
    for index in (0, 57, 119):
        stale = ok(cluster.request("peer-2", Get(f"k{index}".encode(), stale=True)))
        assert stale == f"v{index}".encode(), "the snapshot brought the data"


def test_the_whole_cluster_restarts_from_its_stores() -> None:
    cluster = formed()
    for index in range(30):
        ok(cluster.request(f"peer-{index % 3}", Put(f"k{index}".encode(), b"v")))
    for peer in cluster.nodes:
        cluster.kill(peer)
    for peer in cluster.nodes:
        cluster.start(peer)
    assert [ok(cluster.request("peer-1", Get(f"k{index}".encode()), within_s=10)) for index in range(30)] == [
        b"v"
    ] * 30


def test_fewer_peers_than_replicas_work_with_a_warning() -> None:
    cluster = formed(1)
    ok(cluster.request("peer-0", Put(b"alone", b"yes")))
    statuses = ok(cluster.request("peer-0", ListShards()))
    assert len(statuses) == SHARDS and all(s.warning == "1 of 3 replicas" for s in statuses)


def test_plugins_can_veto_or_transform_proposals_and_see_commits() -> None:
    class Hooks:
        def __init__(self) -> None:
            self.committed: list[tuple[int, list[Any]]] = []

        def pyagent_kv_propose(self, shard: int, write: Any) -> Any:
            if write.key.startswith(b"forbidden"):
                raise ValueError("tenant may not write there")
            if isinstance(write, Put) and write.key == b"upper":
                return Put(write.key, write.value.upper())
            return None

        def pyagent_kv_committed(self, shard: int, index: int, writes: list[Any]) -> None:
            self.committed.append((shard, [w.key for w in writes]))

    cluster = Cluster(1, Config(shards=SHARDS, tick_ms=10))
    hooks = Hooks()
    cluster.nodes["peer-0"].kv._hooks = hooks
    cluster.found()
    refused = cluster.request("peer-0", Put(b"forbidden/x", b"v"))
    assert refused.error is not None and refused.error.code == "refused"
    ok(cluster.request("peer-0", Put(b"upper", b"shout")))
    assert ok(cluster.request("peer-0", Get(b"upper"))) == b"SHOUT"
    assert (shard_of(b"upper", SHARDS), [b"upper"]) in hooks.committed


def test_a_peers_bad_frames_raise_remote_protocol_error() -> None:
    cluster = formed(1)
    kv = cluster.nodes["peer-0"].kv
    for message in (
        encode_raft(SHARDS + 1, b""),  # another mesh's shard count
        encode_raft(SHARDS, b"\x01\x05garbage"),
        {"v": 1, "t": "fwd", "i": 1, "c": b"\x93"},
        {"v": 1, "t": "nonsense", "i": 1},
    ):
        with pytest.raises(RemoteProtocolError):
            kv.on_message(MessageReceived("peer-x", PROTOCOL_ID, message), cluster.now_us, _ready())


def test_a_peers_bad_snapshot_is_refused_and_the_rest_of_it_ignored() -> None:
    cluster = formed(1)
    kv = cluster.nodes["peer-0"].kv
    first = TransferChunk("peer-x", PROTOCOL_ID, 9, 0, 20, b"0123456789")
    with pytest.raises(RemoteProtocolError):
        kv.on_transfer(TransferChunk("peer-x", PROTOCOL_ID, 9, 5, 20, b"out of order"), 0, _ready())
    kv.on_transfer(first, 0, _ready())  # the refused transfer's later chunks are ignored
    kv.on_transfer(TransferReceived("peer-x", PROTOCOL_ID, 9, 20, b""), 0, _ready())
    assert kv._incoming == {} and kv._staged == {}
    for tid, blob in enumerate((b"", b"\x00\x05raft", b"\x00\x00not a snapshot", b"\x63\x00")):
        kv.on_transfer(TransferChunk("peer-y", PROTOCOL_ID, tid, 0, len(blob), blob), 0, _ready())
        with pytest.raises(RemoteProtocolError):
            kv.on_transfer(TransferReceived("peer-y", PROTOCOL_ID, tid, len(blob), b""), 0, _ready())
    assert ok(cluster.request("peer-0", Put(b"still", b"works"))) is None


def _ready() -> Any:
    from pyagent.proto.ready import Ready

    return Ready()


def test_a_leader_whose_transfer_aborts_keeps_serving() -> None:
    """raft-rs refuses proposals while a leadership transfer is pending, and reports no role change when
    the transfer aborts (here its MsgTimeoutNow is lost): the leader must take writes again after it."""
    cluster = formed()
    key = b"transferred"
    shard = shard_of(key, SHARDS)
    leader = leader_after_a_write(cluster, key, b"before")
    node = cluster.nodes[leader]
    target = next(p for p in cluster.nodes if p != leader)
    cluster.cut.add(frozenset((leader, target)))
    node.kv.driver.transfer_leader(shard, node_id_of(target))
    ok(cluster.request(leader, Put(key, b"during")))
    assert cluster.leader_of(shard) == leader
    forwards = node.kv.counters["forwards"]
    ok(cluster.request(leader, Put(key, b"after"), within_s=1))
    assert node.kv.counters["forwards"] == forwards, "the leader forwarded its own shard's write"
    cluster.cut.clear()
    assert ok(cluster.request(target, Get(key))) == b"after"


def _all_quiet(cluster: Cluster) -> bool:
    return all(s.quiet for node in cluster.nodes.values() if node.up for s in node.kv.shard_statuses())


def test_an_idle_cluster_goes_quiet_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = formed()
    ok(cluster.request("peer-0", Put(b"idle", b"soon")))
    cluster.run_for(15)  # past the leader balancing that placement asks for
    assert _all_quiet(cluster)
    frames = []
    deliver = cluster.deliver
    monkeypatch.setattr(cluster, "deliver", lambda *frame: (frames.append(frame), deliver(*frame)))
    cluster.run_for(5)
    assert frames == []
    # A write wakes its shard, and it goes quiet again.
    ok(cluster.request("peer-2", Put(b"idle", b"woken")))
    assert frames and not _all_quiet(cluster)
    cluster.run_for(2)
    assert _all_quiet(cluster)
    assert ok(cluster.request("peer-1", Get(b"idle", stale=True))) == b"woken"


def test_membership_news_wakes_a_quiet_shard_whose_leader_died(monkeypatch: pytest.MonkeyPatch) -> None:
    import kv_harness

    cluster = formed()
    key = b"sleeper"
    ok(cluster.request("peer-0", Put(key, b"1")))
    cluster.run_for(15)
    assert _all_quiet(cluster)
    victim = cluster.leader_of(shard_of(key, SHARDS))
    assert victim is not None
    # Until membership says so, nobody notices: quiet followers run no election timer.
    monkeypatch.setattr(kv_harness.View, "member", lambda self, peer: kv_harness.Record(peer))
    cluster.kill(victim)
    other = next(p for p in cluster.nodes if p != victim)
    reply = cluster.request(other, Put(key, b"2"), within_s=10)
    assert reply.error is not None and reply.error.code == "unavailable", reply
    monkeypatch.undo()
    ok(cluster.request(other, Put(key, b"3"), within_s=10))
    new_leader = cluster.leader_of(shard_of(key, SHARDS))
    assert new_leader not in (None, victim)
    cluster.start(victim)
    assert ok(cluster.request(victim, Get(key))) == b"3"
    # The restarted node's groups started awake; everything settles quiet again with it.
    cluster.run_for(5)
    assert _all_quiet(cluster)
