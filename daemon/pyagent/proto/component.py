"""The shape of one protocol core inside ``NodeCore``.

A component owns one wire protocol (or none), a timer-key namespace (its ``name``) and the local
commands whose types it lists. ``NodeCore`` routes each event to the component that owns it and
broadcasts connection changes to all of them.
"""

from __future__ import annotations

from typing import ClassVar

from pyagent.proto.events import LocalRequest, MessageReceived, PeerConnected, PeerDisconnected
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

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        """Handle a frame on ``protocol_id``. Raise ``RemoteProtocolError`` before changing any state."""

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        """Handle ``TimerFired`` for a key this component set, with the ``name/`` prefix removed."""

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        """Handle a ``LocalRequest`` whose command type is in ``command_types``."""

    def on_peer_connected(self, event: PeerConnected, now_us: int, out: Ready) -> None:
        """Called for every component when a peer connects."""

    def on_peer_disconnected(self, event: PeerDisconnected, now_us: int, out: Ready) -> None:
        """Called for every component when a peer disconnects."""
