"""A small deterministic cluster of KV nodes for component tests; simnet has the full simulator.

Each node is a real ``NodeCore`` holding one ``RaftKv`` (with the real multi-Raft driver), carried out by
the one ``Interpreter``. Messages go through the real frame codec and arrive after a fixed latency;
timers fire in time order; writes go to the node's ``MemoryStore`` and are durable at once (so a killed
node restarts from everything it was told was persisted); a transfer arrives whole. Membership is a
fixed view: every node that is up is alive, and every node that is down is dead (at once).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyagent.proto import wire
from pyagent.proto.events import (
    Event,
    LocalRequest,
    MessageReceived,
    Persisted,
    Started,
    TimerFired,
    TransferChunk,
    TransferDone,
    TransferReceived,
)
from pyagent.proto.interpret import Interpreter
from pyagent.proto.kv import Config, FoundShards, RaftKv
from pyagent.proto.kv.messages import PROTOCOL_ID
from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.membership.records import State
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import CancelTransfer, Reply, Send, Transfer
from pyagent.proto.storage import WriteBatch

LATENCY_US = 500


@dataclass
class Record:
    """The part of a membership record the KV component reads."""

    peer: str
    state: State = State.ALIVE
    addrs: tuple[str, ...] = ()
    metadata: Metadata = field(default_factory=lambda: Metadata(protocols=(PROTOCOL_ID,)))


class View:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def members(self) -> list[Any]:
        return [Record(peer) for peer, node in self.cluster.nodes.items() if node.up]

    def member(self, peer: str) -> Any:
        node = self.cluster.nodes.get(peer)
        if node is None:
            return None
        return Record(peer, State.ALIVE if node.up else State.DEAD)


@dataclass
class Node:
    peer: str
    store: MemoryStore = field(default_factory=MemoryStore)
    core: NodeCore | None = None
    interpreter: Interpreter | None = None
    up: bool = False
    # Which run of the process this is: a write's durability report is for the run that made it.
    incarnation: int = 0
    replies: dict[int, Reply] = field(default_factory=dict)
    timers: dict[str, int] = field(default_factory=dict)

    @property
    def kv(self) -> RaftKv:
        assert self.core is not None
        component = self.core.component("kv")
        assert isinstance(component, RaftKv)
        return component


class _Sink:
    def __init__(self, cluster: Cluster, node: Node) -> None:
        self.cluster, self.node = cluster, node

    def write(self, batch: WriteBatch) -> None:
        self.node.store.apply(batch)
        persisted = Persisted(batch.component, batch.tag)
        self.cluster.schedule(0, self.node.peer, persisted, persisted=self.node.incarnation)

    def send(self, send: Send) -> None:
        frame = wire.encode_frame(send.message, RaftKv.limits)
        self.cluster.deliver(self.node.peer, send.peer, frame)

    def reply(self, reply: Reply) -> None:
        self.node.replies[reply.request_id] = reply

    def notice(self, notice: object) -> None:
        pass

    def set_timer(self, key: str, at_us: int) -> None:
        self.node.timers[key] = at_us
        self.cluster.schedule_at(at_us, self.node.peer, TimerFired(key), timer=(key, at_us))

    def cancel_timer(self, key: str) -> None:
        self.node.timers.pop(key, None)

    def transfer(self, transfer: Transfer) -> None:
        data = transfer.source.read(0, transfer.source.size)
        sender, target = self.node.peer, transfer.peer
        tid = transfer.transfer_id
        if not self.cluster.reachable(sender, target):
            return
        chunk = TransferChunk(sender, transfer.protocol, tid, 0, len(data), data)
        self.cluster.schedule(LATENCY_US, target, chunk)
        self.cluster.schedule(
            LATENCY_US, target, TransferReceived(sender, transfer.protocol, tid, len(data), b"")
        )
        self.cluster.schedule(2 * LATENCY_US, sender, TransferDone(transfer.protocol, tid, len(data), b""))

    def cancel_transfer(self, cancel: CancelTransfer) -> None:
        pass


class Cluster:
    def __init__(self, size: int, config: Config | None = None, seed: int = 1) -> None:
        self.config = config or Config(shards=4, tick_ms=10)
        self.seed = seed
        self.now_us = 0
        self.nodes = {f"peer-{i}": Node(f"peer-{i}") for i in range(size)}
        self.cut: set[frozenset[str]] = set()
        self._queue: list[tuple[int, int, str, Event, Any]] = []
        self._order = itertools.count()
        self._request_ids = itertools.count(1)
        for peer in self.nodes:
            self.start(peer)

    # --- nodes -----------------------------------------------------------------------------------------

    def start(self, peer: str) -> None:
        node = self.nodes[peer]
        rng = random.Random(f"{self.seed}/{peer}")
        kv = RaftKv(peer, rng, self.config, node.store.reader("kv"), View(self))
        node.core = NodeCore(peer, [kv])
        node.interpreter = Interpreter(_Sink(self, node))
        node.up = True
        node.incarnation += 1
        node.timers.clear()
        self.step(peer, Started(recovered=not node.store.is_empty()))

    def kill(self, peer: str) -> None:
        """Everything persisted survives (the harness's store is durable at once); the rest is gone."""
        self.nodes[peer].up = False

    def leader_of(self, shard: int) -> str | None:
        for peer, node in self.nodes.items():
            if node.up and node.kv._leaders.get(shard) == node.kv.node_id:
                return peer
        return None

    # --- requests ----------------------------------------------------------------------------------------

    def request(self, peer: str, command: object, within_s: float = 10.0) -> Reply:
        request_id = next(self._request_ids)
        self.step(peer, LocalRequest(request_id, command))
        node = self.nodes[peer]
        self.run_until(lambda: request_id in node.replies or not node.up, within_s)
        if request_id not in node.replies:
            raise TimeoutError(f"{peer} did not answer {command!r} within {within_s} s")
        return node.replies.pop(request_id)

    def found(self, peer: str = "peer-0") -> None:
        assert self.request(peer, FoundShards()).error is None

    # --- the event loop ---------------------------------------------------------------------------------

    def reachable(self, a: str, b: str) -> bool:
        return self.nodes[b].up and frozenset((a, b)) not in self.cut

    def deliver(self, sender: str, target: str, frame: bytes) -> None:
        if not self.reachable(sender, target):
            return
        (message,) = wire.FrameDecoder(RaftKv.limits).feed(frame)
        self.schedule(LATENCY_US, target, MessageReceived(sender, PROTOCOL_ID, message))

    def schedule(self, delay_us: int, peer: str, event: Event, **how: Any) -> None:
        self.schedule_at(self.now_us + delay_us, peer, event, **how)

    def schedule_at(self, at_us: int, peer: str, event: Event, **how: Any) -> None:
        heapq.heappush(self._queue, (at_us, next(self._order), peer, event, how))

    def step(self, peer: str, event: Event) -> None:
        node = self.nodes[peer]
        assert node.core is not None and node.interpreter is not None
        node.interpreter.carry_out(node.core.step(event, self.now_us))

    def run_until(self, condition: Callable[[], bool], within_s: float) -> None:
        deadline = self.now_us + int(within_s * 1_000_000)
        while not condition():
            if not self._queue or self._queue[0][0] > deadline:
                self.now_us = deadline
                return
            self.run_one()

    def run_for(self, seconds: float) -> None:
        self.run_until(lambda: False, seconds)

    def run_one(self) -> None:
        at_us, _, peer, event, how = heapq.heappop(self._queue)
        self.now_us = max(self.now_us, at_us)
        node = self.nodes[peer]
        if not node.up:
            return
        if "timer" in how:
            key, due = how["timer"]
            if node.timers.get(key) != due:
                return  # replaced or cancelled
            del node.timers[key]
        if "persisted" in how:
            if how["persisted"] != node.incarnation:
                return  # reported to a process that was killed since
            assert node.interpreter is not None
            node.interpreter.persisted()  # as the daemon's driver does: durable first, then the event
        self.step(peer, event)
