"""``LoraAveraging``: peers merge their LoRA deltas round by round, with no coordinator.

A round (``Contribute``): this peer takes the live members that speak the protocol, lays them out on
the round's grid (``grid``) and runs one step per grid dimension. In each step it sends its current value
to its group as a signed blob (``messages``; a ``Transfer`` per member, encoded by ``values``), the group
agrees on which values arrived (``rounds``) and every member replaces its value by the group's aggregate
over that common set (``aggregate``). The value after the last step is the merged delta
(``AwaitMerged``). Weights travel with the values, so on a full grid with the plain mean every peer ends
with the exact weighted mean of every delta delivered.

Everything is bounded: blob size (``blob_bytes_max``), values per delta (``numel_max``), group size
(``group_size_max``), blobs held for rounds not started yet, waiters, and rounds kept (older ones are
dropped). A malformed or badly signed blob is counted in ``rejected`` and dropped; it never raises.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, ClassVar, Protocol

import numpy as np

from pyagent.errors import RemoteProtocolError
from pyagent.lora.codecs import LoraCodec, LoraErrorFeedback, lora_choose_codec
from pyagent.proto.component import Component
from pyagent.proto.events import (
    LocalRequest,
    MessageReceived,
    PeerDisconnected,
    RequestCancelled,
    TransferAborted,
    TransferChunk,
    TransferDone,
    TransferEvent,
    TransferFailed,
    TransferReceived,
)
from pyagent.proto.identity import Identity
from pyagent.proto.lora import grid, messages, values
from pyagent.proto.lora.aggregate import aggregate
from pyagent.proto.lora.bandwidth import UplinkEstimate
from pyagent.proto.lora.commands import (
    COMMAND_TYPES,
    AwaitMerged,
    Contribute,
    LoraStatus,
    MergeResult,
    RoundFinished,
)
from pyagent.proto.lora.config import AUTO, Config
from pyagent.proto.lora.rounds import Held, Step, Vector
from pyagent.proto.membership.records import LIVE_STATES, MemberRecord, addrs_of
from pyagent.proto.ready import BytesSource, Ready, Reply, Send, SetTimer, Transfer
from pyagent.proto.types import US_PER_MS, US_PER_S, PeerId, Rng

NAME = "lora"
# Requests waiting for a round's result, and incoming blobs being assembled at once.
WAITERS_MAX = 256
INCOMING_MAX = 2 * messages.GROUP_SIZE_CAP
REJECT_REASONS = ("too_large", "too_many", "malformed", "bad_signature", "wrong_length", "not_in_group")


class MembersView(Protocol):
    def members(self) -> list[MemberRecord]: ...


class _Round:
    """This peer's state for one round."""

    def __init__(self, number: int, started_us: int, numel: int, plans: list[grid.StepPlan], me: PeerId):
        self.number = number
        self.started_us = started_us
        self.numel = numel
        self.members = 0
        self.steps = [Step(index, plan, me) for index, plan in enumerate(plans)]
        self.current = 0
        self.gone: set[PeerId] = set()
        self.bytes_sent = 0
        self.bytes_received = 0
        self.timed_out = False
        self.value: Vector = np.zeros(0, dtype=np.float32)
        self.weight = 0.0
        self.contributors: tuple[PeerId, ...] = ()

    @property
    def finished(self) -> bool:
        return self.current >= len(self.steps)


class LoraAveraging(Component):
    name: ClassVar[str] = NAME
    protocol_id = messages.PROTOCOL
    limits = messages.LIMITS
    command_types = COMMAND_TYPES

    def __init__(
        self,
        local_peer: PeerId,
        rng: Rng,
        config: Config,
        members: MembersView,
        identity: Identity,
        hooks: Any = None,
    ) -> None:
        self.local_peer = local_peer
        # Unused by the protocol itself (every choice is a function of round and members); kept so the
        # constructor matches every other component's and a future randomized choice has its generator.
        self._rng = rng
        self.config = config
        self._members = members
        self._identity = identity
        # The plugins' pyagent_lora_transform_delta (hookspecs.py), or None.
        self._hooks = hooks
        self._blob_limits = messages.blob_limits(config.blob_bytes_max)
        self._own_codec = None if config.codec == AUTO else values.codec_for(config, relay=False)
        self._relay_codec = values.codec_for(config, relay=True)
        self._feedback: LoraErrorFeedback | None = None
        self._round: _Round | None = None
        # Finished rounds, kept to answer a slower member whose copy of our report was lost.
        self._past: OrderedDict[int, _Round] = OrderedDict()
        self._last_contributed = -1
        self._results: OrderedDict[int, MergeResult] = OrderedDict()
        self._waiters: dict[int, int] = {}  # request id -> round
        self._incoming: dict[tuple[PeerId, int], bytearray] = {}
        # Our transfers still running: id -> (round, receiver, started, bytes). Ids only grow, so they
        # never repeat.
        self._outgoing: dict[int, tuple[int, PeerId, int, int]] = {}
        self._uplink = UplinkEstimate(config.bandwidth_guess_bytes_per_s)
        # With codec = "auto": the codec the latest round chose for this peer's own delta.
        self._chosen: str | None = None
        self._next_transfer = 0
        self._refused: OrderedDict[tuple[PeerId, int], None] = OrderedDict()
        # Verified blobs for rounds this peer has not started yet, by (round, sender, step), with their
        # size on the wire.
        self._early: dict[tuple[int, PeerId, int], tuple[messages.DeltaBlob, int]] = {}
        self.rounds_completed = 0
        self.bytes_sent_total = 0
        self.bytes_received_total = 0
        self.rejected: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self._last_agreement: float | None = None
        self._last_peers = 0

    @property
    def codec_name(self) -> str:
        return values.describe(self.config, chosen=self._chosen)

    def _own_codec_for(self, state: _Round) -> LoraCodec | None:
        """The codec of this peer's own delta this round: the configured one, or with "auto" the most
        precise one whose frame moves within a quarter of a step at the measured bandwidth."""
        if self.config.codec != AUTO:
            return self._own_codec
        step_s = self.config.round_timeout_ms * US_PER_MS / len(state.steps) / US_PER_S
        codec = lora_choose_codec(self._uplink.bytes_per_s, state.numel, step_s / 4)
        self._chosen = values.describe_codec(codec)
        return codec

    # --- local requests -------------------------------------------------------------------------------

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        command = request.command
        if isinstance(command, Contribute):
            self._contribute(request.request_id, command, now_us, out)
        elif isinstance(command, AwaitMerged):
            self._await(request.request_id, command, out)
        else:
            assert isinstance(command, LoraStatus)
            out.apply.append(Reply(request.request_id, self.status()))

    def on_request_cancelled(self, event: RequestCancelled, now_us: int, out: Ready) -> None:
        self._waiters.pop(event.request_id, None)

    def status(self) -> dict[str, Any]:
        current = self._round
        return {
            "round": None if current is None else current.number,
            "round_finished": current is None or current.finished,
            "rounds_completed": self.rounds_completed,
            "peers_last_round": self._last_peers,
            # The share of the last round's members whose deltas reached this peer's result.
            "agreement_last_round": self._last_agreement,
            "bytes_sent": self.bytes_sent_total,
            "bytes_received": self.bytes_received_total,
            "codec": self.codec_name,
            "rejected": dict(self.rejected),
            "numel_max": self.config.numel_max,
        }

    def _contribute(self, request_id: int, command: Contribute, now_us: int, out: Ready) -> None:
        if command.round <= self._last_contributed:
            code = "stale_round" if command.round < self._last_contributed else "invalid"
            message = (
                f"round {command.round} is not after round {self._last_contributed}, already contributed"
            )
            out.apply.append(Reply.fail(request_id, code, message))
            return
        problem = _delta_problem(command.delta, self.config.numel_max) or _weight_problem(command.weight)
        delta = command.delta
        if problem is None and self._hooks is not None:
            replaced = self._hooks.pyagent_lora_transform_delta(round=command.round, delta=command.delta)
            if replaced is not None:
                problem = _delta_problem(replaced, self.config.numel_max)
                if problem is None and replaced.shape != command.delta.shape:
                    problem = "pyagent_lora_transform_delta changed the delta's shape"
                if problem is not None:
                    problem = f"pyagent_lora_transform_delta's replacement: {problem}"
                delta = replaced
        if problem is not None:
            out.apply.append(Reply.fail(request_id, "invalid", problem))
            return
        if self._round is not None and not self._round.finished:
            # A newer round replaces an unfinished one: it ends now with what it has.
            self._round.timed_out = True
            while not self._round.finished:
                self._decide(self._round, now_us, out)
        self._last_contributed = command.round
        # The codecs read the array in place: it must be one contiguous block.
        self._start_round(command.round, np.ascontiguousarray(delta), float(command.weight), now_us, out)
        out.apply.append(Reply(request_id))

    def _await(self, request_id: int, command: AwaitMerged, out: Ready) -> None:
        result = self._results.get(command.round)
        if result is not None:
            out.apply.append(Reply(request_id, result))
            return
        if command.round < self._last_contributed:
            out.apply.append(
                Reply.fail(request_id, "stale_round", f"round {command.round} is no longer kept")
            )
            return
        if len(self._waiters) >= WAITERS_MAX:
            out.apply.append(
                Reply.fail(request_id, "busy", f"{WAITERS_MAX} requests already wait for rounds")
            )
            return
        self._waiters[request_id] = command.round

    # --- rounds ---------------------------------------------------------------------------------------

    def _live_members(self) -> list[PeerId]:
        peers = {
            record.peer
            for record in self._members.members()
            if record.state in LIVE_STATES and messages.PROTOCOL in record.metadata.protocols
        }
        peers.add(self.local_peer)
        return sorted(peers)

    def _start_round(self, number: int, delta: Vector, weight: float, now_us: int, out: Ready) -> None:
        members = self._live_members()
        plans = grid.plan(number, members, self.local_peer, self.config.group_size_max)
        state = _Round(number, now_us, delta.size, plans, self.local_peer)
        # Transfers of earlier rounds that never reported back are not followed any more.
        self._outgoing.clear()
        state.members = len(members)
        state.weight = weight
        state.contributors = (self.local_peer,)
        if self._feedback is None or self._feedback.shape != delta.shape:
            self._feedback = LoraErrorFeedback(delta.shape) if self.config.error_feedback else None
        state.value = delta
        if self._round is not None:
            self._past[self._round.number] = self._round
            while len(self._past) > self.config.rounds_kept:
                self._past.popitem(last=False)
        self._round = state
        for index in range(len(state.steps)):
            share_us = self.config.round_timeout_ms * US_PER_MS // len(state.steps)
            # Peers start a round at different times (each when its training ends), so values are
            # waited for most of the step; the last quarter is left for the reports.
            frames_us = now_us + index * share_us + share_us * 3 // 4
            out.timers.append(SetTimer(self._key("frames", number, index), frames_us))
            out.timers.append(SetTimer(self._key("decide", number, index), now_us + (index + 1) * share_us))
        out.timers.append(SetTimer(self.timer_key("retry"), now_us + self.config.report_retry_ms * US_PER_MS))
        for key in sorted(k for k in self._early if k[0] <= number):
            blob, size = self._early.pop(key)
            if key[0] == number:
                state.bytes_received += size
                self._accept(key[1], blob, now_us, out)
        if state.finished:  # alone in the mesh: the merged delta is this peer's own
            self._finish(state, now_us, out)
        self._advance(state, now_us, out)

    def _key(self, kind: str, number: int, step: int) -> str:
        return self.timer_key(f"{kind}/{number}/{step}")

    def _advance(self, state: _Round, now_us: int, out: Ready) -> None:
        """Do what the current step allows: send, report, decide; and on to the next step."""
        while not state.finished:
            step = state.steps[state.current]
            if not step.sent:
                self._send_value(state, step, now_us, out)
            if step.my_report is None:
                step.given_up |= step.missing_from_reports() | (state.gone & set(step.other_senders))
                if not step.frames_settled():
                    return
                self._send_report(state, step, step.other_receivers, out)
            _, pending = step.common_set()
            if pending:
                return
            self._decide(state, now_us, out)

    def _send_value(self, state: _Round, step: Step, now_us: int, out: Ready) -> None:
        step.sent = True
        first = state.current == 0
        codec = self._own_codec_for(state) if first else self._relay_codec
        feedback = self._feedback if first else None
        if step.plan.senders == (self.local_peer,):
            step.held[self.local_peer] = Held(state.weight, state.contributors, state.value)
            return
        # Even with no one to send to, this peer averages the decoded value: the other groups of its
        # block get its unit's value decoded, and every group must average the same numbers.
        encoded = values.encode(state.value, codec, feedback)
        step.held[self.local_peer] = Held(state.weight, state.contributors, encoded.values)
        blob = messages.DeltaBlob(
            state.number,
            state.current,
            state.weight,
            state.contributors,
            state.numel,
            encoded.encoding,
            encoded.payload,
        )
        signature = self._identity.sign(messages.signed_bytes(self.local_peer, blob))
        data = messages.encode_blob(_signed(blob, signature))
        source = BytesSource(data)
        for peer in step.plan.send_to:
            if peer in state.gone:
                continue
            self._next_transfer += 1
            self._outgoing[self._next_transfer] = (state.number, peer, now_us, len(data))
            # With the peer's addresses: two members that only ever heard of each other through a third
            # are not connected yet, and the transfer must be able to dial.
            addrs = addrs_of(self._members.members(), peer)
            out.transfers.append(Transfer(peer, messages.PROTOCOL, self._next_transfer, source, addrs=addrs))
            state.bytes_sent += len(data)

    def _send_report(self, state: _Round, step: Step, peers: tuple[PeerId, ...], out: Ready) -> None:
        have = step.my_report if step.my_report is not None else step.report()
        report = messages.Report(state.number, step.index, have, frozenset(step.reports))
        message = messages.encode_report(report)
        for peer in peers:
            out.send.append(Send(peer, messages.PROTOCOL, message, addrs_of(self._members.members(), peer)))

    def _decide(self, state: _Round, now_us: int, out: Ready) -> None:
        """End the current step with the common set as it stands, and aggregate over it."""
        step = state.steps[state.current]
        if not step.sent:
            self._send_value(state, step, now_us, out)
        if step.my_report is None:
            self._send_report(state, step, step.other_receivers, out)
        common, _ = step.common_set()
        used = sorted(peer for peer in common if peer in step.held) or [self.local_peer]
        held = [step.held[peer] for peer in used]
        if len(held) == 1:
            value = held[0].values
        else:
            rows = np.stack([item.values for item in held])
            weights = np.array([item.weight for item in held], dtype=np.float64)
            value = aggregate(rows, weights, self.config)
        state.value = value
        state.weight = sum(item.weight for item in held)
        state.contributors = tuple(sorted({peer for item in held for peer in item.contributors}))
        step.decided = True
        state.current += 1
        if state.finished:
            self._finish(state, now_us, out)

    def _finish(self, state: _Round, now_us: int, out: Ready) -> None:
        result = MergeResult(
            state.number,
            state.value,
            state.weight,
            state.contributors,
            state.bytes_sent,
            state.bytes_received,
            self.codec_name,
        )
        self._results[state.number] = result
        while len(self._results) > self.config.rounds_kept:
            self._results.popitem(last=False)
        for step in state.steps:
            step.held.clear()  # the values are merged; only the reports may still be asked for
        self.rounds_completed += 1
        self.bytes_sent_total += state.bytes_sent
        self.bytes_received_total += state.bytes_received
        self._last_peers = len(state.contributors)
        self._last_agreement = len(state.contributors) / state.members
        for request_id, number in list(self._waiters.items()):
            if number == state.number:
                del self._waiters[request_id]
                out.apply.append(Reply(request_id, result))
        out.notices.append(
            RoundFinished(
                state.number,
                len(state.contributors),
                state.weight,
                now_us - state.started_us,
                state.bytes_sent,
                state.bytes_received,
                state.timed_out,
            )
        )

    # --- timers ---------------------------------------------------------------------------------------

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        state = self._round
        if suffix == "retry":
            if state is not None and not state.finished:
                self._retry_reports(state, out)
                out.timers.append(
                    SetTimer(self.timer_key("retry"), now_us + self.config.report_retry_ms * US_PER_MS)
                )
            return
        kind, number, index = suffix.split("/")
        if state is None or state.number != int(number) or state.current > int(index):
            return
        if kind == "frames":
            step = state.steps[int(index)]
            step.given_up |= set(step.other_senders) - set(step.held)
            if state.current == int(index):
                self._advance(state, now_us, out)
            return
        state.timed_out = True
        while not state.finished and state.current <= int(index):
            self._decide(state, now_us, out)
        self._advance(state, now_us, out)

    def _retry_reports(self, state: _Round, out: Ready) -> None:
        step = state.steps[state.current]
        if step.my_report is not None:
            silent = tuple(
                peer for peer in step.other_receivers if peer not in step.reports and peer not in state.gone
            )
            self._send_report(state, step, silent, out)

    # --- the network ----------------------------------------------------------------------------------

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        report = messages.decode_report(event.message)
        state = self._round
        if state is None or report.round != state.number:
            state = self._past.get(report.round)
        if state is None or report.step >= len(state.steps):
            return
        step = state.steps[report.step]
        if event.peer not in step.other_receivers:
            raise RemoteProtocolError(
                f"report from {event.peer}, not in this peer's group of step {report.step}"
            )
        known = step.reports.get(event.peer)
        if known is not None and known != report.have:
            raise RemoteProtocolError(f"{event.peer} changed its report for round {report.round}")
        step.reports[event.peer] = report.have
        if step.my_report is not None and self.local_peer not in report.got:
            self._send_report(state, step, (event.peer,), out)
        if not state.finished and state.current == step.index:
            self._advance(state, now_us, out)

    def on_peer_disconnected(self, event: PeerDisconnected, now_us: int, out: Ready) -> None:
        self._peer_gone(event.peer, now_us, out)

    def on_transfer(self, event: TransferEvent, now_us: int, out: Ready) -> None:
        match event:
            case TransferChunk():
                self._on_chunk(event)
            case TransferReceived():
                data = self._incoming.pop((event.peer, event.transfer_id), None)
                if data is not None and len(data) == event.size:
                    self._on_blob(event.peer, bytes(data), now_us, out)
            case TransferAborted():
                self._incoming.pop((event.peer, event.transfer_id), None)
                self._peer_gone(event.peer, now_us, out)
            case TransferFailed():
                # The peer we sent to is unreachable or gone: its value will not come either.
                target = self._outgoing.pop(event.transfer_id, None)
                if target is not None and target[0] == self._round_number():
                    self._peer_gone(target[1], now_us, out)
            case TransferDone():
                sent = self._outgoing.pop(event.transfer_id, None)
                if sent is not None:
                    self._uplink.observe(sent[3], now_us - sent[2])
            case _:
                pass

    def _round_number(self) -> int | None:
        return None if self._round is None else self._round.number

    def _peer_gone(self, peer: PeerId, now_us: int, out: Ready) -> None:
        state = self._round
        if state is None or state.finished or peer == self.local_peer:
            return
        state.gone.add(peer)
        self._advance(state, now_us, out)

    def _on_chunk(self, event: TransferChunk) -> None:
        key = (event.peer, event.transfer_id)
        if key in self._refused:
            return
        buffer = self._incoming.get(key)
        reason = None
        if event.size > self.config.blob_bytes_max:
            reason = "too_large"
        elif buffer is None and len(self._incoming) >= INCOMING_MAX:
            reason = "too_many"
        elif (0 if buffer is None else len(buffer)) != event.offset:
            reason = "malformed"
        if reason is not None:
            self._reject(reason)
            self._incoming.pop(key, None)
            self._refused[key] = None
            while len(self._refused) > INCOMING_MAX:
                self._refused.popitem(last=False)
            return
        if buffer is None:
            buffer = self._incoming[key] = bytearray()
        buffer += event.data

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def _on_blob(self, peer: PeerId, data: bytes, now_us: int, out: Ready) -> None:
        try:
            blob = messages.decode_blob(data, self._blob_limits, self.config.numel_max)
        except RemoteProtocolError:
            self._reject("malformed")
            return
        if not self._identity.verify(peer, messages.signed_bytes(peer, blob), blob.signature):
            self._reject("bad_signature")
            return
        state = self._round
        if blob.round > self._last_contributed:
            if (
                blob.round <= self._last_contributed + self.config.rounds_kept
                and len(self._early) < INCOMING_MAX
            ):
                self._early[(blob.round, peer, blob.step)] = (blob, len(data))
            return
        if state is None or blob.round != state.number or state.finished:
            return
        state.bytes_received += len(data)
        self._accept(peer, blob, now_us, out)

    def _accept(self, peer: PeerId, blob: messages.DeltaBlob, now_us: int, out: Ready) -> None:
        """A verified blob of the current round: hold its values in its step, if it belongs there."""
        state = self._round
        assert state is not None and blob.round == state.number
        if blob.step >= len(state.steps) or peer not in state.steps[blob.step].other_senders:
            self._reject("not_in_group")
            return
        step = state.steps[blob.step]
        if step.decided or peer in step.held:
            return
        if blob.numel != state.numel or (blob.step == 0 and blob.contributors != (peer,)):
            self._reject("wrong_length" if blob.numel != state.numel else "malformed")
            step.given_up.add(peer)
        else:
            try:
                decoded = values.decode_payload(blob.encoding, blob.payload, blob.numel)
            except RemoteProtocolError:
                self._reject("malformed")
                step.given_up.add(peer)
            else:
                step.held[peer] = Held(blob.weight, blob.contributors, decoded)
        if state.steps[state.current] is step:
            self._advance(state, now_us, out)


def _delta_problem(delta: object, numel_max: int) -> str | None:
    if not isinstance(delta, np.ndarray) or delta.ndim != 1 or delta.dtype != np.float32:
        return "delta must be a 1-D numpy float32 array"
    if not 1 <= delta.size <= numel_max:
        return f"delta must hold 1..{numel_max} values, got {delta.size}"
    if not np.isfinite(delta).all():
        return "delta must be finite"
    return None


def _weight_problem(weight: object) -> str | None:
    if not isinstance(weight, int | float) or not math.isfinite(weight) or weight <= 0:
        return f"weight must be a positive finite number, got {weight!r}"
    return None


def _signed(blob: messages.DeltaBlob, signature: bytes) -> messages.DeltaBlob:
    return messages.DeltaBlob(
        blob.round,
        blob.step,
        blob.weight,
        blob.contributors,
        blob.numel,
        blob.encoding,
        blob.payload,
        signature,
    )
