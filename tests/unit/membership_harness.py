"""A tiny deterministic message pump for membership tests: simnet has the real one.

It runs several ``NodeCore``s that each hold one ``Membership``, on one virtual clock. Each Ready is
carried out by the one interpreter (``proto.interpret``) through a tiny sink: messages go through the real
frame codec with the component's limits and arrive after a random latency drawn from the seeded
generator, plus an extra delay for nodes made slow; timers fire in time order; writes go to the node's
in-memory store, which is durable at once (a killed node's store survives, so adding the peer again is
a restart). Every ``MemberChanged`` notice every node reports is kept with its observer, for the tests
to question.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyagent.proto import wire
from pyagent.proto.events import Event, LocalRequest, MessageReceived, Persisted, Started, TimerFired
from pyagent.proto.interpret import Interpreter
from pyagent.proto.membership import Config, Join, MemberChanged, Membership, Metadata, State
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import CancelTransfer, Reply, Send, Transfer
from pyagent.proto.storage import WriteBatch

US_PER_S = 1_000_000


@dataclass
class Node:
    peer: str
    core: NodeCore
    membership: Membership
    store: MemoryStore
    timers: dict[str, int] = field(default_factory=dict)
    replies: dict[int, Reply] = field(default_factory=dict)
    interpreter: Interpreter | None = None
    written: list[WriteBatch] = field(default_factory=list)  # handed over, not yet reported Persisted


class _Sink:
    """How the harness carries out one node's effects; the Interpreter decides when."""

    def __init__(self, cluster: Cluster, node: Node) -> None:
        self.cluster = cluster
        self.node = node

    def write(self, batch: WriteBatch) -> None:
        self.node.store.apply(batch)
        self.node.written.append(batch)

    def send(self, send: Send) -> None:
        cluster, node = self.cluster, self.node
        if cluster.tap is not None:
            cluster.tap(node.peer, send.peer, send.message)
        cluster._deliver(node.peer, send.peer, wire.encode_frame(send.message, cluster._decoder_limits))

    def reply(self, reply: Reply) -> None:
        self.node.replies[reply.request_id] = reply

    def notice(self, notice: object) -> None:
        if isinstance(notice, MemberChanged):
            self.cluster.seen.append(Seen(self.node.peer, notice))

    def set_timer(self, key: str, at_us: int) -> None:
        generation = next(self.cluster._generation)
        self.node.timers[key] = generation
        self.cluster._push(at_us, "timer", self.node, (key, generation))

    def cancel_timer(self, key: str) -> None:
        self.node.timers.pop(key, None)

    def transfer(self, transfer: Transfer) -> None:
        raise AssertionError("membership starts no transfers")

    def cancel_transfer(self, cancel: CancelTransfer) -> None:
        raise AssertionError("membership starts no transfers")


@dataclass(frozen=True)
class Seen:
    observer: str
    change: MemberChanged


class Cluster:
    def __init__(self, seed: int, config: Config, latency_us: tuple[int, int] = (200, 2_000)) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.latency_us = latency_us
        self.now_us = 0
        self.nodes: dict[str, Node] = {}
        self.slow_us: dict[str, int] = {}
        self.isolated: set[str] = set()
        # Peer -> side of a partition; messages between different sides are lost. Empty: no partition.
        self.side: dict[str, int] = {}
        self.seen: list[Seen] = []
        self.messages_delivered = 0
        self.events = 0
        # Called with (sender, receiver, message) for every message sent, delivered or not.
        self.tap: Callable[[str, str, dict[str, Any]], None] | None = None
        self._heap: list[tuple[int, int, str, Node, Any]] = []
        self._order = itertools.count()
        self._request_ids = itertools.count(1)
        self._generation = itertools.count(1)
        self._decoder_limits = Membership.limits
        # What each peer's disk holds; it outlives a kill, so adding the peer again is a restart.
        self.stores: dict[str, MemoryStore] = {}

    # ----- building -----

    def add(self, peer: str, config: Config | None = None, metadata: Metadata | None = None) -> Node:
        rng = random.Random(f"{self.seed}/{peer}/{len(self.seen)}")
        store = self.stores.setdefault(peer, MemoryStore())
        recovered = not store.is_empty()
        membership = Membership(
            peer,
            rng,
            config or self.config,
            metadata,
            (f"/sim/{peer}",),
            storage=store.reader(Membership.name),
        )
        node = Node(peer, NodeCore(peer, [membership]), membership, store)
        node.interpreter = Interpreter(_Sink(self, node))
        self.nodes[peer] = node
        self._step(node, Started(recovered))
        return node

    def start(self, count: int, prefix: str = "n") -> list[str]:
        """Add ``count`` nodes; the first starts the cluster and every other joins through it."""
        peers = [f"{prefix}{index:03d}" for index in range(count)]
        for peer in peers:
            self.add(peer)
        self.request(peers[0], join_command([]))
        for peer in peers[1:]:
            self.request(peer, join_command([peers[0]]))
        return peers

    def partition(self, *sides: list[str]) -> None:
        self.side = {peer: index for index, side in enumerate(sides) for peer in side}

    def kill(self, peer: str) -> None:
        del self.nodes[peer]

    # ----- driving -----

    def request(self, peer: str, command: object) -> int:
        request_id = next(self._request_ids)
        self._step(self.nodes[peer], LocalRequest(request_id, command))
        return request_id

    def reply(self, peer: str, request_id: int) -> Reply | None:
        return self.nodes[peer].replies.get(request_id)

    def run_for(self, duration_us: int) -> None:
        self.run_until(self.now_us + duration_us)

    def run_until(self, end_us: int) -> None:
        while self._heap and self._heap[0][0] <= end_us:
            at_us, _, kind, node, payload = heapq.heappop(self._heap)
            if self.nodes.get(node.peer) is not node:
                continue  # the node was killed or restarted since this was scheduled
            self.now_us = at_us
            if kind == "timer":
                key, generation = payload
                if node.timers.get(key) != generation:
                    continue
                del node.timers[key]
                self._step(node, TimerFired(key))
            else:
                sender, frame = payload
                (message,) = wire.FrameDecoder(self._decoder_limits).feed(frame)
                self.messages_delivered += 1
                self._step(node, MessageReceived(sender, Membership.protocol_id, message))
        self.now_us = end_us

    def _step(self, node: Node, event: Event) -> None:
        self.events += 1
        ready = node.core.step(event, self.now_us)
        assert node.interpreter is not None
        node.interpreter.carry_out(ready)
        # The store is durable at once: report every write now, in order, which releases what waited.
        written, node.written = node.written, []
        if written:
            node.interpreter.persisted(len(written))
            for batch in written:
                self._step(node, Persisted(batch.component, batch.tag))

    def _deliver(self, sender: str, peer: str, frame: bytes) -> None:
        target = self.nodes.get(peer)
        if target is None or sender in self.isolated or peer in self.isolated:
            return
        if self.side and self.side.get(sender) != self.side.get(peer):
            return
        delay_us = (
            self.rng.randint(*self.latency_us) + self.slow_us.get(sender, 0) + self.slow_us.get(peer, 0)
        )
        self._push(self.now_us + delay_us, "message", target, (sender, frame))

    def _push(self, at_us: int, kind: str, node: Node, payload: Any) -> None:
        heapq.heappush(self._heap, (at_us, next(self._order), kind, node, payload))

    # ----- questions -----

    def state_of(self, observer: str, peer: str) -> State | None:
        record = self.nodes[observer].membership.member(peer)
        return None if record is None else record.state

    def first_seen(self, peer: str, state: State, since_us: int = 0) -> dict[str, int]:
        """For each observer, when it first saw ``peer`` enter ``state`` at or after ``since_us``."""
        first: dict[str, int] = {}
        for seen in self.seen:
            change = seen.change
            if change.peer == peer and change.new_state is state and change.at_us >= since_us:
                first.setdefault(seen.observer, change.at_us)
        return first

    def converged(self) -> bool:
        """Every node sees every node (itself included) alive."""
        expected = set(self.nodes)
        for node in self.nodes.values():
            alive = {r.peer for r in node.membership.members() if r.state is State.ALIVE}
            if alive != expected:
                return False
        return True


def join_command(seeds: list[str]) -> Join:
    return Join(tuple((seed, (f"/sim/{seed}",)) for seed in seeds))
