"""The discrete-event loop that drives real ``NodeCore`` objects on a virtual clock.

The heap holds plain tuples ``(time_us, seq, kind, node, a, b)``; ``seq`` is unique, so ties never
compare further and the order is fixed by the order events were scheduled. Each node's effects are carried
out exactly as the daemon would: persist into the node's durable store, encode every ``Send`` with the real
codec, route the bytes through the network model, and decode them with the real ``FrameDecoder``.

One seed makes one root generator; the network, faults, workload, churn and every node core get their own
generator derived from it in a fixed order, so adding a fault does not shift the network's draws.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pyagent import pluginhost
from pyagent.errors import LocalProtocolError, RemoteProtocolError
from pyagent.proto.component import Component
from pyagent.proto.events import (
    Event,
    LocalRequest,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    TimerFired,
)
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import Reply, Send, SetTimer
from pyagent.proto.types import PeerId
from pyagent.proto.wire import FrameDecoder, Limits, encode_frame
from pyagent_simnet import components
from pyagent_simnet import scenario as scenario_mod
from pyagent_simnet.network import (
    DROP_DOWN,
    DROP_HELD_FULL,
    DROP_PARTITION,
    DROP_UNKNOWN,
    DROP_UNSUPPORTED,
    Network,
)
from pyagent_simnet.observe import Observer
from pyagent_simnet.scenario import Scenario
from pyagent_simnet.trace import Trace

US_PER_MS = 1_000
US_PER_S = 1_000_000

# Event kinds. An event a gray node has already waited for carries GRAY_WAITED added to its kind.
DELIVER, TIMER, CONNECT, DISCONNECT, CALL = range(5)
GRAY_WAITED = 8
NO_NODE = -1
NEVER_US = -(1 << 62)

ReplyHandler = Callable[["SimNode", Reply], None]


class SimNode:
    """One simulated peer: its current ``NodeCore`` (None while down) and what outlives a crash."""

    __slots__ = (
        "connected",
        "core",
        "disturbed_us",
        "epoch",
        "gray_delay_us",
        "hears_connections",
        "index",
        "left",
        "notice_sources",
        "paused",
        "peer",
        "pending",
        "protocols",
        "recv_bytes",
        "recv_msgs",
        "region",
        "sent_bytes",
        "sent_msgs",
        "started_us",
        "store",
        "timers",
        "up",
    )

    def __init__(self, index: int, peer: PeerId, region: int) -> None:
        self.index = index
        self.peer = peer
        self.region = region
        self.store: dict[str, bytes] = {}
        self.core: NodeCore | None = None
        self.up = False
        self.left = False  # gone for good (a churn or scenario leave): never restarted
        self.epoch = 0  # bumps at each crash, so frames and timers addressed to the old process die
        self.timers: dict[str, int] = {}  # key -> generation of the one live deadline
        self.paused = False
        self.pending: list[tuple[int, int, Any, Any]] = []
        self.gray_delay_us = 0
        self.connected: set[int] = set()
        # Whether any component reacts to PeerConnected/PeerDisconnected; when none does, those events are
        # not scheduled at all (membership ignores them, and a 1,000-peer mesh makes a million of them).
        self.hears_connections = True
        self.protocols: dict[str, Limits] = {}
        self.sent_msgs = self.sent_bytes = self.recv_msgs = self.recv_bytes = 0
        self.started_us = 0
        self.disturbed_us = (
            NEVER_US  # the last time a node fault (crash, start, pause, gray...) touched this node
        )
        # Components that queue notices for the shell to drain (membership's changes) rather than put
        # them in Ready.apply; drained after every step so observers see them at the right virtual time.
        self.notice_sources: list[Callable[[], list[Any]]] = []


class Sim:
    """A simulation of one scenario under one seed. Build, then ``run(until_s)`` or ``run_scenario()``."""

    def __init__(
        self,
        scenario: Scenario | Mapping[str, Any] | str | Path,
        seed: int | None = None,
        overrides: Iterable[str] = (),
    ) -> None:
        if isinstance(scenario, Scenario):
            self.scenario = scenario
        elif isinstance(scenario, Mapping):
            self.scenario = scenario_mod.from_dict(scenario, "<dict>", tuple(overrides))
        else:
            self.scenario = scenario_mod.load(str(scenario), tuple(overrides))
        sc = self.scenario
        self.seed = sc.top["seed"] if seed is None else seed
        root = random.Random(self.seed)
        # Fixed derivation order: append new generators at the end, never in between.
        self.network_rng = random.Random(root.getrandbits(64))
        self.fault_rng = random.Random(root.getrandbits(64))
        self.workload_rng = random.Random(root.getrandbits(64))
        self.churn_rng = random.Random(root.getrandbits(64))
        self.node_seed_rng = random.Random(root.getrandbits(64))
        self.placement_rng = random.Random(root.getrandbits(64))
        self.join_rng = random.Random(root.getrandbits(64))
        self.network = Network(sc.network, self.network_rng, sc.source)
        self.trace = Trace(keep=sc.top["trace"])
        self.now_us = 0
        self._heap: list[tuple[int, int, int, int, Any, Any]] = []
        self._seq = itertools.count()
        self.nodes: list[SimNode] = []
        self.index_of: dict[PeerId, int] = {}
        self.kits = [components.AVAILABLE[name] for name in sc.top["components"]]
        self._extra = [components.load_extra(spec, sc.source) for spec in sc.top["extra_components"]]
        self._plugins = pluginhost.load_plugins() if sc.top["plugins"] else None
        self._connections = sc.top["connections"] == "on-first-send"
        self._disconnect_detect_us = int(sc.network["disconnect_detect_ms"] * US_PER_MS)
        self._replies: dict[int, tuple[SimNode, ReplyHandler]] = {}
        self._request_ids = itertools.count(1)
        self.counters: dict[str, int] = {
            "events": 0,
            "delivered": 0,
            "decode_errors": 0,
            "truncated_frames": 0,
            "step_rejected": 0,
            "timers_fired": 0,
            "persisted": 0,
            "replies": 0,
            "notices": 0,
        }
        self.drops: dict[str, int] = {}
        self.fault_log: list[tuple[float, str, str]] = []
        # Kits are shared by every run; what one needs to keep for this run lives here, under its name.
        self.kit_state: dict[str, Any] = {}
        self.observers: list[Observer] = []
        from pyagent_simnet import faults, workload

        self.observers.append(workload.PingWorkload(self))
        for kit in self.kits:
            observer = kit.observer(self)
            if observer is not None:
                self.observers.append(observer)
        self.faults = faults.FaultDriver(self)
        join_spread_us = int(sc.top["join_spread_s"] * US_PER_S)
        last_start_us = 0
        for _ in range(sc.top["peers"]):
            at_us = self.placement_rng.randrange(join_spread_us + 1) if join_spread_us else 0
            self.add_node(at_us)
            last_start_us = max(last_start_us, at_us)
        # The initial peers' cores live for the whole run. Once built they are frozen out of the cyclic
        # collector, which would otherwise walk every one of their (up to millions of) member records
        # again at each full collection.
        self.schedule(last_start_us, _freeze_gc)
        self.faults.schedule()
        for observer in self.observers:
            observer.start()

    # ----- the loop

    def schedule(self, at_us: int, fn: Callable[[Any], None], arg: Any = None) -> None:
        """Call ``fn(arg)`` at virtual time ``at_us`` (never earlier than now)."""
        at_us = max(at_us, self.now_us)
        heapq.heappush(self._heap, (at_us, next(self._seq), CALL, NO_NODE, fn, arg))

    def step_once(self) -> bool:
        """Process the next event; False when nothing is left."""
        if not self._heap:
            return False
        self._dispatch(heapq.heappop(self._heap))
        return True

    def run(self, until_s: float) -> None:
        """Process every event due at or before ``until_s`` seconds of virtual time."""
        until_us = int(until_s * US_PER_S)
        heap, pop, dispatch = self._heap, heapq.heappop, self._dispatch
        while heap and heap[0][0] <= until_us:
            dispatch(pop(heap))
        self.now_us = max(self.now_us, until_us)

    def _dispatch(self, event: tuple[int, int, int, int, Any, Any]) -> None:
        time_us, _, kind, index, a, b = event
        self.now_us = time_us
        self.counters["events"] += 1
        if kind == CALL:
            a(b)
            return
        node = self.nodes[index]
        if not node.up:
            if kind == DELIVER:
                self._drop(DROP_DOWN, a, index)
            return
        if node.paused:
            if kind == DELIVER and len(node.pending) >= self.network.held_messages_max:
                self._drop(DROP_HELD_FULL, a, index)
            else:
                node.pending.append((kind, index, a, b))
            return
        if kind >= GRAY_WAITED:
            kind -= GRAY_WAITED
        elif node.gray_delay_us:
            self._push(time_us + node.gray_delay_us, kind + GRAY_WAITED, index, a, b)
            return
        if kind == DELIVER:
            self._deliver(node, a, b)
        elif kind == TIMER:
            if node.timers.get(a) == b:
                del node.timers[a]
                self.counters["timers_fired"] += 1
                self.trace.add(b"%d T %d %s\n" % (time_us, index, a.encode()))
                self._step(node, TimerFired(a))
        elif b == node.epoch:
            other = self.nodes[a].peer
            self._step(
                node, PeerConnected(other, (f"/sim/{other}",)) if kind == CONNECT else PeerDisconnected(other)
            )

    def _push(self, at_us: int, kind: int, index: int, a: Any, b: Any) -> int:
        seq = next(self._seq)
        heapq.heappush(self._heap, (at_us, seq, kind, index, a, b))
        return seq

    # ----- carrying out a NodeCore's effects

    def _step(self, node: SimNode, event: Event) -> None:
        core = node.core
        assert core is not None
        try:
            ready = core.step(event, self.now_us)
        except RemoteProtocolError:
            self.counters["step_rejected"] += 1
            return
        if ready.persist:
            store = node.store
            for record in ready.persist:
                store[record.key] = record.value
            self.counters["persisted"] += len(ready.persist)
        for send in ready.send:
            self._send(node, send)
        for item in ready.apply:
            self._apply(node, item)
        for drain in node.notice_sources:
            notices = drain()
            if notices:
                self.counters["notices"] += len(notices)
                for observer in self.observers:
                    observer.on_notices(node, notices, self.now_us)
        now_us = self.now_us
        for timer in ready.timers:
            if type(timer) is SetTimer:
                at_us = timer.at_us if timer.at_us > now_us else now_us
                seq = next(self._seq)
                node.timers[timer.key] = seq
                heapq.heappush(self._heap, (at_us, seq, TIMER, node.index, timer.key, seq))
            else:
                node.timers.pop(timer.key, None)

    def _apply(self, node: SimNode, item: object) -> None:
        if isinstance(item, Reply):
            self.counters["replies"] += 1
            waiting = self._replies.pop(item.request_id, None)
            if waiting is not None:
                # Deferred to its own event, so that a handler sending a new request never steps a core
                # while this step's effects are only half carried out.
                self.schedule(self.now_us, _call_reply, (waiting[1], node, item))
            return
        self.counters["notices"] += 1
        for observer in self.observers:
            observer.on_notice(node, item, self.now_us)

    def _send(self, node: SimNode, send: Send) -> None:
        limits = node.protocols.get(send.protocol)
        if limits is None:
            raise LocalProtocolError(f"{node.peer} sent on {send.protocol}, which it does not speak")
        frame = encode_frame(send.message, limits)
        node.sent_msgs += 1
        node.sent_bytes += len(frame)
        src = node.index
        dst = self.index_of.get(send.peer)
        if dst is None:
            self._drop(DROP_UNKNOWN, src, -1)
            return
        net = self.network
        if net.cut and net.blocked(src, dst):
            self._drop(DROP_PARTITION, src, dst)
            return
        if (net.clogged_peers or net.clogged_links) and net.clogged(src, dst):
            if len(net.held) >= net.held_messages_max:
                self._drop(DROP_HELD_FULL, src, dst)
            else:
                net.held.append((src, dst, send.protocol, frame, self.nodes[dst].epoch))
            return
        self._transmit(src, dst, send.protocol, frame, self.nodes[dst].epoch)

    def _transmit(self, src: int, dst: int, protocol: str, frame: bytes, dst_epoch: int) -> None:
        source, target = self.nodes[src], self.nodes[dst]
        dropped, deliver_at_us, frame = self.network.route(
            src, dst, source.region, target.region, frame, self.now_us
        )
        if dropped is not None:
            self._drop(dropped, src, dst)
            return
        if self._connections and dst not in source.connected and target.up and source.up:
            # The first frame dials: each side learns of the other, the receiver just before the frame.
            source.connected.add(dst)
            target.connected.add(src)
            if source.hears_connections:
                self._push(self.now_us, CONNECT, src, dst, source.epoch)
            if target.hears_connections:
                self._push(min(deliver_at_us), CONNECT, dst, src, target.epoch)
        payload = (protocol, frame, dst_epoch)
        for at_us in deliver_at_us:
            self._push(at_us, DELIVER, dst, src, payload)

    def _deliver(self, node: SimNode, src: int, payload: tuple[str, bytes, int]) -> None:
        protocol, frame, epoch = payload
        if epoch != node.epoch:
            self._drop(DROP_DOWN, src, node.index)
            return
        limits = node.protocols.get(protocol)
        if limits is None:
            self._drop(DROP_UNSUPPORTED, src, node.index)
            return
        self.counters["delivered"] += 1
        node.recv_msgs += 1
        node.recv_bytes += len(frame)
        self.trace.add(b"%d D %d %d " % (self.now_us, src, node.index) + frame)
        decoder = FrameDecoder(limits)
        try:
            messages = decoder.feed(frame)
        except RemoteProtocolError:
            self.counters["decode_errors"] += 1
            return
        if decoder.buffered_bytes:
            # Each delivery is one whole stream write: bytes left over mean the stream ends mid-frame.
            self.counters["truncated_frames"] += 1
        peer = self.nodes[src].peer
        for message in messages:
            if not node.up:
                return
            self._step(node, MessageReceived(peer, protocol, message))

    def _drop(self, reason: str, src: int, dst: int) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        self.trace.add(b"%d X %d %d %s\n" % (self.now_us, src, dst, reason.encode()))

    # ----- requests and node lifecycle (the library API faults and workloads use)

    def request(self, node: SimNode, command: object, on_reply: ReplyHandler | None = None) -> None:
        """Send a local command to a running node now; ``on_reply`` gets its ``Reply``."""
        if not node.up or node.core is None:
            return
        request_id = next(self._request_ids)
        if on_reply is not None:
            self._replies[request_id] = (node, on_reply)
        self._step(node, LocalRequest(request_id, command))

    def add_node(self, at_us: int | None = None) -> SimNode:
        index = len(self.nodes)
        node = SimNode(index, f"p{index:05d}", self.network.pick_region())
        self.nodes.append(node)
        self.index_of[node.peer] = index
        self.schedule(self.now_us if at_us is None else at_us, self._start, node)
        return node

    def _start(self, node: SimNode) -> None:
        if node.up or node.left:
            return
        rng = random.Random(self.node_seed_rng.getrandbits(64))
        built: dict[str, Any] = {}
        parts = []
        for kit in self.kits:
            made = kit.build(self, node, rng, built)
            for component in made:
                built[component.name] = component
            parts.extend(made)
        if self._plugins is not None:
            for component in pluginhost.collect_components(self._plugins, node.peer, rng):
                built[component.name] = component
                parts.append(component)
        for factory in self._extra:
            component = factory(node.peer, rng, node.store, self.scenario, built)
            built[component.name] = component
            parts.append(component)
        node.core = NodeCore(node.peer, rng, parts)
        node.hears_connections = any(_hears_connections(component) for component in node.core.components)
        node.notice_sources = [source for kit in self.kits for source in kit.notice_sources(built)]
        node.protocols = node.core.protocols
        node.up = True
        node.started_us = self.now_us
        if node.epoch:
            node.disturbed_us = self.now_us  # a restart: rumours about the old process may still be around
        for observer in self.observers:
            observer.on_node_up(node)
        for kit in self.kits:
            kit.on_start(self, node)

    def inject(self, fault: Mapping[str, Any]) -> None:
        """Apply one fault now, given as a scenario's ``[[faults]]`` table (``at_s`` is ignored)."""
        checked = scenario_mod.from_dict({"faults": [dict(fault)]}, "<inject>").faults[0]
        self.faults.apply(checked)

    def restart(self, node: SimNode) -> None:
        """Start a down node again: a new NodeCore built from whatever its durable store kept."""
        self._start(node)

    def crash(self, node: SimNode, wipe: bool = False) -> None:
        if not node.up:
            return
        node.up = False
        node.disturbed_us = self.now_us
        node.core = None
        node.timers = {}
        node.epoch += 1
        node.paused = False
        node.pending = []
        node.gray_delay_us = 0
        if wipe:
            node.store = {}
        # Requests the old process will never answer.
        self._replies = {rid: waiting for rid, waiting in self._replies.items() if waiting[0] is not node}
        self._drop_connections(node)
        for observer in self.observers:
            observer.on_node_down(node)

    def leave(self, node: SimNode) -> None:
        """Leave for good: kits may say goodbye first (a graceful leave), then the process stops."""
        if not node.up:
            return
        node.left = True
        linger_us = max([kit.on_leave(self, node) for kit in self.kits], default=0)
        self.schedule(self.now_us + linger_us, self._stop_left, node)

    def _stop_left(self, node: SimNode) -> None:
        self.crash(node)

    def _drop_connections(self, node: SimNode) -> None:
        # The peers' kernels answer with a reset, which reaches them a little later.
        at_us = self.now_us + self._disconnect_detect_us
        for other_index in sorted(node.connected):
            other = self.nodes[other_index]
            other.connected.discard(node.index)
            if other.hears_connections:
                self._push(at_us, DISCONNECT, other_index, node.index, other.epoch)
        node.connected = set()

    def pause(self, node: SimNode) -> None:
        if node.up:
            node.paused = True
            node.disturbed_us = self.now_us

    def resume(self, node: SimNode) -> None:
        if not node.paused:
            return
        node.paused = False
        node.disturbed_us = self.now_us
        queued, node.pending = node.pending, []
        for kind, index, a, b in queued:
            self._push(self.now_us, kind, index, a, b)

    def release_held(self) -> None:
        """Lift every clog; held frames leave now, in the order they were sent."""
        for src, dst, protocol, frame, epoch in self.network.unclog(self.now_us):
            self._transmit(src, dst, protocol, frame, epoch)

    def set_gray(self, node: SimNode, delay_us: int) -> None:
        """Make ``node`` process every event ``delay_us`` late (0 restores it): a slow, "gray" peer."""
        if node.gray_delay_us != delay_us:
            node.gray_delay_us = delay_us
            node.disturbed_us = self.now_us

    def up_nodes(self) -> list[SimNode]:
        return [node for node in self.nodes if node.up]

    def node(self, peer_or_index: PeerId | int) -> SimNode:
        if isinstance(peer_or_index, int):
            return self.nodes[peer_or_index]
        return self.nodes[self.index_of[peer_or_index]]

    def log_fault(self, action: str, detail: str) -> None:
        self.fault_log.append((self.now_us / US_PER_S, action, detail))


def _hears_connections(component: Component) -> bool:
    cls = type(component)
    return (
        cls.on_peer_connected is not Component.on_peer_connected
        or cls.on_peer_disconnected is not Component.on_peer_disconnected
    )


def _freeze_gc(_: object) -> None:
    gc.freeze()


def _call_reply(call: tuple[ReplyHandler, SimNode, Reply]) -> None:
    handler, node, reply = call
    handler(node, reply)
