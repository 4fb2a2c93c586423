"""The sharded KV store: one Raft group per shard, all driven by one multi-Raft driver.

This component is the glue between three pure parts: the multi-Raft driver in the Rust core
(``pyagent._core.MultiRaft``: every group's Raft, one Ready for all), the shard state machines
(``statemachine``) and placement (``placement``). Handlers only step the driver; ``on_flush``, after a
burst of events (``NodeCore.flush``), calls ``_drain``, which turns the driver's Ready into ours:

- every group's log appends and hard states, plus the state machines' applied writes, go into ONE
  write batch (one fsync for the whole node: group commit);
- a leader's appends are sent at once (``send_before_persist``); votes and acknowledgements wait for the
  batch (``send``); answers with a result leave at once, since what they report is committed;
- snapshots stream as transfers.

Requests reach the leader of their shard: a node that is not the leader forwards the request to the
peer it believes leads, following ``not_leader`` hints (``requests``).

Idle shards go quiet: the driver stops ticking a group whose replicas all hold its whole log, so it sends
nothing until a request or a peer's message wakes it. A quiet follower runs no election timer, so this
component follows membership (``_follow_membership``, every tick) and tells the driver which peers are down
or back; the driver wakes every group such a peer is in.

Who creates the groups: the node that starts a new mesh bootstraps every shard's group with itself as
the only voter (``FoundShards``). The leader of each group then adds the replicas that placement names,
as learners first, promoting each once it has caught up, and hands leadership to the placement's
preferred peer. Nodes that join create a group's replica when its leader first contacts them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from pyagent._core import MultiRaft, NotLeaderError, RaftReady
from pyagent.errors import RemoteProtocolError
from pyagent.proto.component import Component
from pyagent.proto.events import (
    LocalRequest,
    MessageReceived,
    SendFailed,
    Started,
    TransferChunk,
    TransferDone,
    TransferEvent,
    TransferFailed,
    TransferReceived,
)
from pyagent.proto.kv import messages
from pyagent.proto.kv.config import Config
from pyagent.proto.kv.ops import (
    COMMAND_TYPES,
    Cas,
    Command,
    Delete,
    Get,
    ListShards,
    Put,
    Scan,
    Session,
    Write,
    check_command,
    encode_entry,
)
from pyagent.proto.kv.placement import Candidate, capacity_weight, node_id_of, place, shard_of, zone_of
from pyagent.proto.kv.requests import (
    Local,
    Origin,
    ReadBatch,
    Remote,
    Requests,
    Waiting,
    answer_value,
    is_read,
)
from pyagent.proto.kv.statemachine import (
    SNAPSHOT_BYTES_MAX,
    BadEntry,
    ShardState,
    Snapshot,
    decode_snapshot,
)
from pyagent.proto.membership.records import MemberRecord, State, addrs_of
from pyagent.proto.ready import BytesSource, Ready, Reply, Send, SetTimer, Transfer
from pyagent.proto.storage import LogAppend, LogCompact, LogTruncate, Op, StorageReader, WriteBatch
from pyagent.proto.storage import Put as PutKey
from pyagent.proto.types import US_PER_MS, PeerId, Rng

NAME = "kv"
_SHARDS_KEY = b"m/shards"
_INCOMING_SNAPSHOTS_MAX = 4

log = logging.getLogger(__name__)


class MembersView(Protocol):
    """What the KV store needs of membership: who is in the mesh, their state, addresses and metadata."""

    def members(self) -> list[MemberRecord]: ...

    def member(self, peer: PeerId) -> MemberRecord | None: ...


@dataclass(frozen=True, slots=True)
class FoundShards:
    """Local command from the shell when this node starts a new mesh: bootstrap every shard's group with
    this node as its only voter. A node that already holds groups ignores it. The reply value is the
    number of groups created."""


@dataclass(frozen=True, slots=True)
class ShardStatus:
    shard: int
    role: str
    term: int
    leader: PeerId | None
    commit: int
    applied: int
    voters: tuple[PeerId, ...]
    learners: tuple[PeerId, ...]
    # A leader's largest replica lag in entries (0 elsewhere).
    lag: int
    # Why the shard is not as placement wants it, for the operator (empty when it is).
    warning: str
    # This replica is idle and not ticking: its group sends nothing until work or membership news wakes it.
    quiet: bool


class RaftKv(Component):
    name: ClassVar[str] = NAME
    protocol_id = messages.PROTOCOL_ID
    limits = messages.LIMITS
    command_types = (*COMMAND_TYPES, FoundShards)

    def __init__(
        self,
        local_peer: PeerId,
        rng: Rng,
        config: Config,
        storage: StorageReader,
        members: MembersView,
        hooks: Any = None,
        driver_factory: Callable[..., MultiRaft] = MultiRaft,
    ) -> None:
        self.local_peer = local_peer
        self.node_id = node_id_of(local_peer)
        self.config = config
        self._storage = storage
        self._members = members
        # The plugins' pyagent_kv_propose / pyagent_kv_committed (hookspecs.py), or None.
        self._hooks = hooks
        self.driver = driver_factory(
            self.node_id,
            rng.getrandbits(64),
            election_tick=config.election_ticks,
            heartbeat_tick=config.heartbeat_ticks,
            group_id_max=config.shards,
        )
        self.shards: dict[int, ShardState] = {}
        self._shard_count = config.shards
        self._requests = Requests(config.parked_requests_max)
        self._leaders: dict[int, int] = {}  # shard -> leader node id, as this node last heard
        self._peers: dict[int, PeerId] = {self.node_id: local_peer}
        # Raft nodes membership holds suspect, dead or gone, as last told to the driver.
        self._down: set[int] = set()
        # This node's own session, for writes whose client brought none (the CLI, forwarded requests).
        self._client = rng.getrandbits(63) | 1
        self._next_seq = 1
        self._own_in_flight: set[int] = set()
        # Snapshots: this node's latest capture per group (index, blob); outgoing transfers; incoming
        # blobs being assembled and the ones staged for the driver to install.
        self._captures: dict[int, tuple[int, bytes]] = {}
        self._outgoing: dict[int, tuple[int, int]] = {}
        self._next_transfer = 1
        self._incoming: dict[tuple[PeerId, int], bytearray] = {}
        self._staged: dict[int, Snapshot] = {}
        # Incoming transfers refused part-way: their remaining chunks are ignored (oldest forgotten).
        self._refused: dict[tuple[PeerId, int], None] = {}
        self._conf_pending_until: dict[int, int] = {}
        self._last_balance_us: dict[int, int] = {}
        self._since_compact: dict[int, int] = {}
        self._next_placement_us = 0
        # Exported as pyagent_kv_<name>_total (node/metrics.py) and shown by `pyagent shards`.
        self.counters: dict[str, int] = dict.fromkeys(
            [
                "entries_applied",
                "proposals",
                "reads",
                "forwards",
                "leader_elected",
                "snapshots_sent",
                "snapshots_send_failed",
                "snapshots_installed",
                "compactions",
            ],
            0,
        )

    # --- events ---------------------------------------------------------------------------------------

    def on_started(self, event: Started, now_us: int, out: Ready) -> None:
        stored = self._storage.get(_SHARDS_KEY)
        if stored is not None:
            self._shard_count = int.from_bytes(stored, "big")
            if self._shard_count != self.config.shards:
                log.warning(
                    "this node's mesh was created with %d shards; [kv] shards = %d is ignored",
                    self._shard_count,
                    self.config.shards,
                )
        self._recover()
        out.timers.append(SetTimer(self.timer_key("tick"), now_us + self.config.tick_ms * US_PER_MS))

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        out.timers.append(SetTimer(self.timer_key("tick"), now_us + self.config.tick_ms * US_PER_MS))
        self._follow_membership()
        self.driver.tick()
        for waiting in self._requests.expired(now_us):
            self._fail(waiting, "unavailable", "no leader of this shard answered in time; retry", out)
        for waiting in self._requests.stalled_forwards(now_us):
            self._route(waiting, now_us, out)
        self._retry_parked(now_us, out)
        for shard in list(self._requests.read_batches):
            if self._requests.stale_read_batches(shard, now_us - self.config.read_index_retry_ms * US_PER_MS):
                self._issue_reads(shard, now_us, out)
        if now_us >= self._next_placement_us:
            self._next_placement_us = now_us + self.config.placement_interval_ms * US_PER_MS
            self._reconcile(now_us)

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        message = messages.decode(event.message)
        match message:
            case messages.RaftFrame(shards=shards, frame=frame):
                if shards != self._shard_count:
                    raise RemoteProtocolError(
                        f"peer's mesh has {shards} shards, this node's {self._shard_count}: different meshes"
                    )
                self._learn_peer(event.peer)
                try:
                    self.driver.step(node_id_of(event.peer), frame)
                except ValueError as exc:
                    raise RemoteProtocolError(f"raft frame: {exc}") from None
            case messages.Forward(forward_id=forward_id, command=command):
                self._execute(Remote(event.peer, forward_id), command, now_us, out)
            case messages.ForwardReply():
                self._on_forward_reply(event.peer, message, now_us, out)

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        command = request.command
        if isinstance(command, FoundShards):
            out.apply.append(Reply(request.request_id, self._found(out)))
        elif isinstance(command, ListShards):
            out.apply.append(Reply(request.request_id, self.shard_statuses()))
        else:
            assert isinstance(command, Put | Delete | Cas | Get | Scan)
            try:
                check_command(command)
            except ValueError as exc:
                out.apply.append(Reply.fail(request.request_id, "invalid", str(exc)))
                return
            self._execute(Local(request.request_id), self._with_session(command), now_us, out)

    def on_send_failed(self, event: SendFailed, now_us: int, out: Ready) -> None:
        """The peer is unreachable: requests forwarded to it go elsewhere now, not at their hop deadline."""
        for waiting in self._requests.stalled_forwards(now_us, event.peer):
            self._route(waiting, now_us, out)

    def on_persisted(self, tag: int, now_us: int, out: Ready) -> None:
        if tag:
            self.driver.on_persisted(tag)

    def on_flush(self, now_us: int, out: Ready) -> None:
        # Every handler only steps the driver; its Ready is collected here, once for a whole burst of
        # events, so that many messages and requests share one write batch and one frame per peer.
        self._drain(now_us, out)

    def on_transfer(self, event: TransferEvent, now_us: int, out: Ready) -> None:
        match event:
            case TransferChunk(peer=peer, transfer_id=tid, offset=offset, data=data, size=size):
                # A snapshot arrives whole before it is used; until then it is only bytes in memory.
                self._refusing((peer, tid), lambda: self._on_snapshot_chunk((peer, tid), offset, data, size))
            case TransferReceived(peer=peer, transfer_id=tid):
                blob = self._incoming.pop((peer, tid), None)
                if (peer, tid) in self._refused:
                    del self._refused[(peer, tid)]
                else:
                    self._refusing((peer, tid), lambda: self._on_snapshot_received(peer, blob))
            case TransferDone(transfer_id=tid) | TransferFailed(transfer_id=tid):
                sent = self._outgoing.pop(tid, None)
                if sent is not None:
                    done = isinstance(event, TransferDone)
                    self.counters["snapshots_sent" if done else "snapshots_send_failed"] += 1
                    self.driver.report_snapshot(sent[0], sent[1], done)
            case _:
                key = (getattr(event, "peer", ""), event.transfer_id)
                self._incoming.pop(key, None)
                self._refused.pop(key, None)

    def _refusing(self, key: tuple[PeerId, int], handle: Callable[[], None]) -> None:
        """Run ``handle`` on a peer's incoming snapshot; if it refuses the bytes, forget the transfer
        and ignore the rest of it, then raise (the shell logs the peer's error)."""
        if key in self._refused:
            return
        try:
            handle()
        except RemoteProtocolError:
            self._incoming.pop(key, None)
            self._refused[key] = None
            while len(self._refused) > _INCOMING_SNAPSHOTS_MAX * 4:
                del self._refused[next(iter(self._refused))]
            raise

    # --- founding and recovery ------------------------------------------------------------------------

    def _found(self, out: Ready) -> int:
        if self.driver.groups():
            return 0
        for shard in range(self._shard_count):
            self.driver.bootstrap_group(shard, [self.node_id])
            self.shards[shard] = ShardState(shard)
        out.writes.append(WriteBatch(NAME, (PutKey(_SHARDS_KEY, self._shard_count.to_bytes(4, "big")),)))
        return self._shard_count

    def _recover(self) -> None:
        kvs = self._storage.scan(b"r/", b"r0", 1 << 62)
        logs: dict[str, tuple[int, list[bytes]]] = {}
        for shard in range(self._shard_count):
            state = ShardState(shard)
            state.load(self._storage)
            name = f"r/{shard}"
            bounds = self._storage.log_bounds(name)
            if bounds is not None:
                logs[name] = (bounds[0], self._storage.log_entries(name, bounds[0], bounds[1] + 1))
            if state.applied or bounds is not None:
                self.shards[shard] = state
        if not kvs:
            return
        # A shard that never applied anything passes no applied index: the driver then starts it at its
        # snapshot's index, which is where its state (empty) stands.
        applied = {shard: state.applied for shard, state in self.shards.items() if state.applied}
        for group in self.driver.recover(kvs, logs, applied):
            self.shards.setdefault(group, ShardState(group))

    # --- requests -------------------------------------------------------------------------------------

    def _with_session(self, command: Command) -> Command:
        """Give a write without a client session this node's own, so its retries are exactly-once too."""
        if not isinstance(command, Put | Delete | Cas) or command.session is not None:
            return command
        seq = self._next_seq
        self._next_seq += 1
        ack = min(self._own_in_flight, default=seq)
        self._own_in_flight.add(seq)
        session = Session(self._client, seq, ack)
        match command:
            case Put(key=key, value=value):
                return Put(key, value, session)
            case Delete(key=key):
                return Delete(key, session)
            case Cas(key=key, expected=expected, new=new):
                return Cas(key, expected, new, session)
        raise AssertionError(command)

    def _shard_for(self, command: Command) -> int:
        if isinstance(command, Scan):
            return command.shard if command.shard is not None else shard_of(command.prefix, self._shard_count)
        return shard_of(command.key, self._shard_count)

    def _execute(self, origin: Origin, command: Command, now_us: int, out: Ready) -> None:
        shard = self._shard_for(command)
        if shard >= self._shard_count:
            self._answer_error(origin, "invalid", f"shard {shard} does not exist", {}, out)
            return
        deadline = now_us + self.config.request_timeout_ms * US_PER_MS
        self._route(Waiting(origin, command, shard, deadline), now_us, out)

    def _route(self, waiting: Waiting, now_us: int, out: Ready) -> None:
        """Serve ``waiting`` here if this node leads its shard (or it is a stale read of a local
        replica), else forward it toward the leader, else park it until a leader is known."""
        command, shard = waiting.command, waiting.shard
        state = self.shards.get(shard)
        if isinstance(command, Get | Scan) and command.stale and state is not None:
            self._answer_read(waiting, state, out)
            return
        leader = self._leaders.get(shard)
        if leader == self.node_id:
            if is_read(command):
                self._requests.queue_read(waiting)
                if not self._requests.read_in_flight(shard):
                    self._issue_reads(shard, now_us, out)
            else:
                self._propose(waiting, out)
            return
        if isinstance(waiting.origin, Remote):
            # Only a request's origin routes it; a peer that is not the leader answers with what it knows.
            # (Peers forwarding to each other while neither knows the leader would multiply the request.)
            self._fail(waiting, "not_leader", "this peer does not lead the shard", out)
            return
        target = self._peer_of(leader) if leader else None
        if target is None or target in waiting.tried:
            target = self._next_candidate(waiting)
        if target is None:
            self._park(waiting, out)
            return
        waiting.tried.append(target)
        forward_id = self._requests.forward(waiting, now_us + self.config.forward_timeout_ms * US_PER_MS)
        self.counters["forwards"] += 1
        out.send.append(self._send(target, messages.encode_forward(forward_id, command)))

    def _next_candidate(self, waiting: Waiting) -> PeerId | None:
        """Where to send a request whose leader this node does not know: the shard's placement, then
        every other live member, each tried once per request."""
        if len(waiting.tried) >= messages.HOPS_MAX or waiting.shard in self.shards:
            return None
        candidates = self._candidates()
        order = place(waiting.shard, candidates, len(candidates))
        for peer in order:
            if peer != self.local_peer and peer not in waiting.tried:
                return peer
        return None

    def _park(self, waiting: Waiting, out: Ready) -> None:
        if self._requests.is_full():
            self._fail(waiting, "busy", "too many requests waiting for a leader; retry later", out)
            return
        waiting.tried.clear()
        self._requests.parked.append(waiting)

    def _retry_parked(self, now_us: int, out: Ready) -> None:
        parked, self._requests.parked = self._requests.parked, type(self._requests.parked)()
        for waiting in parked:
            self._route(waiting, now_us, out)

    def _propose(self, waiting: Waiting, out: Ready) -> None:
        command = waiting.command
        assert isinstance(command, Put | Delete | Cas) and command.session is not None
        try:
            write = self._filtered(waiting.shard, command)
        except ValueError as exc:
            self._answer_error(waiting.origin, "refused", str(exc), {}, out)
            return
        try:
            self.driver.propose(waiting.shard, encode_entry(write))
        except NotLeaderError:
            # A leadership transfer is under way. Park until Raft's role change names the new leader,
            # or the transfer aborts and this node proposes again. (Routing to the named target early
            # would stick if the transfer aborted: raft-rs reports no role change then.)
            self._park(waiting, out)
            return
        self._requests.propose((command.session.client, command.session.seq), waiting.shard, waiting)
        self.counters["proposals"] += 1

    def _filtered(self, shard: int, write: Write) -> Write:
        """The write as the plugins' ``pyagent_kv_propose`` leaves it (``ValueError``: refused)."""
        if self._hooks is None:
            return write
        replaced = self._hooks.pyagent_kv_propose(shard=shard, write=write)
        if replaced is None:
            return write
        if not isinstance(replaced, Put | Delete | Cas):
            raise ValueError(f"a plugin replaced the write with {type(replaced).__name__}, not a write")
        check_command(replaced)
        # The session stays the client's: it is how the client's retries and its reply find the write.
        return dataclasses.replace(replaced, session=write.session)

    def _issue_reads(self, shard: int, now_us: int, out: Ready) -> None:
        batch: ReadBatch | None = self._requests.start_read_batch(shard, now_us)
        if batch is None:
            return
        self.counters["reads"] += len(batch.reads)
        try:
            self.driver.read_index(shard, batch.ctx)
        except NotLeaderError:
            for waiting in self._requests.drop_reads(shard):
                self._park(waiting, out)

    def _on_forward_reply(self, peer: PeerId, reply: messages.ForwardReply, now_us: int, out: Ready) -> None:
        waiting = self._requests.forwards.get(reply.forward_id)
        if waiting is None or not waiting.tried or waiting.tried[-1] != peer:
            return  # late, or not from the peer it was sent to
        del self._requests.forwards[reply.forward_id]
        if reply.error is None:
            self._answer(waiting, reply.value, out)
            return
        code, text, data = reply.error
        if code in ("not_leader", "unavailable"):
            hint = data.get("leader_hint")
            # A hint never overrides this node's own leadership, which only Raft's role changes end.
            leading = self._leaders.get(waiting.shard) == self.node_id
            if isinstance(hint, str) and hint != self.local_peer and not leading:
                self._leaders[waiting.shard] = node_id_of(hint)
                self._peers.setdefault(node_id_of(hint), hint)
            self._route(waiting, now_us, out)
            return
        self._answer_error(waiting.origin, code, text, data, out)

    # --- answers -------------------------------------------------------------------------------------

    def _answer_read(self, waiting: Waiting, state: ShardState, out: Ready) -> None:
        command = waiting.command
        if isinstance(command, Get):
            self._answer(waiting, state.data.get(command.key), out)
        else:
            assert isinstance(command, Scan)
            self._answer(waiting, answer_value(command, state.scan(command.prefix, command.limit)), out)

    def _finished(self, command: Command) -> None:
        session = command.session if isinstance(command, Put | Delete | Cas) else None
        if session is not None and session.client == self._client:
            self._own_in_flight.discard(session.seq)

    def _answer(self, waiting: Waiting, value: Any, out: Ready) -> None:
        """Answer with a result, at once: every result comes from applied state, which Raft committed
        (it is on a quorum's disks, whatever this node's own batch still holds), or from the peer that
        served the request. Waiting for this node's batch would make each answer wait for the next
        fsync of unrelated new entries."""
        command = waiting.command
        self._finished(command)
        if isinstance(command, Cas) and isinstance(value, list):
            value = tuple(value)
        match waiting.origin:
            case Local(request_id=rid):
                out.apply_before_persist.append(Reply(rid, value))
            case Remote(peer=peer, forward_id=fid):
                reply = messages.ForwardReply(fid, value=value)
                out.send_before_persist.append(self._send(peer, messages.encode_forward_reply(reply)))

    def _fail(self, waiting: Waiting, code: str, text: str, out: Ready) -> None:
        self._finished(waiting.command)
        data: dict[str, Any] = {}
        leader = self._peers.get(self._leaders.get(waiting.shard, 0))
        if code == "not_leader" and leader is not None:
            data["leader_hint"] = leader
        self._answer_error(waiting.origin, code, f"shard {waiting.shard}: {text}", data, out)

    def _answer_error(self, origin: Origin, code: str, text: str, data: dict[str, Any], out: Ready) -> None:
        match origin:
            case Local(request_id=rid):
                out.apply.append(Reply.fail(rid, code, text, **data))
            case Remote(peer=peer, forward_id=fid):
                reply = messages.ForwardReply(fid, error=(code, text, data))
                out.send.append(self._send(peer, messages.encode_forward_reply(reply)))

    # --- the driver's Ready ---------------------------------------------------------------------------

    def _drain(self, now_us: int, out: Ready) -> None:
        while self.driver.has_ready():
            ready = self.driver.ready()
            ops = [storage_op(write) for write in ready.writes]
            self._on_roles(ready, out)
            for group in ready.created:
                self.shards.setdefault(group, ShardState(group))
            if ready.created and self._storage.get(_SHARDS_KEY) is None:
                ops.append(PutKey(_SHARDS_KEY, self._shard_count.to_bytes(4, "big")))
            for group, index in ready.snapshot_installed:
                ops += self._install_snapshot(group, index)
            for node, frame in ready.send_now:
                self._send_frame(node, frame, out.send_before_persist)
            for node, frame in ready.send_after_persist:
                self._send_frame(node, frame, out.send)
            ops += self._apply(ready, out)
            for group, ctx, index in ready.read_states:
                self._requests.read_answered(group, ctx, index)
            self._answer_due_reads(out)
            for group in list(self._requests.queued_reads):
                if self._leaders.get(group) == self.node_id and not self._requests.read_in_flight(group):
                    self._issue_reads(group, now_us, out)
            for group in ready.needs_snapshot:
                self._capture(group)
            for group, to, message in ready.snapshots_out:
                self._send_snapshot(group, to, message, out)
            if ops:
                # Applied writes need no fsync of their own: they are rebuilt from the log after a
                # crash, and the applied index travels with them. Raft's own writes say if they need one.
                out.writes.append(WriteBatch(NAME, tuple(ops), sync=ready.must_sync, tag=ready.token))

    def _on_roles(self, ready: RaftReady, out: Ready) -> None:
        for group, role, _term, leader in ready.roles:
            was_leader = self._leaders.get(group) == self.node_id
            if leader:
                self._leaders[group] = leader
            else:
                self._leaders.pop(group, None)
            if role == "leader" and not was_leader:
                self.counters["leader_elected"] += 1
            if was_leader and role != "leader":
                for waiting in self._requests.drop_proposals(group) + self._requests.drop_reads(group):
                    self._fail(waiting, "not_leader", "the leader stepped down; retry", out)

    def _apply(self, ready: RaftReady, out: Ready) -> list[Op]:
        ops: list[Op] = []
        applied_writes: dict[int, list[Write]] = {}
        for group, index, _term, kind, data in ready.committed:
            state = self.shards.setdefault(group, ShardState(group))
            writes = applied_writes.setdefault(group, [])
            if kind == 1:
                state.applied = index
                ops += [storage_op(write) for write in self.driver.apply_conf_change(group, data)]
                self._conf_pending_until.pop(group, None)
                continue
            applied = state.apply(index, data)
            ops += applied.ops
            if applied.write is not None:
                writes.append(applied.write)
            if applied.session is not None:
                self._resolve_proposal(applied.session, applied.result, out)
        for group, writes in sorted(applied_writes.items()):
            state = self.shards[group]
            ops.append(state.applied_op())
            self.driver.advance_apply(group, state.applied)
            ops += self._maybe_compact(group, state)
            self.counters["entries_applied"] += len(writes)
            if writes and self._hooks is not None:
                self._hooks.pyagent_kv_committed(shard=group, index=state.applied, writes=writes)
        return ops

    def _resolve_proposal(self, session: Session, result: object, out: Ready) -> None:
        for waiting in self._requests.proposed((session.client, session.seq)):
            if isinstance(result, BadEntry):
                self._answer_error(waiting.origin, "invalid", result.reason, {}, out)
            else:
                self._answer(waiting, result, out)

    def _answer_due_reads(self, out: Ready) -> None:
        for shard in list(self._requests.read_batches):
            state = self.shards.get(shard)
            if state is None:
                continue
            for waiting in self._requests.reads_due(shard, state.applied):
                self._answer_read(waiting, state, out)

    def _maybe_compact(self, group: int, state: ShardState) -> list[Op]:
        count = self._since_compact.get(group, 0) + 1
        if count < self.config.compact_after_entries:
            self._since_compact[group] = count
            return []
        self._since_compact[group] = 0
        self.counters["compactions"] += 1
        self._capture(group)
        return [storage_op(write) for write in self.driver.compact(group, state.applied)]

    # --- snapshots ------------------------------------------------------------------------------------

    def _capture(self, group: int) -> None:
        state = self.shards.setdefault(group, ShardState(group))
        self._captures[group] = (state.applied, state.snapshot())
        self.driver.register_snapshot(group, state.applied)

    def _send_snapshot(self, group: int, to: int, message: bytes, out: Ready) -> None:
        peer = self._peer_of(to)
        capture = self._captures.get(group)
        if peer is None or capture is None:
            self.driver.report_snapshot(group, to, False)
            return
        transfer_id = self._next_transfer
        self._next_transfer += 1
        self._outgoing[transfer_id] = (group, to)
        source = BytesSource(messages.snapshot_blob(group, message, capture[1]))
        out.transfers.append(Transfer(peer, self.protocol_id, transfer_id, source, addrs=self._addrs(peer)))

    def _on_snapshot_chunk(self, key: tuple[PeerId, int], offset: int, data: bytes, size: int) -> None:
        if size > SNAPSHOT_BYTES_MAX + (1 << 20):
            raise RemoteProtocolError(f"a snapshot of {size} bytes is over the limit")
        buffer = self._incoming.get(key)
        if buffer is None:
            if len(self._incoming) >= _INCOMING_SNAPSHOTS_MAX:
                raise RemoteProtocolError("too many snapshots arriving at once")
            buffer = self._incoming[key] = bytearray()
        if offset != len(buffer):
            raise RemoteProtocolError(f"snapshot chunk at {offset}, expected {len(buffer)}")
        buffer += data

    def _on_snapshot_received(self, peer: PeerId, blob: bytearray | None) -> None:
        if blob is None:
            return
        group, message, state = messages.split_snapshot_blob(bytes(blob))
        if group >= self._shard_count:
            raise RemoteProtocolError(f"snapshot for group {group}, beyond {self._shard_count} shards")
        # Decoded and checked whole before Raft sees the message: once raft-rs accepts a snapshot, its
        # install is in the next Ready's batch and cannot be refused any more.
        snapshot = decode_snapshot(state)
        try:
            self.driver.step_snapshot(node_id_of(peer), group, message, snapshot.index)
        except ValueError as exc:
            raise RemoteProtocolError(f"snapshot message: {exc}") from None
        self._staged[group] = snapshot

    def _install_snapshot(self, group: int, index: int) -> list[Op]:
        snapshot = self._staged.pop(group)  # the driver installs only what step_snapshot was given
        assert snapshot.index == index, "step_snapshot checked the index"
        self.counters["snapshots_installed"] += 1
        return self.shards.setdefault(group, ShardState(group)).restore(snapshot)

    # --- placement ------------------------------------------------------------------------------------

    def _candidates(self) -> list[Candidate]:
        """Live members that run the KV store, this node included."""
        out = []
        for record in self._members.members():
            if record.peer != self.local_peer and record.state is not State.ALIVE:
                continue
            metadata = record.metadata
            if record.peer != self.local_peer and self.protocol_id not in metadata.protocols:
                continue
            self._peers.setdefault(node_id_of(record.peer), record.peer)
            weight = capacity_weight(metadata.cpu_cores, metadata.memory_bytes)
            out.append(Candidate(record.peer, weight, zone_of(metadata.hardware_tags)))
        if not any(c.peer == self.local_peer for c in out):
            out.append(Candidate(self.local_peer))
        return out

    def _reconcile(self, now_us: int) -> None:
        """For each group this node leads: add the replicas placement wants (learner first, then voter once
        caught up), and hand leadership to the placement's preferred peer once it is a caught-up voter."""
        led = [g for g, leader in self._leaders.items() if leader == self.node_id]
        if not led:
            return
        candidates = self._candidates()
        for group in led:
            status = self._status(group)
            if status["role"] != "leader" or self._conf_pending_until.get(group, 0) > now_us:
                continue
            wanted = place(group, candidates, self.config.replicas)
            change = _next_conf_change(status, [node_id_of(p) for p in wanted], self.config.replicas)
            if change is not None:
                try:
                    self.driver.propose_conf_change(group, [change])
                except (NotLeaderError, ValueError):
                    continue  # leadership moving, or an earlier change not applied yet: next round
                self._conf_pending_until[group] = now_us + self.config.request_timeout_ms * US_PER_MS
                continue
            self._balance_leader(group, status, node_id_of(wanted[0]), now_us)

    def _balance_leader(self, group: int, status: dict[str, Any], preferred: int, now_us: int) -> None:
        if preferred == self.node_id or preferred not in status["voters"]:
            return
        interval_us = self.config.leader_balance_interval_ms * US_PER_MS
        if now_us - self._last_balance_us.get(group, -interval_us) < interval_us:
            return
        if status["progress"].get(preferred, 0) < status["last_index"]:
            return
        self._last_balance_us[group] = now_us
        with contextlib.suppress(NotLeaderError):
            self.driver.transfer_leader(group, preferred)

    # --- status ---------------------------------------------------------------------------------------

    def shard_statuses(self) -> list[ShardStatus]:
        statuses = []
        for group in sorted(self.shards):
            if group not in self.driver.groups():
                continue
            s = self._status(group)
            progress: dict[int, int] = s.get("progress", {})
            lag = max((s["last_index"] - m for m in progress.values()), default=0)
            voters = tuple(self._peer_name(n) for n in s["voters"])
            warning = ""
            if 0 < len(voters) < self.config.replicas:
                warning = f"{len(voters)} of {self.config.replicas} replicas"
            statuses.append(
                ShardStatus(
                    group,
                    s["role"],
                    s["term"],
                    self._peers.get(s["leader_id"]) if s["leader_id"] else None,
                    s["commit"],
                    s["applied"],
                    voters,
                    tuple(self._peer_name(n) for n in s["learners"]),
                    lag,
                    warning,
                    s["quiet"],
                )
            )
        return statuses

    def _status(self, group: int) -> dict[str, Any]:
        """The driver's status of ``group`` (its keys are listed in ``pyagent._core.MultiRaft.status``)."""
        status: dict[str, Any] = self.driver.status(group)
        return status

    # --- peers ----------------------------------------------------------------------------------------

    def _follow_membership(self) -> None:
        """Tell the driver which Raft peers membership holds down, and which are alive again. Idle groups
        are quiet, with no election timer running, so a failed replica is noticed through membership's
        failure detector: the driver wakes every group the peer is in."""
        for node, peer in self._peers.items():
            record = None if node == self.node_id else self._members.member(peer)
            if record is None:
                continue
            down = record.state is not State.ALIVE
            if down and node not in self._down:
                self._down.add(node)
                self.driver.peer_down(node)
            elif not down and node in self._down:
                self._down.discard(node)
                self.driver.peer_up(node)

    def _learn_peer(self, peer: PeerId) -> None:
        self._peers.setdefault(node_id_of(peer), peer)

    def _peer_of(self, node: int) -> PeerId | None:
        """The peer whose Raft node id is ``node``, looked up among the members when not yet known."""
        if node not in self._peers:
            self._candidates()
        return self._peers.get(node)

    def _peer_name(self, node: int) -> PeerId:
        return self._peer_of(node) or f"node:{node:016x}"

    def _addrs(self, peer: PeerId) -> tuple[str, ...]:
        return addrs_of(self._members.members(), peer)

    def _send(self, peer: PeerId, message: dict[str, Any]) -> Send:
        return Send(peer, self.protocol_id, message, self._addrs(peer))

    def _send_frame(self, node: int, frame: bytes, lane: list[Send]) -> None:
        peer = self._peer_of(node)
        if peer is not None:
            lane.append(self._send(peer, messages.encode_raft(self._shard_count, frame)))


def _next_conf_change(status: dict[str, Any], wanted: Sequence[int], replicas: int) -> tuple[str, int] | None:
    """The one membership change a group should make next, or None: promote a caught-up learner, else
    add the first wanted peer that holds no replica, while the group has fewer than ``replicas``."""
    voters, learners = set(status["voters"]), set(status["learners"])
    progress: dict[int, int] = status["progress"]
    for learner in sorted(learners):
        if progress.get(learner, 0) >= status["commit"]:
            return ("add_voter", learner)
    if learners or len(voters) >= replicas:
        return None
    for node in wanted:
        if node not in voters:
            return ("add_learner", node)
    return None


def storage_op(write: tuple[Any, ...]) -> Op:
    """The storage op one of the driver's writes stands for (``pyagent._core.MultiRaft``'s write tuples)."""
    match write:
        case ("put", bytes() as key, bytes() as value):
            return PutKey(key, value)
        case ("append", str() as name, int() as first, entries):
            return LogAppend(name, first, tuple(entries))
        case ("truncate", str() as name, int() as index):
            return LogTruncate(name, index)
        case ("compact", str() as name, int() as index):
            return LogCompact(name, index)
    raise AssertionError(f"unknown driver write {write[0]!r}")
