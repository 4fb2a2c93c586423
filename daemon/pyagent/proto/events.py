"""What the shells feed into ``NodeCore.step``: every input a protocol core ever sees.

Time is never an event field; it is the ``now_us`` argument of ``step``, so one clock drives everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyagent.proto.types import PeerId, ProtocolId
from pyagent.proto.wire import Message


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A decoded frame arrived from ``peer`` on ``protocol``."""

    peer: PeerId
    protocol: ProtocolId
    message: Message


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """A connection to ``peer`` is up and identify told us what it is."""

    peer: PeerId
    addrs: tuple[str, ...] = ()
    protocols: tuple[ProtocolId, ...] = ()
    agent_version: str = ""


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    peer: PeerId


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer that a Ready asked for has come due. ``key`` is the one given in ``SetTimer``."""

    key: str


@dataclass(frozen=True, slots=True)
class LocalRequest:
    """A command from this node's own operator or API. The answer comes back as a ``Reply``."""

    request_id: int
    command: object = field(default=None)


Event = MessageReceived | PeerConnected | PeerDisconnected | TimerFired | LocalRequest
