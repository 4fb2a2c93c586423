"""What the shells feed into ``NodeCore.step``: every input a protocol core ever sees.

Time is never an event field; it is the ``now_us`` argument of ``step``, so one clock drives everything.

Besides what happens in the world (messages, connections, timers, requests), the shell reports what
became of the effects a core asked for, so that a core that waits for something always has an event
that ends the wait: ``Started`` (storage recovered), ``Persisted``, ``SendFailed``,
``RequestCancelled`` and the transfer events.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyagent.proto.types import PeerId, ProtocolId
from pyagent.proto.wire import Message


@dataclass(frozen=True, slots=True)
class Started:
    """The first event of every core: storage is open and recovered. ``recovered`` is False for a node
    whose storage was empty (a first start, or a wiped disk). Components read what survived through
    their ``NodeContext.storage``."""

    recovered: bool = False


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


@dataclass(frozen=True, slots=True)
class RequestCancelled:
    """Whoever sent ``LocalRequest(request_id)`` stopped waiting (timed out, or the client went away).
    A reply to it would reach nobody; the component may drop the work."""

    request_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class Persisted:
    """The ``WriteBatch`` that ``component`` tagged ``tag`` is durable (as durable as it asked)."""

    component: str
    tag: int


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A ``Send`` to ``peer`` on ``protocol`` could not be delivered; ``reason`` is what the shell knows
    (``unreachable: ...``, ``refused: ...``, ``queue full``). Delivery stays best effort: no
    ``SendFailed`` does not mean the peer processed the message.

    ``nothing_listens``: the peer's every address refused the connection (a TCP reset): its host is up
    and answers, but no process listens where the peer did. A silent address, a partition or a failure
    on our side never sets it, so it tells a crashed process apart from a network that lost packets.
    """

    peer: PeerId
    protocol: ProtocolId
    reason: str
    nothing_listens: bool = False


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """``acked`` bytes of outgoing transfer ``transfer_id`` are confirmed by the receiver."""

    protocol: ProtocolId
    transfer_id: int
    acked: int


@dataclass(frozen=True, slots=True)
class TransferDone:
    """Outgoing transfer ``transfer_id`` arrived whole and the receiver verified ``digest``."""

    protocol: ProtocolId
    transfer_id: int
    size: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """Outgoing transfer ``transfer_id`` stopped. The receiver holds the first ``acked`` bytes, so a new
    ``Transfer`` with ``offset=acked`` resumes it."""

    protocol: ProtocolId
    transfer_id: int
    reason: str
    acked: int


@dataclass(frozen=True, slots=True)
class TransferChunk:
    """Bytes ``offset .. offset + len(data)`` of a blob of ``size`` bytes that ``peer`` is sending.

    The chunk's own hash has been checked. The blob as a whole is verified only when
    ``TransferReceived`` arrives; until then the receiver must treat what it has as provisional.
    """

    peer: PeerId
    protocol: ProtocolId
    transfer_id: int
    offset: int
    size: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TransferReceived:
    """Every chunk of ``peer``'s transfer has arrived and the blob's ``digest`` checked out."""

    peer: PeerId
    protocol: ProtocolId
    transfer_id: int
    size: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class TransferAborted:
    """``peer``'s transfer broke off after ``received`` verified bytes (the sender may resume it)."""

    peer: PeerId
    protocol: ProtocolId
    transfer_id: int
    received: int
    reason: str


TransferEvent = (
    TransferProgress | TransferDone | TransferFailed | TransferChunk | TransferReceived | TransferAborted
)

Event = (
    Started
    | MessageReceived
    | PeerConnected
    | PeerDisconnected
    | TimerFired
    | LocalRequest
    | RequestCancelled
    | Persisted
    | SendFailed
    | TransferEvent
)
