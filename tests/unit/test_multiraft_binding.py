"""pyagent._core.MultiRaft through the binding: a 3-node in-process cluster whose writes go into
MemoryStore (proto/storage ops under component "raft"), elections, commits, recovery from the store,
and the error surfaces. The driver's behaviour in depth is tested in rustcore/core (multiraft::tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest

from pyagent._core import MultiRaft, NotLeaderError, RaftFatalError
from pyagent.proto.kv.component import storage_op
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.storage import WriteBatch

RAFT = "raft"
# The state machine's own namespace: b"v/<group>/<index>" -> value, b"applied/<group>" -> index.
STATE = "state"
GROUP = 7
IDS = (1, 2, 3)


class Node:
    def __init__(self, node_id: int, store: MemoryStore | None = None) -> None:
        self.node_id = node_id
        self.store = store or MemoryStore()
        self.raft = MultiRaft(node_id, seed=1000 + node_id)
        self.applied: dict[int, int] = {}

    def persist(self, component: str, writes: Sequence[tuple[object, ...]]) -> None:
        if writes:
            batch = WriteBatch(component, tuple(storage_op(w) for w in writes))
            batch.check()
            self.store.apply(batch)

    def values(self, group: int) -> list[bytes]:
        pairs = self.store.reader(STATE).scan(f"v/{group}/".encode(), f"v/{group}0".encode(), 1 << 20)
        return [value for _, value in sorted(pairs, key=lambda kv: int(kv[0].split(b"/")[2]))]

    def recover(self) -> list[int]:
        """A restart: a new driver from what the store holds."""
        self.raft = MultiRaft(self.node_id, seed=1000 + self.node_id)
        reader = self.store.reader(RAFT)
        kvs = reader.scan(b"r/", b"r0", 1 << 20)
        logs: dict[str, tuple[int, list[bytes]]] = {}
        for group in {int(key.split(b"/")[1]) for key, _ in kvs}:
            bounds = reader.log_bounds(f"r/{group}")
            if bounds is not None:
                logs[f"r/{group}"] = (bounds[0], reader.log_entries(f"r/{group}", bounds[0], bounds[1] + 1))
        state = self.store.reader(STATE)
        self.applied = {
            int(key.split(b"/")[1]): int(value)
            for key, value in state.scan(b"applied/", b"applied0", 1 << 20)
        }
        return self.raft.recover(kvs, logs, self.applied)


class Cluster:
    def __init__(self) -> None:
        self.nodes = {node_id: Node(node_id) for node_id in IDS}
        self.network: list[tuple[int, int, bytes]] = []

    def bootstrap(self, group: int) -> None:
        for node in self.nodes.values():
            node.raft.bootstrap_group(group, list(IDS))

    def process(self, node: Node) -> None:
        while node.raft.has_ready():
            ready = node.raft.ready()
            self.network += [(node.node_id, to, frame) for to, frame in ready.send_now]
            assert not ready.snapshots_out, "every replica here starts from the bootstrap"
            assert (ready.token == 0) == (not ready.writes)
            node.persist(RAFT, ready.writes)
            self.apply(node, ready.committed)
            if ready.token:
                node.raft.on_persisted(ready.token)
            self.network += [(node.node_id, to, frame) for to, frame in ready.send_after_persist]

    def apply(self, node: Node, committed: list[tuple[int, int, int, int, bytes]]) -> None:
        for group, index, _term, kind, data in committed:
            writes: list[tuple[object, ...]] = []
            if kind == 0 and data:
                writes.append(("put", f"v/{group}/{index}".encode(), data))
            elif kind == 1:
                node.persist(RAFT, node.raft.apply_conf_change(group, data))
            writes.append(("put", f"applied/{group}".encode(), str(index).encode()))
            node.persist(STATE, writes)
            node.applied[group] = index
            node.raft.advance_apply(group, index)

    def settle(self) -> None:
        for _ in range(100):
            for node in self.nodes.values():
                self.process(node)
            if not self.network:
                return
            delivering, self.network = self.network, []
            for sender, to, frame in delivering:
                self.nodes[to].raft.step(sender, frame)
        raise AssertionError("the cluster did not settle")

    def tick(self, times: int = 1) -> None:
        for _ in range(times):
            for node in self.nodes.values():
                node.raft.tick()
            self.settle()

    def leader(self, group: int) -> Node | None:
        return next((n for n in self.nodes.values() if n.raft.status(group)["role"] == "leader"), None)

    def elect(self, group: int) -> Node:
        for _ in range(200):
            self.tick()
            leader = self.leader(group)
            if leader is not None:
                self.tick(3)
                return leader
        raise AssertionError("no leader")

    def followers(self, group: int) -> Iterator[Node]:
        return (n for n in self.nodes.values() if n.raft.status(group)["role"] == "follower")


def test_three_nodes_elect_commit_and_recover() -> None:
    cluster = Cluster()
    cluster.bootstrap(GROUP)
    leader = cluster.elect(GROUP)
    status = leader.raft.status(GROUP)
    assert status["voters"] == list(IDS)
    assert status["progress"] == {node_id: status["last_index"] for node_id in IDS}

    indexes = [leader.raft.propose(GROUP, value) for value in (b"a", b"b", b"c")]
    assert indexes == list(range(indexes[0], indexes[0] + 3))
    cluster.settle()
    cluster.tick(2)
    for node in cluster.nodes.values():
        assert node.values(GROUP) == [b"a", b"b", b"c"]

    # A follower restarts from its store and catches up on what it missed meanwhile.
    follower = next(cluster.followers(GROUP))
    follower.raft = MultiRaft(follower.node_id, seed=0)  # down: a driver without groups
    leader.raft.propose(GROUP, b"d")
    cluster.network.clear()
    assert follower.recover() == [GROUP]
    recovered = follower.raft.status(GROUP)
    assert recovered["applied"] == follower.applied[GROUP]
    commit, applied = recovered["commit"], recovered["applied"]
    assert isinstance(commit, int) and isinstance(applied, int) and commit >= applied
    cluster.tick(5)
    leader.raft.propose(GROUP, b"e")
    cluster.settle()
    cluster.tick(2)
    for node in cluster.nodes.values():
        assert node.values(GROUP) == [b"a", b"b", b"c", b"d", b"e"]


def test_one_ready_covers_every_group() -> None:
    cluster = Cluster()
    groups = list(range(10))
    for group in groups:
        cluster.bootstrap(group)
    first = cluster.nodes[1].raft.ready()
    assert first.token != 0
    assert len(first.writes) == 3 * len(groups)
    assert {w[1] for w in first.writes} == {f"r/{g}/{k}".encode() for g in groups for k in ("hs", "cs", "ts")}
    cluster.nodes[1].persist(RAFT, first.writes)
    cluster.nodes[1].raft.on_persisted(first.token)
    for group in groups:
        cluster.elect(group)
    for node in cluster.nodes.values():
        for group in groups:
            if node.raft.status(group)["role"] == "leader":
                node.raft.propose(group, b"x")
        ready = node.raft.ready()
        destinations = [to for to, _ in ready.send_now]
        assert len(destinations) == len(set(destinations))
        node.persist(RAFT, ready.writes)
        if ready.token:
            node.raft.on_persisted(ready.token)


def test_not_leader_names_the_leader() -> None:
    cluster = Cluster()
    cluster.bootstrap(GROUP)
    leader = cluster.elect(GROUP)
    follower = next(cluster.followers(GROUP))
    with pytest.raises(NotLeaderError) as raised:
        follower.raft.propose(GROUP, b"x")
    assert raised.value.leader_id == leader.node_id
    with pytest.raises(NotLeaderError):
        follower.raft.read_index(GROUP, b"ctx")
    with pytest.raises(ValueError, match="no raft group"):
        leader.raft.propose(GROUP + 1, b"x")
    with pytest.raises(ValueError, match="unknown conf change"):
        leader.raft.propose_conf_change(GROUP, [("promote", 4)])


def test_misuse_and_bad_frames_are_value_errors() -> None:
    raft = MultiRaft(1, seed=1)
    with pytest.raises(ValueError):
        MultiRaft(0, seed=1)
    with pytest.raises(ValueError, match="bad raft frame"):
        raft.step(2, b"\x01\x01garbage")
    with pytest.raises(ValueError, match="group id"):
        raft.bootstrap_group(1 << 20, [1])
    with pytest.raises(ValueError, match="unknown token"):
        raft.on_persisted(1)
    raft.bootstrap_group(0, [1])
    with pytest.raises(ValueError, match="exists"):
        raft.create_group(0)
    with pytest.raises(ValueError, match="without groups"):
        raft.recover([], {}, {})


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def heartbeat_frame(group: int, sender: int, to: int, term: int, commit: int) -> bytes:
    """A frame with one MsgHeartbeat (protobuf fields msg_type=1, to=2, from=3, term=4, commit=8)."""
    message = b"".join(
        bytes([field << 3]) + varint(value)
        for field, value in ((1, 8), (2, to), (3, sender), (4, term), (8, commit))
    )
    return b"\x01" + varint(1) + varint(group) + varint(len(message)) + message


def test_a_raft_panic_poisons_the_driver() -> None:
    cluster = Cluster()
    cluster.bootstrap(GROUP)
    leader = cluster.elect(GROUP)
    follower = next(cluster.followers(GROUP))
    term = leader.raft.status(GROUP)["term"]
    assert isinstance(term, int)
    # A heartbeat committing far beyond the follower's log: raft-rs panics on it.
    forged = heartbeat_frame(GROUP, leader.node_id, follower.node_id, term, 1_000_000)
    with pytest.raises(RaftFatalError):
        follower.raft.step(leader.node_id, forged)
    with pytest.raises(RaftFatalError):
        follower.raft.tick()
    with pytest.raises(RaftFatalError):
        follower.raft.ready()
