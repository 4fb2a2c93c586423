"""Application-level ping on ``/pyagent/ping/1.0.0``: the first protocol through the sans-I/O seam.

libp2p's own ``/ipfs/ping/1.0.0`` stays enabled for interop; this one measures RTT through our framing
and our core, which is the path every PyAgent protocol takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pyagent.errors import RemoteProtocolError
from pyagent.proto.component import Component
from pyagent.proto.events import LocalRequest, MessageReceived
from pyagent.proto.peers import PeerTable
from pyagent.proto.ready import CancelTimer, Ready, Reply, Send, SetTimer
from pyagent.proto.types import US_PER_MS, PeerId, Rng
from pyagent.proto.wire import Limits

PROTOCOL_ID = "/pyagent/ping/1.0.0"
VERSION = 1
NONCE_BITS = 64


@dataclass(frozen=True, slots=True)
class PingPeer:
    """Local command: ping ``peer``; the reply value is the round-trip time in microseconds."""

    peer: PeerId


@dataclass(slots=True)
class Config:
    timeout_ms: int = 5_000
    pings_in_flight_max: int = 256


@dataclass(frozen=True, slots=True)
class _Pending:
    request_id: int
    peer: PeerId
    sent_us: int


class Ping(Component):
    name: ClassVar[str] = "ping"
    protocol_id: ClassVar[str] = PROTOCOL_ID
    limits: ClassVar[Limits] = Limits(frame_size_bytes_max=256, depth_max=2, count_max=16)
    command_types: ClassVar[tuple[type, ...]] = (PingPeer,)

    def __init__(self, rng: Rng, peers: PeerTable, config: Config | None = None) -> None:
        self.config = config or Config()
        self._rng = rng
        self._peers = peers
        self._pending: dict[int, _Pending] = {}

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        assert isinstance(request.command, PingPeer)
        if len(self._pending) >= self.config.pings_in_flight_max:
            out.apply.append(Reply.fail(request.request_id, "busy", "too many pings in flight; try again"))
            return
        nonce = self._rng.getrandbits(NONCE_BITS)
        while nonce in self._pending:
            nonce = self._rng.getrandbits(NONCE_BITS)
        self._pending[nonce] = _Pending(request.request_id, request.command.peer, now_us)
        out.send.append(Send(request.command.peer, PROTOCOL_ID, {"v": VERSION, "t": "ping", "nonce": nonce}))
        out.timers.append(SetTimer(self.timer_key(str(nonce)), now_us + self.config.timeout_ms * US_PER_MS))

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        kind, nonce = event.message["t"], event.message.get("nonce")
        if kind not in ("ping", "pong"):
            raise RemoteProtocolError(f"unknown ping message type {kind!r}")
        if not isinstance(nonce, int) or isinstance(nonce, bool) or not 0 <= nonce < (1 << NONCE_BITS):
            raise RemoteProtocolError("ping nonce must be an unsigned 64-bit integer")
        if kind == "ping":
            out.send.append(Send(event.peer, PROTOCOL_ID, {"v": VERSION, "t": "pong", "nonce": nonce}))
            return
        pending = self._pending.get(nonce)
        if pending is None or pending.peer != event.peer:
            return  # a late pong after its timeout, or not ours: nothing to do
        del self._pending[nonce]
        rtt_us = now_us - pending.sent_us
        self._peers.record_rtt(event.peer, rtt_us)
        out.apply.append(Reply(pending.request_id, value=rtt_us))
        out.timers.append(CancelTimer(self.timer_key(str(nonce))))

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        pending = self._pending.pop(int(suffix), None)
        if pending is not None:
            out.apply.append(
                Reply.fail(pending.request_id, "timeout", f"no pong within {self.config.timeout_ms} ms")
            )
