"""The shape of one protocol core inside ``NodeCore``.

A component owns one wire protocol (or none), a timer-key namespace and a storage namespace (both its
``name``), and the local commands whose types it lists. ``NodeCore`` routes each event to the component
that owns it, broadcasts ``Started`` and connection changes to all of them, and checks what each one
puts into the Ready.

Every handler may add effects to ``out``. A handler for a peer's message raises ``RemoteProtocolError``
before changing any state when the message is bad.

A component may defer work to ``on_flush``, which the shell calls once it has stepped every event it had
at hand: the KV store steps its Raft groups for each message and collects their Ready once, so that
many messages share one write batch, one fsync and one frame per peer.
"""

from __future__ import annotations

from typing import ClassVar

from pyagent.proto.events import (
    LocalRequest,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    RequestCancelled,
    SendFailed,
    Started,
    TransferEvent,
)
from pyagent.proto.ready import Ready
from pyagent.proto.types import ProtocolId
from pyagent.proto.wire import DEFAULT_LIMITS, Limits


class Component:
    name: ClassVar[str]
    protocol_id: ClassVar[ProtocolId | None] = None
    limits: ClassVar[Limits] = DEFAULT_LIMITS
    command_types: ClassVar[tuple[type, ...]] = ()

    def timer_key(self, suffix: str) -> str:
        return f"{self.name}/{suffix}"

    def on_started(self, event: Started, now_us: int, out: Ready) -> None:
        """The first event: storage is recovered. Read back durable state here."""

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        """Handle a frame on ``protocol_id``. Raise ``RemoteProtocolError`` before changing any state."""

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        """Handle ``TimerFired`` for a key this component set, with the ``name/`` prefix removed."""

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        """Handle a ``LocalRequest`` whose command type is in ``command_types``."""

    def on_request_cancelled(self, event: RequestCancelled, now_us: int, out: Ready) -> None:
        """A request this component was given has no one waiting any more; its reply is not needed."""

    def on_persisted(self, tag: int, now_us: int, out: Ready) -> None:
        """The write batch this component tagged ``tag`` is durable."""

    def on_send_failed(self, event: SendFailed, now_us: int, out: Ready) -> None:
        """A message this component sent could not be delivered."""

    def on_transfer(self, event: TransferEvent, now_us: int, out: Ready) -> None:
        """Progress of this component's outgoing transfers, and chunks of incoming ones."""

    def on_peer_connected(self, event: PeerConnected, now_us: int, out: Ready) -> None:
        """Called for every component when a peer connects."""

    def on_peer_disconnected(self, event: PeerDisconnected, now_us: int, out: Ready) -> None:
        """Called for every component when a peer disconnects."""

    def on_flush(self, now_us: int, out: Ready) -> None:
        """Called for every component after the events the shell had at hand (one, or a burst): do the
        work deferred from their handlers. Never raises ``RemoteProtocolError``: no peer's bytes are
        being handled here."""
