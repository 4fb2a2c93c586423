"""What ``NodeCore.step`` hands back: the effects a shell must carry out, and in which order.

A shell never carries out a Ready itself: it hands it to ``pyagent.proto.interpret.Interpreter``, which
keeps the order below and calls the shell's sink. The order, in the words of etcd raft's Ready/Advance
and raft-rs's ``messages()`` / ``persisted_messages()``:

1. ``writes`` start at once. The shell makes them durable in the order it was given them (across
   Readies too) and feeds ``Persisted`` for each.
2. ``send_before_persist``, ``apply_before_persist``, ``timers`` and ``notices`` are carried out at
   once. A Raft leader's appends go here: the leader may send them before its own fsync (Raft thesis
   §10.2.1). So do answers whose promise is already durable elsewhere: a write that Raft committed is
   on a quorum's disks, so its answer need not wait for this node's batch, which holds only its
   applied state (rebuilt from the log after a crash) and unrelated new entries.
3. ``send``, ``apply`` (replies) and ``transfers`` wait until every write of this Ready, and of every
   earlier Ready, is durable. That is the safe default: a vote, an acknowledgement or a reply to a
   client never leaves before the state it promises is on disk. They are released in Ready order.

Everything a component puts here is checked by ``NodeCore`` before the Ready leaves ``step``: a
component sends only on its own protocol, sets only its own timers, writes only its own namespace, and
replies only to requests it was given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pyagent.proto.storage import WriteBatch
from pyagent.proto.types import PeerId, ProtocolId
from pyagent.proto.wire import Message


@dataclass(frozen=True, slots=True)
class Send:
    """A message to ``peer``. ``addrs`` are dial hints for a peer the shell has no connection to."""

    peer: PeerId
    protocol: ProtocolId
    message: Message
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplyError:
    """Why a local request failed: a stable ``code`` for programs, a ``message`` for people, and
    ``data`` a program can act on (for example ``{"leader_hint": peer}`` with code ``not_leader``)."""

    code: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to ``LocalRequest(request_id)``: ``error`` is None on success."""

    request_id: int
    value: object = None
    error: ReplyError | None = None

    @classmethod
    def fail(cls, request_id: int, code: str, message: str, **data: Any) -> Reply:
        return cls(request_id, error=ReplyError(code, message, data))


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Fire ``TimerFired(key)`` at ``at_us``. Setting a key again replaces the earlier deadline."""

    key: str
    at_us: int


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: str


class BlobSource(Protocol):
    """The bytes of a ``Transfer``: read in chunks by the shell, so nobody has to hold the whole blob.

    ``read`` must return exactly ``length`` bytes (fewer only at the end) and the same bytes every time
    it is asked for the same range, because a resumed transfer reads a range again.
    """

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class BytesSource:
    """A blob held in memory (an adapter delta, a small snapshot)."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


@dataclass(frozen=True, slots=True)
class Transfer:
    """Stream ``source`` to ``peer``, to the component that speaks ``protocol`` there.

    ``transfer_id`` is the sending component's own label; progress, completion and failure come back
    as ``TransferProgress`` / ``TransferDone`` / ``TransferFailed`` with it. ``offset`` resumes a
    transfer that failed: the receiver already holds the bytes before it (``TransferFailed`` says how
    many it acknowledged).
    """

    peer: PeerId
    protocol: ProtocolId
    transfer_id: int
    source: BlobSource
    offset: int = 0
    addrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CancelTransfer:
    """Stop an outgoing transfer; it ends with ``TransferFailed(reason="cancelled")``."""

    protocol: ProtocolId
    transfer_id: int


@dataclass(slots=True)
class Ready:
    writes: list[WriteBatch] = field(default_factory=list)
    send_before_persist: list[Send] = field(default_factory=list)
    send: list[Send] = field(default_factory=list)
    apply_before_persist: list[Reply] = field(default_factory=list)
    apply: list[Reply] = field(default_factory=list)
    notices: list[object] = field(default_factory=list)
    timers: list[SetTimer | CancelTimer] = field(default_factory=list)
    transfers: list[Transfer | CancelTransfer] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (
            self.writes
            or self.send_before_persist
            or self.send
            or self.apply_before_persist
            or self.apply
            or self.notices
            or self.timers
            or self.transfers
        )
