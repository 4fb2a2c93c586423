"""The discrete-event loop that drives real ``NodeCore`` objects on a virtual clock.

The heap holds plain tuples ``(time_us, seq, kind, node, a, b)``; ``seq`` is unique, so ties never
compare further and the order is fixed by the order events were scheduled. Each node's core is built by
``pyagent.composition.build_core`` (the daemon's builder: kits' components, then extra components, then
plugins'), and each Ready is carried out by ``pyagent.proto.interpret.Interpreter``, the one the daemon
uses, through a ``ProcessSink``: writes go to the node's disk model (``disk.py``), every ``Send`` is
encoded with the real codec, routed through the network model and decoded with the real
``FrameDecoder``, transfers go through the transfer model (``transfers.py``).

One seed makes one root generator; the network, faults, workload, churn, node seeds, placement, joins,
disks and transfers get their own generator derived from it in a fixed order, so adding a fault does not
shift the network's draws.
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
from pyagent.composition import CoreFactory, build_core
from pyagent.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from pyagent.proto.component import Component
from pyagent.proto.events import (
    Event,
    LocalRequest,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    Persisted,
    SendFailed,
    Started,
    TimerFired,
)
from pyagent.proto.interpret import Interpreter
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import CancelTransfer, Reply, Send, Transfer
from pyagent.proto.storage import WriteBatch
from pyagent.proto.types import PeerId
from pyagent.proto.wire import FrameDecoder, Limits, encode_frame
from pyagent_simnet import kits as kits_mod
from pyagent_simnet import scenario as scenario_mod
from pyagent_simnet.disk import Disk, DiskModel
from pyagent_simnet.kits import Kit
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
from pyagent_simnet.transfers import Transfers

US_PER_MS = 1_000
US_PER_S = 1_000_000

# Event kinds. An event a gray node has already waited for carries GRAY_WAITED added to its kind.
# CALL runs a function; the others happen to a node (and wait while it is paused or slowed). FEED steps an
# event into the node's core and NODE_CALL runs a function on its behalf, both only if the process that
# was running when they were scheduled (its epoch) still is.
DELIVER, TIMER, CONNECT, DISCONNECT, CALL, FEED, NODE_CALL = range(7)
GRAY_WAITED = 8
NO_NODE = -1
NEVER_US = -(1 << 62)

ReplyHandler = Callable[["SimNode", Reply], None]


class SimNode:
    """One simulated peer: its current process (core, interpreter; None while down) and what outlives a
    crash (its disk, its place in the network)."""

    __slots__ = (
        "connected",
        "core",
        "disk",
        "disturbed_us",
        "epoch",
        "gray_delay_us",
        "hears_connections",
        "hears_send_failures",
        "index",
        "interpreter",
        "left",
        "paused",
        "peer",
        "pending",
        "persist_queue",
        "protocols",
        "recv_bytes",
        "recv_msgs",
        "region",
        "sent_bytes",
        "sent_msgs",
        "sink",
        "started_us",
        "timers",
        "up",
        "up_us_before",
    )

    def __init__(self, index: int, peer: PeerId, region: int) -> None:
        self.index = index
        self.peer = peer
        self.region = region
        self.disk = Disk()
        self.core: NodeCore | None = None
        self.interpreter: Interpreter | None = None
        self.sink: ProcessSink | None = None
        self.up = False
        self.left = False  # gone for good (a churn or scenario leave): never restarted
        self.epoch = 0  # bumps at each crash, so frames and timers addressed to the old process die
        self.timers: dict[str, int] = {}  # key -> generation of the one live deadline
        self.paused = False
        self.pending: list[tuple[int, int, Any, Any]] = []
        self.gray_delay_us = 0
        self.connected: set[int] = set()
        # Whether any component reacts to PeerConnected/PeerDisconnected (SendFailed); when none does,
        # those events are not scheduled at all (membership ignores them, and a 1,000-peer mesh makes a
        # million of them).
        self.hears_connections = True
        self.hears_send_failures = False
        self.protocols: dict[str, Limits] = {}
        # Batches the disk made durable (or, unsynced, reportable) that the core has not been told of.
        self.persist_queue: list[WriteBatch] = []
        self.sent_msgs = self.sent_bytes = self.recv_msgs = self.recv_bytes = 0
        self.started_us = 0
        # Up-time of this node's earlier processes (each ended by a crash or a leave); see up_us().
        self.up_us_before = 0
        self.disturbed_us = (
            NEVER_US  # the last time a node fault (crash, start, pause, gray...) touched this node
        )

    def up_us(self, now_us: int) -> int:
        """How long this node's processes have been up in all, until ``now_us``: its sends divide by
        this, since its counters run on across restarts."""
        return self.up_us_before + (now_us - self.started_us if self.up else 0)


class ProcessSink:
    """How simnet carries out one process's effects (the ``Sink`` of ``proto.interpret``); the
    ``Interpreter`` decides when. Notices are collected and handed to the observers once per step."""

    __slots__ = ("node", "notices", "sim")

    def __init__(self, sim: Sim, node: SimNode) -> None:
        self.sim = sim
        self.node = node
        self.notices: list[object] = []

    def write(self, batch: WriteBatch) -> None:
        self.sim._write(self.node, batch)

    def send(self, send: Send) -> None:
        self.sim._send(self.node, send)

    def reply(self, reply: Reply) -> None:
        self.sim._reply(self.node, reply)

    def notice(self, notice: object) -> None:
        self.notices.append(notice)

    def set_timer(self, key: str, at_us: int) -> None:
        sim = self.sim
        now_us = sim.now_us
        seq = next(sim._seq)
        node = self.node
        node.timers[key] = seq
        heapq.heappush(sim._heap, (at_us if at_us > now_us else now_us, seq, TIMER, node.index, key, seq))

    def cancel_timer(self, key: str) -> None:
        self.node.timers.pop(key, None)

    def transfer(self, transfer: Transfer) -> None:
        self.sim.transfers.start(self.node, transfer)

    def cancel_transfer(self, cancel: CancelTransfer) -> None:
        self.sim.transfers.cancel(self.node, cancel)


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
        self.disk_rng = random.Random(root.getrandbits(64))
        self.transfer_rng = random.Random(root.getrandbits(64))
        self.network = Network(sc.network, self.network_rng, sc.source)
        self.disk_model = DiskModel(sc.disk, self.disk_rng, sc.source)
        self.trace = Trace(keep=sc.top["trace"])
        self.now_us = 0
        self._heap: list[tuple[int, int, int, int, Any, Any]] = []
        self._seq = itertools.count()
        self.nodes: list[SimNode] = []
        self.index_of: dict[PeerId, int] = {}
        self.kits: list[Kit] = [kits_mod.get(name, sc.source) for name in sc.top["components"]]
        self._extra = [kits_mod.load_factory(spec, sc.source) for spec in sc.top["extra_components"]]
        self._plugins = pluginhost.load_plugins() if sc.top["plugins"] else None
        self._connections = sc.top["connections"] == "on-first-send"
        self.disconnect_detect_us = int(sc.network["disconnect_detect_ms"] * US_PER_MS)
        self._replies: dict[int, tuple[SimNode, ReplyHandler]] = {}
        self._request_ids = itertools.count(1)
        self.counters: dict[str, int] = {
            "events": 0,
            "delivered": 0,
            "decode_errors": 0,
            "truncated_frames": 0,
            "step_rejected": 0,
            "timers_fired": 0,
            "writes": 0,
            "syncs": 0,
            "persisted": 0,
            "replies": 0,
            "notices": 0,
        }
        self.drops: dict[str, int] = {}
        self.fault_log: list[tuple[float, str, str]] = []
        # Kits are shared by every run; what one needs to keep for this run lives here, under its name.
        self.kit_state: dict[str, Any] = {}
        self.transfers = Transfers(self, sc.transfers, self.transfer_rng)
        self.observers: list[Observer] = []
        from pyagent_simnet import faults

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
            if kind == FEED:
                self._step(node, a)
            elif kind == NODE_CALL:
                fn, arg = a
                fn(arg)
            else:
                other = self.nodes[a].peer
                change = (
                    PeerConnected(other, (f"/sim/{other}",)) if kind == CONNECT else PeerDisconnected(other)
                )
                self._step(node, change)

    def _push(self, at_us: int, kind: int, index: int, a: Any, b: Any) -> int:
        seq = next(self._seq)
        heapq.heappush(self._heap, (at_us, seq, kind, index, a, b))
        return seq

    def feed(self, node: SimNode, at_us: int, event: Event, epoch: int | None = None) -> None:
        """Step ``event`` into ``node``'s core at ``at_us``, if the process of ``epoch`` (default: the
        current one) still runs then: how the shell's feedback (a failed send, a transfer's end) arrives."""
        self._push(max(at_us, self.now_us), FEED, node.index, event, node.epoch if epoch is None else epoch)

    def node_call(self, node: SimNode, at_us: int, fn: Callable[[Any], None], arg: Any, epoch: int) -> None:
        """Call ``fn(arg)`` at ``at_us`` on ``node``'s behalf: only if the process of ``epoch`` still runs,
        and later if it is paused or slowed, as any other event of the node."""
        self._push(max(at_us, self.now_us), NODE_CALL, node.index, (fn, arg), epoch)

    # ----- carrying out a NodeCore's effects

    def step_node(self, node: SimNode, event: Event) -> None:
        """Step ``event`` into a running node now and carry out what it returns."""
        self._step(node, event)

    def _step(self, node: SimNode, event: Event) -> None:
        core, interpreter, sink = node.core, node.interpreter, node.sink
        assert core is not None and interpreter is not None and sink is not None
        try:
            ready = core.step(event, self.now_us)
        except RemoteProtocolError:
            self.counters["step_rejected"] += 1
            return
        interpreter.carry_out(ready)
        if sink.notices:
            notices, sink.notices = sink.notices, []
            self.counters["notices"] += len(notices)
            for observer in self.observers:
                observer.on_notices(node, notices, self.now_us)

    def _reply(self, node: SimNode, reply: Reply) -> None:
        self.counters["replies"] += 1
        waiting = self._replies.pop(reply.request_id, None)
        if waiting is not None:
            # Deferred to its own event, so that a handler sending a new request never steps a core
            # while this step's effects are only half carried out.
            self.schedule(self.now_us, _call_reply, (waiting[1], node, reply))

    # ----- the disk (disk.py): writes become durable after an fsync, in order, and are reported

    def _write(self, node: SimNode, batch: WriteBatch) -> None:
        disk = node.disk
        try:
            disk.write(batch)
        except ValueError as exc:
            raise LocalProtocolError(f"{node.peer}: {exc}") from None
        self.counters["writes"] += 1
        if batch.sync:
            if disk.syncing:
                disk.sync_wanted = True  # group commit: the next fsync takes it
            else:
                self._start_sync(node)
            return
        if not disk.report_due:
            # It asked for no fsync: it is reported as soon as every batch before it is (one node event).
            disk.report_due = True
            self.node_call(node, self.now_us, self._report_unsynced, node, node.epoch)
        if not disk.writeback_due:
            disk.writeback_due = True
            at_us = self.now_us + self.disk_model.writeback_us
            self.schedule(at_us, self._disk_writeback, (node, disk.generation))

    def _start_sync(self, node: SimNode) -> None:
        disk = node.disk
        disk.start_sync()
        self.counters["syncs"] += 1
        at_us = self.now_us + self.disk_model.sample_sync_us(self.disk_model.rng)
        self.schedule(at_us, self._disk_synced, (node, disk.generation))

    def _disk_synced(self, arg: tuple[SimNode, int]) -> None:
        node, generation = arg
        disk = node.disk
        if generation != disk.generation:
            return  # the machine lost power meanwhile: that fsync never completed
        done = disk.synced()
        self.trace.add(b"%d S %d %d\n" % (self.now_us, node.index, len(done)))
        if disk.sync_wanted:
            self._start_sync(node)
        self._report(node, done)

    def _report_unsynced(self, node: SimNode) -> None:
        disk = node.disk
        disk.report_due = False
        node.persist_queue.extend(disk.reportable())
        self._deliver_persisted(node)

    def _disk_writeback(self, arg: tuple[SimNode, int]) -> None:
        node, generation = arg
        disk = node.disk
        if generation != disk.generation:
            return
        disk.writeback_due = False
        if len(disk.pending) > disk.syncing:
            if disk.syncing:
                disk.sync_wanted = True
            else:
                self._start_sync(node)

    def _report(self, node: SimNode, batches: list[WriteBatch]) -> None:
        if batches and node.up:
            # One queue per process, drained in order by whichever of its events comes first: a slowed
            # node may see its events late, never Persisted out of order.
            node.persist_queue.extend(batches)
            self.node_call(node, self.now_us, self._deliver_persisted, node, node.epoch)

    def _deliver_persisted(self, node: SimNode) -> None:
        batches, node.persist_queue = node.persist_queue, []
        if not batches:
            return
        interpreter = node.interpreter
        assert interpreter is not None
        interpreter.persisted(len(batches))
        self.counters["persisted"] += len(batches)
        for batch in batches:
            if not node.up:
                return
            self._step(node, Persisted(batch.component, batch.tag))

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
            if node.hears_send_failures:
                self.feed(
                    node, self.now_us, SendFailed(send.peer, send.protocol, "unreachable: unknown peer")
                )
            return
        net = self.network
        if node.hears_send_failures and not self.nodes[dst].up:
            # A dial to a dead peer fails once its address stops answering; its host, still up, refuses
            # the connection unless a partition drops the refusal too.
            refused = not (net.cut and net.blocked(src, dst))
            failed = SendFailed(send.peer, send.protocol, "unreachable: peer down", nothing_listens=refused)
            self.feed(node, self.now_us + self.disconnect_detect_us, failed)
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
        # The core is built exactly as the daemon builds one: every component gets its own generator from
        # (node seed, component name), its config table and its storage namespace through one context.
        seed = self.node_seed_rng.getrandbits(64)
        factories: list[CoreFactory] = [f for kit in self.kits for f in kit.components(self, node)]
        factories.extend(self._extra)
        disk = node.disk
        try:
            core = build_core(
                node.peer,
                seed,
                storage_for=lambda component: disk.visible.reader(component),
                core_factories=factories,
                plugins=self._plugins,
                config=self.scenario.config,
            )
        except ConfigError as exc:  # a component refused its [config.<name>] table: the user's input
            raise ConfigError(f"{self.scenario.source}: {exc}") from None
        sink = ProcessSink(self, node)
        node.core = core
        node.sink = sink
        node.interpreter = Interpreter(sink)
        node.hears_connections = any(
            _hears(c, "on_peer_connected", "on_peer_disconnected") for c in core.components
        )
        node.hears_send_failures = any(_hears(c, "on_send_failed") for c in core.components)
        node.protocols = core.protocols
        node.up = True
        node.started_us = self.now_us
        if node.epoch:
            node.disturbed_us = self.now_us  # a restart: rumours about the old process may still be around
        for observer in self.observers:
            observer.on_node_up(node)
        self._step(node, Started(recovered=not disk.visible.is_empty()))
        for kit in self.kits:
            if node.up:
                kit.on_start(self, node)

    def inject(self, fault: Mapping[str, Any]) -> None:
        """Apply one fault now, given as a scenario's ``[[faults]]`` table (``at_s`` is ignored)."""
        checked = scenario_mod.from_dict({"faults": [dict(fault)]}, "<inject>").faults[0]
        self.faults.apply(checked)

    def set_param(self, key: str, value: float) -> None:
        """Change a network or transfer parameter now (``scenario.SETTABLE_AT_RUNTIME``)."""
        if key == "transfer_bandwidth_bps":
            self.transfers.set_bandwidth(int(value))
        else:
            self.network.set_param(key, value)

    def restart(self, node: SimNode) -> None:
        """Start a down node again: a new process whose core recovers what its disk kept."""
        self._start(node)

    def crash(self, node: SimNode, wipe: bool = False) -> None:
        """Stop ``node``'s process at once, as a power loss would: its disk keeps only what an fsync made
        durable (nothing with ``wipe``), and its interpreter and every effect it held are gone."""
        if not node.up:
            return
        node.up = False
        node.up_us_before += self.now_us - node.started_us
        node.disturbed_us = self.now_us
        node.core = None
        node.interpreter = None
        node.sink = None
        node.persist_queue = []
        node.timers = {}
        node.epoch += 1
        node.paused = False
        node.pending = []
        node.gray_delay_us = 0
        node.disk.crash(wipe)
        self.transfers.node_down(node)
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
        at_us = self.now_us + self.disconnect_detect_us
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


def _hears(component: Component, *handlers: str) -> bool:
    """Whether ``component`` overrides any of ``handlers``: if none does, the events are not made."""
    cls = type(component)
    return any(getattr(cls, name) is not getattr(Component, name) for name in handlers)


def _freeze_gc(_: object) -> None:
    gc.freeze()


def _call_reply(call: tuple[ReplyHandler, SimNode, Reply]) -> None:
    handler, node, reply = call
    handler(node, reply)
