"""Connections on demand: protocol cores send to peers by id, with addresses as dial hints.

Membership probes members it has never connected to, so a ``Send`` to an unconnected peer with ``addrs``
starts a dial; the frames wait in a small per-peer buffer until the connection is up, and are dropped if the
dial fails (sends are datagrams: SWIM treats the silence as a missed ack, which is what it is). A failed
peer is not redialled until its backoff expires, so a dead member costs one dial per backoff, not one per
probe. Idle connections beyond ``connections_target`` are closed, least recently used first, which keeps
the connection count bounded however large the mesh grows.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from pyagent.node.dial_errors import DialError
from pyagent.proto.events import SendFailed
from pyagent.proto.wire import Message

log = logging.getLogger("pyagent.dialer")


class DialHost(Protocol):
    def send(self, peer: str, protocol_id: str, message: Message) -> None: ...

    async def connect(self, maddr: str) -> str: ...

    async def disconnect(self, peer: str) -> None: ...

    def connected_peers(self) -> list[str]: ...

    def reset_inbound(self, peer: str, protocol_id: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DialerConfig:
    # Well under the host's hard connections_max, so that inbound connections still find room.
    connections_target: int = 128
    # A connection unused for this long may be closed when over the target.
    idle_ms: int = 30_000
    dials_in_flight_max: int = 32
    frames_pending_per_peer_max: int = 16
    backoff_initial_ms: int = 1_000
    backoff_max_ms: int = 8_000
    # Peers remembered for the LRU and backoff policies; beyond it the stalest are forgotten.
    peers_tracked_max: int = 65_536


@dataclass(slots=True)
class _Backoff:
    until_s: float
    delay_ms: int
    # Every address of the failed dial refused it: frames dropped during the backoff say so too.
    nothing_listens: bool


SendFailedCallback = Callable[[SendFailed], None]
"""Told of every frame the dialer gives up on."""


class Dialer:
    def __init__(
        self,
        host: DialHost,
        config: DialerConfig | None = None,
        on_send_failed: SendFailedCallback = lambda failed: None,
    ) -> None:
        self.config = config or DialerConfig()
        self.on_send_failed = on_send_failed
        self._host = host
        self._nursery: trio.Nursery | None = None
        self._pending: dict[str, list[tuple[str, Message]]] = {}
        self._backoff: dict[str, _Backoff] = {}
        # Peers in least-recently-used order; the last entry was used most recently.
        self._last_used: OrderedDict[str, float] = OrderedDict()
        self.dial_failures = 0
        self.frames_dropped = 0
        self._dialing = True

    def attach(self, nursery: trio.Nursery | None) -> None:
        self._nursery = nursery

    def reset_inbound(self, peer: str, protocol_id: str) -> None:
        self._host.reset_inbound(peer, protocol_id)

    def touch(self, peer: str) -> None:
        """Record traffic with ``peer`` (either direction), for the idle-connection policy."""
        self._last_used[peer] = trio.current_time()
        self._last_used.move_to_end(peer)
        if len(self._last_used) > self.config.peers_tracked_max:
            self._last_used.popitem(last=False)

    def drop(self, peer: str) -> None:
        """Close the connection to a peer the mesh declared dead or gone.

        During a partition TCP reports nothing: writes queue in the kernel and go out only at its next
        retransmission, which backs off up to two minutes. A fresh dial after the heal is answered at once,
        so a dead member's connection is closed rather than trusted.
        """
        self._pending.pop(peer, None)
        self._last_used.pop(peer, None)
        if self._nursery is not None and peer in self._host.connected_peers():
            self._nursery.start_soon(self._host.disconnect, peer)

    def stop_dialing(self) -> None:
        """This node is leaving: from now on frames go only to peers still connected. A member that
        heard of the leave closes its connection to us (`drop`), and redialling it to say goodbye again
        would cost a whole handshake for news it already has."""
        self._dialing = False

    def send(self, peer: str, protocol_id: str, message: Message, addrs: tuple[str, ...] = ()) -> None:
        self.touch(peer)
        if peer in self._pending:
            self._buffer(peer, protocol_id, message)
        elif peer in self._host.connected_peers():
            self._host.send(peer, protocol_id, message)
        elif not self._dialing:
            self._drop(peer, protocol_id, "this node is leaving the mesh: no new connections")
        elif not addrs:
            self._host.send(peer, protocol_id, message)  # the host counts the drop
            self.on_send_failed(
                SendFailed(peer, protocol_id, "not connected, and no address to dial is known")
            )
        elif self._may_dial(peer):
            self._pending[peer] = []
            self._buffer(peer, protocol_id, message)
            assert self._nursery is not None, "Dialer.attach(nursery) must run before sends"
            self._nursery.start_soon(self._dial, peer, addrs)
        else:
            backoff = self._backoff.get(peer)
            nothing_listens = backoff is not None and backoff.nothing_listens
            self._drop(peer, protocol_id, self._why_not_dialing(peer), nothing_listens)

    def _may_dial(self, peer: str) -> bool:
        backoff = self._backoff.get(peer)
        in_flight = len(self._pending)
        return in_flight < self.config.dials_in_flight_max and (
            backoff is None or trio.current_time() >= backoff.until_s
        )

    def _why_not_dialing(self, peer: str) -> str:
        backoff = self._backoff.get(peer)
        if backoff is not None and trio.current_time() < backoff.until_s:
            wait_s = backoff.until_s - trio.current_time()
            return f"unreachable: its last dial failed; next try in {wait_s:.1f} s"
        return f"too many dials in flight ({self.config.dials_in_flight_max})"

    def _drop(self, peer: str, protocol_id: str, reason: str, nothing_listens: bool = False) -> None:
        self.frames_dropped += 1
        self.on_send_failed(SendFailed(peer, protocol_id, reason, nothing_listens))

    def _buffer(self, peer: str, protocol_id: str, message: Message) -> None:
        frames = self._pending[peer]
        if len(frames) >= self.config.frames_pending_per_peer_max:
            self._drop(peer, protocol_id, "queue full: frames are waiting for the dial to this peer")
            return
        frames.append((protocol_id, message))

    async def _dial(self, peer: str, addrs: tuple[str, ...]) -> None:
        suffix = f"/p2p/{peer}"
        error: DialError | None = None
        refusals = 0
        for addr in addrs:
            try:
                await self._host.connect(addr if addr.endswith(suffix) else addr + suffix)
            except (DialError, ValueError) as exc:
                error = exc if isinstance(exc, DialError) else None
                refusals += error is not None and error.nothing_listens
                continue
            self._backoff.pop(peer, None)
            for protocol_id, message in self._pending.pop(peer, []):
                self._host.send(peer, protocol_id, message)
            await self._prune_idle()
            return
        reason = f"unreachable: {error}" if error is not None else "unreachable: no address could be dialed"
        nothing_listens = refusals == len(addrs)
        for protocol_id, _ in self._pending.pop(peer, []):
            self._drop(peer, protocol_id, reason, nothing_listens)
        self.dial_failures += 1
        previous = self._backoff.get(peer)
        delay_ms = min(previous.delay_ms * 2, self.config.backoff_max_ms) if previous else 0
        delay_ms = delay_ms or self.config.backoff_initial_ms
        if len(self._backoff) >= self.config.peers_tracked_max:
            now_s = trio.current_time()
            self._backoff = {p: b for p, b in self._backoff.items() if b.until_s > now_s}
        self._backoff[peer] = _Backoff(trio.current_time() + delay_ms / 1000, delay_ms, nothing_listens)
        log.debug("on-demand dial of %s failed (%s); next try in %d ms", peer, error, delay_ms)

    async def _prune_idle(self) -> None:
        connected = set(self._host.connected_peers())
        excess = len(connected) - self.config.connections_target
        if excess <= 0:
            return
        idle_before = trio.current_time() - self.config.idle_ms / 1000
        for peer, last_used in list(self._last_used.items()):
            if excess <= 0 or last_used > idle_before:
                break
            del self._last_used[peer]
            if peer in connected:
                await self._host.disconnect(peer)
                excess -= 1
