"""``Membership``: SWIM failure detection and gossip dissemination with the Lifeguard extensions.

One probe at a time, in randomized round-robin order: ping, then after ``probe_timeout`` ask
``indirect_checks`` helpers to ping for us (they nack when the target is silent too, so a missing nack
means *we* are slow), then at the end of the probe interval suspect the target. Suspicions time out into
``dead`` unless the member refutes them with a higher incarnation. Every claim travels as an ``Entry``
piggybacked on probe traffic and periodic gossip, and a periodic push-pull of the whole state repairs
whatever gossip missed. docs/membership.md explains the choices; docs/adr/0005-membership.md the design.

Trust: a message's sender is the authenticated libp2p peer, never a field. Acks and nacks count only from
the peers the probe went to; nobody's claim about this node is accepted (it is refuted instead); a peer's
message proves that peer alive, so its claims that it is suspect or dead are ignored; suspicion
confirmations count only accusers that are live members. Relayed gossip is otherwise believed, as in
memberlist: members of one mesh are authenticated peers (and, in a private mesh, hold its key).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyagent.proto.component import Component
from pyagent.proto.events import LocalRequest, MessageReceived, SendFailed, Started
from pyagent.proto.membership import codec, limits
from pyagent.proto.membership import metadata as metadata_codec
from pyagent.proto.membership.addressbook import AddressBook
from pyagent.proto.membership.broadcasts import BroadcastQueue
from pyagent.proto.membership.commands import (
    Join,
    Joined,
    Leave,
    ListAddressBook,
    ListMembers,
    UpdateLocalMetadata,
)
from pyagent.proto.membership.config import LAN, Config
from pyagent.proto.membership.lifeguard import Awareness, Suspicion
from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.membership.records import Entry, Isolated, MemberChanged, MemberRecord, State
from pyagent.proto.membership.table import Member, MemberTable
from pyagent.proto.ready import CancelTimer, Ready, Reply, Send, SetTimer
from pyagent.proto.storage import StorageReader, WriteBatch
from pyagent.proto.types import US_PER_MS, PeerId, Rng
from pyagent.proto.wire import Limits, Message

_MESSAGE_NAMES = {
    "p": "ping",
    "a": "ack",
    "n": "nack",
    "i": "ping_req",
    "g": "gossip",
    "pp": "push_pull",
    "pr": "push_pull_reply",
    "mq": "metadata_query",
    "md": "metadata_reply",
}
# Every message is counted; its counter's name is looked up rather than formatted each time.
_COUNTER_NAMES = {
    (direction, kind): f"{direction}.{kind}"
    for direction in ("recv", "sent")
    for kind in (*_MESSAGE_NAMES.values(), "other")
}
_PROBE = "probe"
_PROBE_TIMEOUT = "probe-timeout"
_GOSSIP = "gossip"
_PUSH_PULL = "push-pull"
_JOIN = "join"
_RECONNECT = "reconnect"
# Extra push-pulls after a join (the first comes one probe interval after the join, each next one after
# twice the gap): members that joined in the same moment are missing from the seed's answer and from each
# other's gossip, and these exchanges find them within seconds. Each costs a full state, so only a couple.
_JOIN_RESYNCS = 1
_SUSPICION = "s/"
_RELAY = "r/"
# The helper's nack must reach the prober before its probe interval ends; this share of the remaining
# window leaves the rest for the two network hops.
_NACK_WAIT_SHARE = 0.8
_SUSPECT_CODE = int(State.SUSPECT)
# Weight of a new round-trip sample in the smoothed value: TCP's SRTT gain (RFC 6298), so one slow ack
# moves it by an eighth and a lasting change shows within a few probes.
_RTT_GAIN = 1 / 8


@dataclass(slots=True)
class _Probe:
    seq: int
    target: PeerId
    sent_us: int
    acked: bool = False
    indirect: bool = False
    # The ping's dial was refused at every address of the target: its host is up, its process is not.
    refused: bool = False
    helpers: tuple[PeerId, ...] = ()
    nackers: set[PeerId] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _Relay:
    """An indirect probe we run for ``origin``: its ack (or our nack) goes back under ``origin_seq``."""

    origin: PeerId
    origin_seq: int
    target: PeerId
    want_nack: bool


@dataclass(slots=True)
class _PendingJoin:
    request_id: int
    seeds: tuple[tuple[PeerId, tuple[str, ...]], ...]
    attempt: int = 1


class Membership(Component):
    name: ClassVar[str] = "membership"
    protocol_id: ClassVar[str] = codec.PROTOCOL_ID
    limits: ClassVar[Limits] = limits.FRAME_LIMITS
    command_types: ClassVar[tuple[type, ...]] = (
        Join,
        Leave,
        ListAddressBook,
        ListMembers,
        UpdateLocalMetadata,
    )

    def __init__(
        self,
        local_peer: PeerId,
        rng: Rng,
        config: Config = LAN,
        local_metadata: Metadata | None = None,
        local_addrs: tuple[str, ...] = (),
        allowed: frozenset[PeerId] | None = None,
        known: Iterable[MemberRecord] = (),
        storage: StorageReader | None = None,
    ) -> None:
        metadata = local_metadata or Metadata()
        metadata_codec.check_local(metadata, config.metadata_bytes_max)
        _check_local_addrs(local_addrs, config.addrs_bytes_max)
        self.config = config
        # A private mesh's allow-list: gossip about anyone else is ignored, so they never become members
        # even when a misconfigured member relays them. None admits everyone.
        self._allowed = allowed
        self._rng = rng
        local = Member(local_peer, local_addrs, incarnation=0, now_us=0)
        local.metadata, local.meta_version = metadata, 1
        self._table = MemberTable(local, config.members_max)
        self._local_peer = local_peer
        self._queue = BroadcastQueue(config.broadcast_queue_max)
        self._awareness = Awareness(config.awareness_max if config.local_health else 1)
        self._seq = 0
        self._probe: _Probe | None = None
        self._reconnect: tuple[int, PeerId] | None = None
        self._resyncs_left = 0
        self._relays: dict[int, _Relay] = {}
        self._join: _PendingJoin | None = None
        # Whether the last join merges our mesh into another (it was asked for while we had company).
        self._join_merges = False
        # The last time we saw another live member, and whether we said we are alone since.
        self._company_us = 0
        self._isolated = False
        self._started = False
        self._leaving = False
        self._gossip_armed = False
        # The unknown sender waiting for a push-pull, and when it first messaged us.
        self._stranger: tuple[PeerId, int] | None = None
        self._changes: deque[MemberChanged] = deque()
        self._limit_cache = (0, 0)
        self._reconnect_armed = False
        # The member whose message is being handled: updates it brings are queued as held by it.
        self._sender: PeerId | None = None
        self.counters: Counter[str] = Counter()
        self._book = AddressBook(storage, config.members_max)
        self._adopt(known)

    def _adopt(self, known: Iterable[MemberRecord]) -> None:
        """Start out knowing ``known``: a view restored from an earlier run, or a simulated mesh that
        starts formed. A suspicion is not carried over (its timer is gone): the member is probed anew."""
        members: dict[PeerId, Member] = {}
        for record in known:
            peer = record.peer
            if peer == self._local_peer or (self._allowed is not None and peer not in self._allowed):
                continue
            member = Member(peer, record.addrs, record.incarnation, record.state_changed_us)
            member.metadata, member.meta_version = record.metadata, record.meta_version
            if record.state in (State.DEAD, State.LEFT):
                member.state = record.state
            members[peer] = member
        for member in self._table.adopt(list(members.values()), self._rng):
            self._notice(member, None, member.state_changed_us)

    # ----- observability -----

    @property
    def local_peer(self) -> PeerId:
        return self._local_peer

    @property
    def health_score(self) -> int:
        return self._awareness.score

    def members(self) -> list[MemberRecord]:
        """Every known member, this node included, sorted by peer id."""
        return sorted((member.record() for member in self._table), key=lambda record: record.peer)

    def member(self, peer: PeerId) -> MemberRecord | None:
        found = self._table.local if peer == self._local_peer else self._table.get(peer)
        return None if found is None else found.record()

    def live_count(self) -> int:
        return self._table.live_count

    def alone_since_us(self) -> int | None:
        """When this node last saw another live member, while it has seen none for
        ``isolation_warning_ms``; None otherwise (and at once when a member is back, not at the next tick).
        """
        return self._company_us if self._isolated and self._table.live_count <= 1 else None

    # ----- Component -----

    def on_started(self, event: Started, now_us: int, out: Ready) -> None:
        local = self._table.local
        # Never reuse an incarnation of an earlier run (addressbook.py says why and how).
        local.incarnation = max(local.incarnation, self._book.recover())
        self._book.reserve(local.incarnation)
        self._flush_changes(out)  # also those of a view adopted at construction

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        self._on_message(event, now_us, out)
        self._flush_changes(out)

    def on_send_failed(self, event: SendFailed, now_us: int, out: Ready) -> None:
        probe = self._probe
        if event.nothing_listens and probe is not None and probe.target == event.peer and not probe.acked:
            probe.refused = True

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        self._on_timer(suffix, now_us, out)
        self._flush_changes(out)

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        self._on_request(request, now_us, out)
        self._flush_changes(out)

    def _flush_changes(self, out: Ready) -> None:
        """State changes leave as notices of the Ready in which they happened, and what must survive a
        restart as one write batch."""
        if self._changes:
            out.notices.extend(self._changes)
            self._changes.clear()
        if self._book.dirty:
            ops, sync = self._book.take()
            out.writes.append(WriteBatch(self.name, ops, sync=sync))

    def _on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        decoded = codec.decode(event.message, self.config.metadata_bytes_max, self._is_known)
        sender = event.peer
        if sender == self._local_peer:
            return
        self._sender = sender
        try:
            self._on_decoded(decoded, sender, event.message, now_us, out)
        finally:
            self._sender = None

    def _on_decoded(
        self, decoded: codec.Decoded, sender: PeerId, message: Message, now_us: int, out: Ready
    ) -> None:
        self._count("recv", message)
        self._ensure_started(now_us, out)
        if self._table.get(sender) is None and not isinstance(
            decoded, codec.PushPull | codec.MetadataQuery | codec.MetadataReply
        ):
            self._note_stranger(sender, now_us)
        match decoded:
            case codec.Ping():
                self._merge(decoded.updates, sender, now_us, out)
                self._send(out, sender, codec.ack(decoded.seq, self._piggyback(sender, buddy=True)))
            case codec.Ack():
                self._merge(decoded.updates, sender, now_us, out)
                self._on_ack(sender, decoded.seq, now_us, out)
            case codec.Nack():
                self._on_nack(sender, decoded.seq)
            case codec.PingReq():
                self._merge(decoded.updates, sender, now_us, out)
                self._relay_probe(sender, decoded, now_us, out)
            case codec.Gossip():
                self._merge(decoded.updates, sender, now_us, out)
            case codec.PushPull():
                self._on_push_pull(sender, decoded, now_us, out)
            case codec.MetadataQuery():
                self._answer_metadata_query(sender, decoded, out)
            case codec.MetadataReply():
                self._apply_metadata(decoded)

    def _on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        if suffix == _PROBE:
            self._on_probe_tick(now_us, out)
        elif suffix == _PROBE_TIMEOUT:
            self._on_probe_timeout(now_us, out)
        elif suffix == _GOSSIP:
            self._on_gossip_tick(now_us, out)
        elif suffix == _PUSH_PULL:
            self._on_push_pull_tick(now_us, out)
        elif suffix == _JOIN:
            self._on_join_timer(now_us, out)
        elif suffix == _RECONNECT:
            self._on_reconnect_tick(now_us, out)
        elif suffix.startswith(_SUSPICION):
            self._on_suspicion_timeout(suffix[len(_SUSPICION) :], now_us, out)
        elif suffix.startswith(_RELAY):
            self._on_relay_timeout(int(suffix[len(_RELAY) :]), out)

    def _on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        self._ensure_started(now_us, out)
        command = request.command
        if isinstance(command, Join):
            self._on_join(request.request_id, command, now_us, out)
        elif isinstance(command, Leave):
            self._on_leave(request.request_id, now_us, out)
        elif isinstance(command, ListMembers):
            out.apply.append(Reply(request.request_id, value=self.members()))
        elif isinstance(command, ListAddressBook):
            out.apply.append(Reply(request.request_id, value=self._book.recovered))
        elif isinstance(command, UpdateLocalMetadata):
            self._on_update_local_metadata(request.request_id, command, now_us, out)

    # ----- probing -----

    def _ensure_started(self, now_us: int, out: Ready) -> None:
        if self._started:
            return
        self._started = True
        local = self._table.local
        local.state_changed_us = now_us
        self._company_us = now_us
        self._notice(local, None, now_us)
        self._enqueue_member(local, out, now_us)
        # Random phases keep a cluster started at once from probing and exchanging state in lockstep.
        out.timers.append(
            SetTimer(self.timer_key(_PROBE), now_us + 1 + self._rng.randrange(self._probe_interval_us()))
        )
        period_us = self.config.push_pull_period_ms(self._table.live_count) * US_PER_MS
        out.timers.append(SetTimer(self.timer_key(_PUSH_PULL), now_us + 1 + self._rng.randrange(period_us)))
        self._arm_reconnect(now_us, out)

    def _probe_interval_us(self) -> int:
        return self._awareness.scale(self.config.probe_interval_ms) * US_PER_MS

    def _on_probe_tick(self, now_us: int, out: Ready) -> None:
        probe, self._probe = self._probe, None
        if probe is not None and not probe.acked:
            self._probe_failed(probe, now_us, out)
        if self._leaving:
            return
        interval_us = self._probe_interval_us()
        out.timers.append(SetTimer(self.timer_key(_PROBE), now_us + interval_us))
        self._check_isolation(now_us, out)
        self._sync_with_stranger(now_us, out)
        left_before_us = now_us - self.config.gossip_to_dead_ms * US_PER_MS
        dead_before_us = now_us - self.config.dead_retention_ms * US_PER_MS
        target = self._table.next_probe_target(self._rng, left_before_us, dead_before_us)
        if target is None:
            return
        self._probe = _Probe(self._next_seq(), target.peer, now_us)
        self.counters["probes"] += 1
        self._send(out, target.peer, codec.ping(self._probe.seq, self._piggyback(target.peer, buddy=True)))
        timeout_us = self._awareness.scale(self.config.probe_timeout_ms) * US_PER_MS
        out.timers.append(SetTimer(self.timer_key(_PROBE_TIMEOUT), now_us + timeout_us))

    def _check_isolation(self, now_us: int, out: Ready) -> None:
        # Checked at probe ticks, which run alone or not: once when the silence has lasted the warning
        # time, once when it ends. A mesh of one is legitimate, so this is a notice for the operator.
        if self._table.live_count > 1:
            if self._isolated:
                self._isolated = False
                out.notices.append(Isolated(False, self._company_us, now_us))
            self._company_us = now_us
        elif not self._isolated and now_us - self._company_us >= self.config.isolation_warning_ms * US_PER_MS:
            self._isolated = True
            out.notices.append(Isolated(True, self._company_us, now_us))

    def _on_probe_timeout(self, now_us: int, out: Ready) -> None:
        probe = self._probe
        if probe is None or probe.acked or probe.indirect:
            return
        probe.indirect = True
        target = self._table.get(probe.target)
        if target is None:
            return
        if probe.refused:
            # Helpers exist to tell a lost packet from a dead process; a refused connection already did,
            # and asking them would cost a ping-req, a relayed ping and a nack each (memberlist, on UDP,
            # never learns this). Suspicion, its confirmations and refutation still decide as usual.
            self.counters["probes_refused"] += 1
            return
        helpers = self._table.sample(
            self._rng,
            self.config.indirect_checks,
            lambda m: m.state is State.ALIVE and m.peer != probe.target,
        )
        probe.helpers = tuple(helper.peer for helper in helpers)
        window_ms = self._awareness.scale(self.config.probe_interval_ms - self.config.probe_timeout_ms)
        wait_ms = max(1, int(window_ms * _NACK_WAIT_SHARE))
        for helper in helpers:
            message = codec.ping_req(
                probe.seq, target.peer, target.addrs, self.config.nacks, wait_ms, self._piggyback(helper.peer)
            )
            self._send(out, helper.peer, message)
        self.counters["indirect_probes"] += len(helpers)

    def _on_ack(self, sender: PeerId, seq: int, now_us: int, out: Ready) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq and (sender == probe.target or sender in probe.helpers):
            if not probe.acked:
                probe.acked = True
                self._awareness.apply(-1)
                if sender == probe.target:
                    # Only the target's own ack times our ping; one relayed by a helper took two more hops.
                    self._record_rtt(probe.target, now_us - probe.sent_us)
                if not probe.indirect:
                    # Nothing is left for the timeout to do: cancelling it spares a wake-up per probe.
                    out.timers.append(CancelTimer(self.timer_key(_PROBE_TIMEOUT)))
            return
        if self._reconnect == (seq, sender):
            # A member we hold dead answers: it is back, or a partition healed. Its ack carried its
            # refutation (our ping told it we hold it dead); a push-pull now repairs both views.
            self._reconnect = None
            self.counters["reconnects"] += 1
            self._send_state(out, sender, self._addrs_of(sender), response=False, join=False)
            return
        relay = self._relays.get(seq)
        if relay is not None and sender == relay.target:
            del self._relays[seq]
            out.timers.append(CancelTimer(self.timer_key(f"{_RELAY}{seq}")))
            self._send(out, relay.origin, codec.ack(relay.origin_seq, self._piggyback(relay.origin)))
            return
        self.counters["acks_late_or_unknown"] += 1

    def _arm_reconnect(self, now_us: int, out: Ready) -> None:
        # Only while someone is dead: a healthy mesh spends no wake-ups on it. A random phase, so that
        # the members that saw one death together do not retry it in lockstep.
        if self._reconnect_armed or not self._started or self._leaving or not self._table.dead_count:
            return
        self._reconnect_armed = True
        reconnect_us = self.config.reconnect_interval_ms * US_PER_MS
        out.timers.append(
            SetTimer(self.timer_key(_RECONNECT), now_us + 1 + self._rng.randrange(reconnect_us))
        )

    def _on_reconnect_tick(self, now_us: int, out: Ready) -> None:
        self._reconnect = None
        self._reconnect_armed = False
        target = None if self._leaving else self._table.next_reconnect_target(self._rng)
        if target is None:
            return
        self._reconnect = (self._next_seq(), target.peer)
        self._send(out, target.peer, codec.ping(self._reconnect[0], self._piggyback(target.peer, buddy=True)))
        self._reconnect_armed = True
        out.timers.append(
            SetTimer(self.timer_key(_RECONNECT), now_us + self.config.reconnect_interval_ms * US_PER_MS)
        )

    def _record_rtt(self, peer: PeerId, sample_us: int) -> None:
        member = self._table.get(peer)
        if member is None or sample_us < 0:
            return
        previous = member.rtt_us
        smoothed = sample_us if previous is None else previous + _RTT_GAIN * (sample_us - previous)
        member.rtt_us = round(smoothed)
        self.counters["rtt_samples"] += 1

    def _on_nack(self, sender: PeerId, seq: int) -> None:
        probe = self._probe
        if probe is not None and probe.seq == seq and sender in probe.helpers:
            probe.nackers.add(sender)

    def _probe_failed(self, probe: _Probe, now_us: int, out: Ready) -> None:
        self.counters["probes_failed"] += 1
        # Lifeguard: helpers that did not even nack point at us being the slow one. A refusal is an
        # answer, so it says nothing against our own health.
        expected_nacks = len(probe.helpers) if self.config.nacks else 0
        if not probe.refused:
            self._awareness.apply(expected_nacks - len(probe.nackers) if expected_nacks else 1)
        target = self._table.get(probe.target)
        if target is not None and target.live:
            self._suspect(target, target.incarnation, self._local_peer, now_us, out)

    def _relay_probe(self, sender: PeerId, request: codec.PingReq, now_us: int, out: Ready) -> None:
        if request.target == self._local_peer:
            self._send(out, sender, codec.ack(request.seq, self._piggyback(sender)))
            return
        if len(self._relays) >= self.config.indirect_relays_max:
            self.counters["relays_refused"] += 1
            if request.want_nack:
                self._send(out, sender, codec.nack(request.seq))
            return
        seq = self._next_seq()
        self._relays[seq] = _Relay(sender, request.seq, request.target, request.want_nack)
        known = self._table.get(request.target)
        addrs = known.addrs if known is not None and known.addrs else request.addrs
        self._send(out, request.target, codec.ping(seq, self._piggyback(request.target)), addrs)
        out.timers.append(SetTimer(self.timer_key(f"{_RELAY}{seq}"), now_us + request.wait_ms * US_PER_MS))

    def _on_relay_timeout(self, seq: int, out: Ready) -> None:
        relay = self._relays.pop(seq, None)
        if relay is not None and relay.want_nack:
            self._send(out, relay.origin, codec.nack(relay.origin_seq))

    def _next_seq(self) -> int:
        self._seq = self._seq + 1 if self._seq < limits.SEQ_MAX else 0
        return self._seq

    # ----- suspicion and state changes -----

    def _suspect(self, member: Member, incarnation: int, accuser: PeerId, now_us: int, out: Ready) -> None:
        if member.state is State.SUSPECT and member.suspicion is not None:
            if incarnation == member.incarnation and member.suspicion.confirm(accuser):
                self.counters["suspicion_confirmations"] += 1
                # A late confirmation can move the deadline into the past: then it is due now.
                deadline_us = max(now_us, member.suspicion.deadline_us())
                timer = SetTimer(self.timer_key(_SUSPICION + member.peer), deadline_us)
                out.timers.append(timer)
                self._enqueue_suspicion(member, accuser, out, now_us)
            return
        members = self._table.live_count
        # memberlist expects suspicion_mult - 2 confirmations, none in a cluster too small to give them.
        k = self.config.suspicion_mult - 2
        if members - 2 < k:
            k = 0
        min_us = int(self.config.suspicion_min_ms(members) * US_PER_MS)
        max_us = int(self.config.suspicion_max_ms(members) * US_PER_MS)
        member.suspicion = Suspicion(accuser, incarnation, k, min_us, max_us, now_us)
        member.incarnation = incarnation
        self._set_state(member, State.SUSPECT, now_us, out)
        if accuser == self._local_peer:
            self.counters["suspicions_raised"] += 1
        out.timers.append(SetTimer(self.timer_key(_SUSPICION + member.peer), member.suspicion.deadline_us()))
        self._enqueue_suspicion(member, accuser, out, now_us)

    def _enqueue_suspicion(self, member: Member, accuser: PeerId, out: Ready, now_us: int) -> None:
        # Relayed with its original accuser, so that receivers count independent confirmations.
        entry = Entry(member.peer, State.SUSPECT, member.incarnation, member.meta_version, accuser=accuser)
        payload = codec.encode_entry(entry)
        self._enqueue(member.peer, payload, codec.packed_size_bytes(payload), out, now_us)

    def _on_suspicion_timeout(self, peer: PeerId, now_us: int, out: Ready) -> None:
        member = self._table.get(peer)
        if member is None or member.state is not State.SUSPECT or member.suspicion is None:
            return
        self.counters["deaths_declared"] += 1
        self._depart(member, State.DEAD, member.incarnation, now_us, out)

    def _depart(self, member: Member, state: State, incarnation: int, now_us: int, out: Ready) -> None:
        if member.suspicion is not None:
            member.suspicion = None
            out.timers.append(CancelTimer(self.timer_key(_SUSPICION + member.peer)))
        member.incarnation = incarnation
        self._set_state(member, state, now_us, out)
        self._enqueue_member(member, out, now_us)

    def _set_state(self, member: Member, state: State, now_us: int, out: Ready) -> None:
        old = member.state
        self._table.set_state(member, state, now_us, self._rng)
        self._notice(member, old, now_us)
        if state in (State.DEAD, State.LEFT) and member is not self._table.local:
            self._book.forget(member.peer)
        if state is State.DEAD:
            self._arm_reconnect(now_us, out)

    def _notice(self, member: Member, old: State | None, now_us: int) -> None:
        if len(self._changes) >= self.config.changes_max:
            self._changes.popleft()
            self.counters["changes_dropped"] += 1
        self._changes.append(MemberChanged(member.peer, old, member.state, member.incarnation, now_us))

    # ----- merging claims -----

    def _merge(
        self, entries: tuple[Entry, ...], sender: PeerId, now_us: int, out: Ready, relay_new: bool = True
    ) -> None:
        """Merge the entries, then ask the sender for the metadata it holds newer than ours."""
        stale: list[PeerId] = []
        corrections: list[tuple[codec.WireEntry, int]] = []
        for entry in entries:
            if entry.state is not State.ALIVE:
                correction = self._correction(entry, now_us)
                if correction is not None:
                    corrections.append(correction)
                    continue
            if self._apply(entry, sender, now_us, out, relay_new):
                stale.append(entry.peer)
        step = self.config.metadata_query_ids_max
        for start in range(0, len(stale), step):
            self._send(out, sender, codec.metadata_query(stale[start : start + step]))
        config = self.config
        for chunk in codec.chunks(corrections, config.piggyback_bytes_max, limits.UPDATES_MAX):
            self._send(out, sender, codec.gossip(chunk))

    def _correction(self, entry: Entry, now_us: int) -> tuple[codec.WireEntry, int] | None:
        """Our alive entry, to send back, when ``entry`` accuses a member at an incarnation it has refuted.

        Dissemination is best effort: a peer that heard an accusation but missed its refutation (its
        gossip spent before reaching it, or lost) would otherwise let the suspicion time out into a false
        death, and relay it. memberlist ignores such a stale claim; telling its holder costs one small
        message and is what makes Lifeguard's refutation reach everyone under heavy loss. Sent at most
        once per gossip interval per member, as many holders relay the same claim at once.
        """
        if not self.config.buddy_system:
            return None
        member = self._table.local if entry.peer == self._local_peer else self._table.get(entry.peer)
        if member is None or member.state is not State.ALIVE or entry.incarnation >= member.incarnation:
            return None
        if self._leaving or now_us - member.corrected_us < self.config.gossip_interval_ms * US_PER_MS:
            return None
        member.corrected_us = now_us
        self.counters["stale_claims_corrected"] += 1
        return self._wire_of(member)

    def _apply(self, entry: Entry, sender: PeerId, now_us: int, out: Ready, relay_new: bool) -> bool:
        """Merge one entry; True when the sender holds newer metadata than we do and we should ask."""
        if entry.peer == self._local_peer:
            self._apply_about_self(entry, now_us, out)
            return False
        # The sender is evidently alive: a claim that it is suspect or dead is stale, so ignore it.
        if entry.peer == sender and entry.state in (State.SUSPECT, State.DEAD):
            return False
        member = self._table.get(entry.peer)
        if entry.state is State.ALIVE:
            # What a member says of itself is first-hand news: a seed relays its joiner's entry.
            return self._apply_alive(member, entry, now_us, out, relay_new or entry.peer == sender)
        if member is None or entry.incarnation < member.incarnation:
            return False
        if entry.state is State.SUSPECT:
            accuser = self._table.get(entry.accuser)
            if member.live and ((accuser is not None and accuser.live) or entry.accuser == self._local_peer):
                self._suspect(member, entry.incarnation, entry.accuser, now_us, out)
            return False
        # A graceful leave wins over a death we inferred; nothing revives a member but a newer alive.
        if member.live or (member.state is State.DEAD and entry.state is State.LEFT):
            self._depart(member, entry.state, entry.incarnation, now_us, out)
        return False

    def _apply_alive(
        self, member: Member | None, entry: Entry, now_us: int, out: Ready, relay_new: bool
    ) -> bool:
        if member is None:
            if self._allowed is not None and entry.peer not in self._allowed:
                self.counters["members_refused"] += 1
                return False
            member = Member(entry.peer, entry.addrs, entry.incarnation, now_us)
            if not self._table.add(member, self._rng):
                self.counters["members_refused"] += 1
                return False
            self._notice(member, None, now_us)
            self._book.remember(member.peer, member.addrs)
            # A member met in a push-pull announces itself; relaying every one of them would make each
            # join cost N gossip updates instead of one. Our own queue may wait for a first target.
            if relay_new:
                self._enqueue_member(member, out, now_us)
            else:
                self._arm_gossip(now_us, out)
            return self._wants_metadata(member, entry, now_us)
        if entry.incarnation <= member.incarnation:
            return entry.incarnation == member.incarnation and self._wants_metadata(member, entry, now_us)
        member.incarnation = entry.incarnation
        member.addrs = entry.addrs
        self._book.remember(member.peer, member.addrs)
        if member.state is not State.ALIVE:
            if member.suspicion is not None:
                member.suspicion = None
                self.counters["suspicions_refuted"] += 1
                out.timers.append(CancelTimer(self.timer_key(_SUSPICION + member.peer)))
            self._set_state(member, State.ALIVE, now_us, out)
        self._enqueue_member(member, out, now_us)
        return self._wants_metadata(member, entry, now_us)

    def _wants_metadata(self, member: Member, entry: Entry, now_us: int) -> bool:
        # Many relays announce the same new version; ask once per probe interval, not once per relay.
        if entry.meta_version <= member.meta_version:
            return False
        if now_us - member.meta_requested_us < self.config.probe_interval_ms * US_PER_MS:
            return False
        member.meta_requested_us = now_us
        return True

    def _apply_about_self(self, entry: Entry, now_us: int, out: Ready) -> None:
        local = self._table.local
        if self._leaving or entry.incarnation < local.incarnation:
            return
        if (
            entry.state is State.ALIVE
            and entry.incarnation == local.incarnation
            and entry.meta_version <= local.meta_version
        ):
            return
        # Someone holds a claim about us at least as new as ours: outbid it. A restarted node learns
        # its previous incarnation and metadata version this way too.
        local.incarnation = entry.incarnation + 1
        local.meta_version = max(local.meta_version, entry.meta_version + 1)
        if entry.state is not State.ALIVE:
            self.counters["refutations"] += 1
            self._awareness.apply(1)
        self._enqueue_member(local, out, now_us)

    # ----- dissemination -----

    def _entry_of(self, member: Member) -> Entry:
        # meta_version is the version we hold, never one we only heard of: whoever asks us for the
        # metadata of that version gets it.
        if member.state is State.ALIVE:
            return Entry(member.peer, State.ALIVE, member.incarnation, member.meta_version, member.addrs)
        if member.state is State.SUSPECT:
            # In a digest we vouch for the suspicion ourselves, as memberlist's push-pull merge does.
            return Entry(
                member.peer, State.SUSPECT, member.incarnation, member.meta_version, accuser=self._local_peer
            )
        return Entry(member.peer, member.state, member.incarnation, member.meta_version)

    def _wire_of(self, member: Member) -> tuple[codec.WireEntry, int]:
        # The cached entry is checked against the fields it is made of (the accuser of a suspect entry is
        # always us); the addresses by identity, as a new tuple is only stored when they may change.
        wire = member.wire
        if (
            member.wire_addrs is not member.addrs
            or wire[1] != member.state
            or wire[2] != member.incarnation
            or wire[3] != member.meta_version
        ):
            wire = member.wire = codec.encode_entry(self._entry_of(member))
            member.wire_size_bytes = codec.packed_size_bytes(wire)
            member.wire_addrs = member.addrs
        return wire, member.wire_size_bytes

    def _is_known(self, raw: object) -> bool:
        """Whether a raw entry equals the entry we would send about that member (see ``codec.decode``).
        Suspect entries never are: each names an accuser whose confirmation may count. Every entry of
        every message comes through here, so it compares fields with the member itself rather than
        validate and compare its cached encoding."""
        if type(raw) is not list or len(raw) != 6:
            return False
        fields: list[object] = raw
        peer, code, incarnation, meta_version, addrs, accuser = fields
        if accuser is not None or code == _SUSPECT_CODE or type(peer) is not str:
            return False
        member = self._table.get(peer)
        if member is None:
            if peer != self._local_peer:
                return False
            member = self._table.local
        return (
            member.state == code
            and member.incarnation == incarnation
            and member.meta_version == meta_version
            and (list(member.addrs) if member.state is State.ALIVE else []) == addrs
        )

    def _enqueue_member(self, member: Member, out: Ready, now_us: int) -> None:
        if member is self._table.local:
            self._book.reserve(member.incarnation)
        self._enqueue(member.peer, *self._wire_of(member), out, now_us)

    def _enqueue(self, peer: PeerId, payload: codec.WireEntry, size: int, out: Ready, now_us: int) -> None:
        if size > self.config.piggyback_bytes_max:
            # A peer with more addresses than our budget allows: push-pull still carries its entry.
            self.counters["updates_too_large"] += 1
            return
        # What a message brought us, its sender holds; news about ourselves (a refutation) is our own.
        heard_from = None if peer == self._local_peer else self._sender
        self._queue.push(peer, payload, size, heard_from)
        self._arm_gossip(now_us, out)

    def _arm_gossip(self, now_us: int, out: Ready) -> None:
        if self._queue and not self._gossip_armed:
            self._gossip_armed = True
            out.timers.append(
                SetTimer(self.timer_key(_GOSSIP), now_us + self.config.gossip_interval_ms * US_PER_MS)
            )

    def _piggyback(self, receiver: PeerId, buddy: bool = False) -> list[codec.WireEntry]:
        """Updates for one message to ``receiver``; with ``buddy`` it is also told if we think it is not
        alive.

        Gossip about a suspicion may be spent before the suspect can hear it (a short partition); telling
        it directly whenever we exchange a probe lets it refute at once, and a member wrongly declared
        dead learns it from its very next ping.
        """
        queue = self._queue
        updates = (
            queue.take(
                self.config.piggyback_bytes_max,
                self._retransmit_limit(),
                receiver,
                others=self._table.live_remote_count,
            )
            if queue
            else []
        )
        if not buddy or not self.config.buddy_system:
            return updates
        member = self._table.get(receiver)
        if member is not None and member.state in (State.SUSPECT, State.DEAD):
            updates.append(codec.encode_entry(self._entry_of(member)))
        return updates

    def _retransmit_limit(self) -> int:
        members = self._table.live_count
        cached_members, limit = self._limit_cache
        if cached_members != members:
            limit = self.config.retransmit_limit(members)
            self._limit_cache = (members, limit)
        return limit

    def _on_gossip_tick(self, now_us: int, out: Ready) -> None:
        self._gossip_armed = False
        if not self._queue:
            return
        to_dead_us = self.config.gossip_to_dead_ms * US_PER_MS
        targets = self._table.sample(self._rng, self.config.gossip_nodes, _gossip_filter(now_us, to_dead_us))
        for target in targets:
            # Empty for a target that holds every queued update, though another may still lack some.
            updates = self._piggyback(target.peer, buddy=True)
            if updates:
                self._send(out, target.peer, codec.gossip(updates))
        # With nobody to gossip to, wait for a new member (which re-arms the timer) rather than spin.
        if targets:
            self._arm_gossip(now_us, out)

    # ----- anti-entropy: push-pull and metadata fetches -----

    def _on_push_pull_tick(self, now_us: int, out: Ready) -> None:
        if self._leaving:
            return
        period_us = self.config.push_pull_period_ms(self._table.live_count) * US_PER_MS
        if self._resyncs_left:
            # Just joined: exchange again soon rather than a whole period later.
            self._resyncs_left -= 1
            period_us = min(period_us, self._resync_gap_us(_JOIN_RESYNCS - self._resyncs_left))
        out.timers.append(SetTimer(self.timer_key(_PUSH_PULL), now_us + period_us))
        partners = self._table.sample(self._rng, 1, lambda m: m.state is State.ALIVE)
        if partners:
            self.counters["push_pulls"] += 1
            self._send_state(out, partners[0].peer, partners[0].addrs, response=False, join=False)

    def _resync_gap_us(self, step: int) -> int:
        return int((self.config.probe_interval_ms << step) * US_PER_MS * (1 + self._rng.random()))

    def _send_state(
        self, out: Ready, peer: PeerId, addrs: tuple[str, ...], response: bool, join: bool
    ) -> None:
        entries = [self._wire_of(member) for member in self._table]
        config = self.config
        for index, chunk in enumerate(
            codec.chunks(entries, config.push_pull_chunk_bytes_max, config.push_pull_chunk_entries_max)
        ):
            reply_wanted = not response and index == 0
            self._send(out, peer, codec.push_pull(chunk, response, reply_wanted, join), addrs)

    def _note_stranger(self, sender: PeerId, now_us: int) -> None:
        # A member messaging us knows us but we do not know it: our views diverged (joins that raced, news
        # we missed). One stranger is held at a time, so a burst of them cannot cost a burst of states.
        if self._leaving or self._table.get(sender) is not None:
            return
        pending = self._stranger
        if pending is None or self._table.get(pending[0]) is not None:
            self._stranger = (sender, now_us)

    def _sync_with_stranger(self, now_us: int, out: Ready) -> None:
        # At a probe tick, a push-pull with a stranger that is still unknown a probe interval after it first
        # messaged us repairs both views now instead of at the next periodic exchange. Waiting costs a
        # second at most and saves nearly every exchange of a join storm: there the stranger is a fresh
        # joiner whose alive update reaches us by gossip within that second anyway.
        pending = self._stranger
        if pending is None:
            return
        peer, seen_us = pending
        if self._table.get(peer) is not None:
            self._stranger = None
            return
        if now_us - seen_us < self.config.probe_interval_ms * US_PER_MS:
            return
        self._stranger = None
        self.counters["stranger_push_pulls"] += 1
        self._send_state(out, peer, (), response=False, join=False)

    def _on_push_pull(self, sender: PeerId, message: codec.PushPull, now_us: int, out: Ready) -> None:
        # The members a push-pull brings announce themselves, so they are not relayed, or every fresh
        # node's join would cost N updates. A join between two meshes is the exception: each side relays
        # the other's members, or most of them would learn of each other only at their next push-pulls.
        # A seed relays what a joiner's state brings (a fresh joiner's state holds just itself); a joiner
        # relays the seed's state only when it asked to join while in a mesh of its own.
        merging = message.join and (not message.response or self._join_merges)
        self._merge(message.entries, sender, now_us, out, relay_new=merging)
        if message.reply_wanted:
            self._send_state(out, sender, self._addrs_of(sender), response=True, join=message.join)
        join = self._join
        if message.response and join is not None and any(seed == sender for seed, _ in join.seeds):
            self._join = None
            out.timers.append(CancelTimer(self.timer_key(_JOIN)))
            self._resyncs_left = _JOIN_RESYNCS
            out.timers.append(SetTimer(self.timer_key(_PUSH_PULL), now_us + self._resync_gap_us(0)))
            result = Joined(seed=sender, attempts=join.attempt, members=self._table.live_count)
            out.apply.append(Reply(join.request_id, value=result))

    def _answer_metadata_query(self, sender: PeerId, query: codec.MetadataQuery, out: Ready) -> None:
        records: list[tuple[list[Any], int]] = []
        for peer in query.peers:
            member = self._table.local if peer == self._local_peer else self._table.get(peer)
            if member is not None:
                record = [peer, member.meta_version, metadata_codec.encode(member.metadata)]
                records.append((record, codec.packed_size_bytes(record)))
        chunk_bytes_max = self.config.push_pull_chunk_bytes_max
        for chunk in codec.chunks(records, chunk_bytes_max, limits.METADATA_RECORDS_MAX):
            self._send(out, sender, codec.metadata_reply(chunk))

    def _apply_metadata(self, reply: codec.MetadataReply) -> None:
        for peer, meta_version, metadata in reply.records:
            member = self._table.get(peer)
            if member is not None and meta_version > member.meta_version:
                member.metadata, member.meta_version = metadata, meta_version
                # Now that we hold it, the transmissions still pending may advertise it.
                if member.state is State.ALIVE and peer in self._queue:
                    self._queue.refresh(peer, *self._wire_of(member))

    # ----- commands -----

    def _on_join(self, request_id: int, command: Join, now_us: int, out: Ready) -> None:
        if self._leaving:
            out.apply.append(
                Reply.fail(request_id, "left", "this node has left the cluster; start a new one")
            )
            return
        if self._join is not None:
            out.apply.append(Reply.fail(request_id, "busy", "a join is already in progress"))
            return
        try:
            seeds = _seeds(command, self._local_peer)
        except ValueError as exc:
            out.apply.append(Reply.fail(request_id, "invalid", str(exc)))
            return
        if not seeds:
            out.apply.append(
                Reply(request_id, value=Joined(seed=None, attempts=0, members=self._table.live_count))
            )
            return
        self._join = _PendingJoin(request_id, seeds)
        self._join_merges = self._table.live_count > 1
        self._join_attempt(now_us, out)

    def _join_attempt(self, now_us: int, out: Ready) -> None:
        join = self._join
        assert join is not None
        for peer, addrs in join.seeds:
            self._send_state(out, peer, addrs, response=False, join=True)
        # Exponential backoff with jitter in [delay/2, delay), so that nodes started together spread out.
        config = self.config
        delay_ms = min(config.join_backoff_max_ms, config.join_backoff_initial_ms << (join.attempt - 1))
        jittered_us = int(delay_ms * US_PER_MS * (0.5 + 0.5 * self._rng.random()))
        out.timers.append(SetTimer(self.timer_key(_JOIN), now_us + max(1, jittered_us)))

    def _on_join_timer(self, now_us: int, out: Ready) -> None:
        join = self._join
        if join is None:
            return
        if join.attempt >= self.config.join_attempts_max:
            self._join = None
            tried = ", ".join(peer for peer, _ in join.seeds)
            error = f"no seed answered after {join.attempt} attempts (seeds: {tried})"
            out.apply.append(Reply.fail(join.request_id, "unreachable", error))
            return
        join.attempt += 1
        self._join_attempt(now_us, out)

    def _on_leave(self, request_id: int, now_us: int, out: Ready) -> None:
        if self._leaving:
            out.apply.append(Reply(request_id, value=0))
            return
        self._leaving = True
        local = self._table.local
        local.incarnation += 1
        self._set_state(local, State.LEFT, now_us, out)
        self._enqueue_member(local, out, now_us)
        out.timers.append(CancelTimer(self.timer_key(_PROBE)))
        out.timers.append(CancelTimer(self.timer_key(_PROBE_TIMEOUT)))
        out.timers.append(CancelTimer(self.timer_key(_PUSH_PULL)))
        out.timers.append(CancelTimer(self.timer_key(_RECONNECT)))
        self._probe = None
        # Tell a few members at once; the gossip timer keeps spreading it while the shell lingers.
        targets = self._table.sample(self._rng, self.config.gossip_nodes, lambda m: m.state is State.ALIVE)
        left = codec.encode_entry(self._entry_of(local))
        for target in targets:
            self._send(out, target.peer, codec.gossip([left]))
        out.apply.append(Reply(request_id, value=len(targets)))

    def _on_update_local_metadata(
        self, request_id: int, command: UpdateLocalMetadata, now_us: int, out: Ready
    ) -> None:
        local = self._table.local
        metadata = local.metadata if command.metadata is None else command.metadata
        addrs = local.addrs if command.addrs is None else tuple(command.addrs)
        try:
            metadata_codec.check_local(metadata, self.config.metadata_bytes_max)
            _check_local_addrs(addrs, self.config.addrs_bytes_max)
        except ValueError as exc:
            out.apply.append(Reply.fail(request_id, "invalid", str(exc)))
            return
        if self._leaving:
            out.apply.append(Reply.fail(request_id, "left", "this node has left the cluster"))
            return
        local.metadata, local.addrs = metadata, addrs
        local.incarnation += 1
        local.meta_version += 1
        self._enqueue_member(local, out, now_us)
        out.apply.append(Reply(request_id, value=local.record()))

    # ----- sending -----

    def _addrs_of(self, peer: PeerId) -> tuple[str, ...]:
        member = self._table.get(peer)
        return () if member is None else member.addrs

    def _send(self, out: Ready, peer: PeerId, message: Message, addrs: tuple[str, ...] | None = None) -> None:
        out.send.append(
            Send(peer, codec.PROTOCOL_ID, message, self._addrs_of(peer) if addrs is None else addrs)
        )
        self._count("sent", message)

    def _count(self, direction: str, message: Message) -> None:
        kind = _MESSAGE_NAMES.get(message["t"], "other")
        if self.config.count_bytes:
            # Measured before any counter moves: a received message that cannot be measured is refused.
            measure = codec.received_size_bytes if direction == "recv" else codec.packed_size_bytes
            self.counters[f"{direction}_bytes.{kind}"] += measure(message)
        self.counters[_COUNTER_NAMES[direction, kind]] += 1


def _gossip_filter(now_us: int, to_dead_us: int) -> Callable[[Member], bool]:
    # Recently dead members still get gossip, so that a falsely accused member learns it and refutes.
    def accept(member: Member) -> bool:
        return member.live or (member.state is State.DEAD and now_us - member.state_changed_us < to_dead_us)

    return accept


def _seeds(command: Join, local_peer: PeerId) -> tuple[tuple[PeerId, tuple[str, ...]], ...]:
    seeds = []
    for seed in command.seeds:
        peer, addrs = seed
        if not isinstance(peer, str) or not peer or any(not isinstance(addr, str) for addr in addrs):
            raise ValueError(f"a seed must be a (peer id, addresses) pair, got {seed!r}")
        if peer != local_peer:
            seeds.append((peer, tuple(addrs)))
    return tuple(seeds)


def _check_local_addrs(addrs: tuple[str, ...], bytes_max: int) -> None:
    if len(addrs) > limits.ADDRS_MAX:
        raise ValueError(f"at most {limits.ADDRS_MAX} listen addresses can be gossiped, got {len(addrs)}")
    for addr in addrs:
        if not isinstance(addr, str) or len(addr) > limits.ADDR_CHARS_MAX:
            raise ValueError(
                f"address {addr!r} is not a string of at most {limits.ADDR_CHARS_MAX} characters"
            )
    size = sum(len(addr.encode()) for addr in addrs)
    if size > bytes_max:
        raise ValueError(f"listen addresses take {size} bytes, above addrs_bytes_max={bytes_max}")
