"""What ``NodeCore.step`` hands back: the effects a shell must carry out, in this order.

1. ``persist``: write these records durably (fsync) before anything else, as Raft requires, so a message
   that promises state never leaves before the state is safe.
2. ``send``: deliver these messages; delivery is best effort and unordered across peers. ``Send.addrs``
   are dial hints: where to reach ``peer`` when the shell has no connection to it (membership learns them
   by gossip). A send needs no long-lived connection; the shell may dial, send and let its connection
   cap close the connection later.
3. ``apply``: hand results to whoever waits for them (replies to local requests, notices).
4. ``timers``: set or cancel timers; a set timer later comes back as ``TimerFired``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyagent.proto.types import PeerId, ProtocolId
from pyagent.proto.wire import Message


@dataclass(frozen=True, slots=True)
class Persist:
    key: str
    value: bytes


@dataclass(frozen=True, slots=True)
class Send:
    peer: PeerId
    protocol: ProtocolId
    message: Message
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to ``LocalRequest(request_id)``: ``error`` is None on success."""

    request_id: int
    value: object = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Fire ``TimerFired(key)`` at ``at_us``. Setting a key again replaces the earlier deadline."""

    key: str
    at_us: int


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: str


@dataclass(slots=True)
class Ready:
    persist: list[Persist] = field(default_factory=list)
    send: list[Send] = field(default_factory=list)
    apply: list[Reply] = field(default_factory=list)
    timers: list[SetTimer | CancelTimer] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.persist or self.send or self.apply or self.timers)
