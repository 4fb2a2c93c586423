"""Bulk transfers: the shell's side of ``Transfer`` effects, on ``/pyagent/transfer/1.0.0``.

A component hands a blob to another peer's component of the same protocol with ``Transfer``; this
service streams it, one new libp2p stream per transfer, chunked, hashed and flow-controlled, and reports
back: ``TransferProgress`` / ``TransferDone`` / ``TransferFailed`` to the sender's core (feedback lane),
``TransferChunk`` / ``TransferReceived`` / ``TransferAborted`` to the receiver's core (bounded lane, in
order). Decisions and measurements: docs/adr/0009-transfer.md.

Wire format (frames of ``pyagent.proto.wire``: varint length, msgpack map with ``v`` = 1 and ``t``). The
dialer is the sender. ``h``, ``digest``: 32-byte BLAKE3.

    sender -> receiver   offer  {p: component protocol id, id: transfer id, size, chunk: chunk size,
                                 from: resume offset, digest: blob digest}
                         chunk  {o: offset, h: blake3(d), d: bytes}          (after an accept only)
    receiver -> sender   accept {from: offset it takes from (the offer's, or 0), window: bytes}
                         refuse {code: unknown-protocol | too-large | too-many-transfers | bad-offer,
                                 reason: words}
                         ack    {acked: cumulative bytes handed to the core}
                         done   {digest}                     (every chunk delivered, digest checked)
                         abort  {reason}                     (then the stream ends)

Chunk ``i`` covers bytes ``i * chunk .. min((i + 1) * chunk, size)``; chunks go in order, from ``from``.
The blob digest is BLAKE3 over the concatenated chunk hashes, so the receiver checks each chunk as it
arrives, the whole blob at the end without holding it, and a resumed blob from the hashes it kept.

Flow control: the sender keeps at most ``window`` unacknowledged bytes on the wire, and reads its source
only as it sends. The receiver reads eagerly (so yamux, whose writer gives up after 5 s without window,
never stalls), verifies, queues at most one window per transfer, and acknowledges a chunk once it is in
the core's inbox. Chunk bytes in that inbox are bounded across all transfers by a byte budget that the
driver releases after it stepped each chunk (``chunk_stepped``).

Resume: an incoming transfer that breaks leaves its verified prefix (length and chunk hashes) in a small
table with expiry. An offer for the same (peer, protocol, transfer id) and blob (size, chunk size, digest)
whose ``from`` lies within that prefix, on a chunk boundary, continues from ``from``; any other offer
starts at 0, and the accept says so.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio
from libp2p.abc import INetStream
from libp2p.io.exceptions import IOException
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.network.stream.net_stream import NetStream

from pyagent._core import BLAKE3_LEN_BYTES, blake3, blake3_chunks
from pyagent.errors import LocalProtocolError, RemoteProtocolError
from pyagent.node.counters import Counters
from pyagent.node.dial_errors import DialError
from pyagent.node.request_response import RequestError
from pyagent.node.streams import finish_stream
from pyagent.proto.events import (
    Event,
    TransferAborted,
    TransferChunk,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferReceived,
)
from pyagent.proto.ready import BlobSource, BytesSource, CancelTransfer, Transfer
from pyagent.proto.wire import FrameDecoder, Limits, Message, encode_frame

__all__ = [
    "PROTOCOL_ID",
    "Abort",
    "Accept",
    "Ack",
    "Chunk",
    "Done",
    "Offer",
    "Refuse",
    "TransferConfig",
    "TransferService",
    "encode",
    "parse_receiver_frame",
    "parse_sender_frame",
]

log = logging.getLogger("pyagent.transfer")

PROTOCOL_ID = "/pyagent/transfer/1.0.0"
VERSION = 1

# ----- wire: frames and their decoders

# Offers and everything the receiver sends are small; only chunk frames are big.
CONTROL_LIMITS = Limits(frame_size_bytes_max=4096, depth_max=2, count_max=32)
# A chunk frame's map, keys and integers around its data; generous.
CHUNK_FRAME_OVERHEAD_BYTES = 256
PROTOCOL_ID_CHARS_MAX = 256
REASON_CHARS_MAX = 512
CODE_CHARS_MAX = 64
# Sizes, offsets and ids are int64 on the wire.
INT_MAX = (1 << 63) - 1
# Telling the sender why its transfer is aborted (and draining what it still sends) must not hold up
# the abort for long.
STREAM_ABORT_TIMEOUT_S = 1.0
REFUSAL_CODES = frozenset({"unknown-protocol", "too-large", "too-many-transfers", "bad-offer"})


@dataclass(frozen=True, slots=True)
class Offer:
    protocol: str
    transfer_id: int
    size: int
    chunk_size: int
    offset: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    digest: bytes
    data: bytes


@dataclass(frozen=True, slots=True)
class Accept:
    offset: int
    window_bytes: int


@dataclass(frozen=True, slots=True)
class Refuse:
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    acked: int


@dataclass(frozen=True, slots=True)
class Done:
    digest: bytes


@dataclass(frozen=True, slots=True)
class Abort:
    reason: str


SenderFrame = Offer | Chunk
ReceiverFrame = Accept | Refuse | Ack | Done | Abort


def encode(frame: SenderFrame | ReceiverFrame, limits: Limits = CONTROL_LIMITS) -> bytes:
    """One wire frame. Long reasons are cut to what the peer's decoder accepts."""
    message: Message
    if isinstance(frame, Offer):
        message = {
            "v": VERSION,
            "t": "offer",
            "p": frame.protocol,
            "id": frame.transfer_id,
            "size": frame.size,
            "chunk": frame.chunk_size,
            "from": frame.offset,
            "digest": frame.digest,
        }
    elif isinstance(frame, Chunk):
        message = {"v": VERSION, "t": "chunk", "o": frame.offset, "h": frame.digest, "d": frame.data}
    elif isinstance(frame, Accept):
        message = {"v": VERSION, "t": "accept", "from": frame.offset, "window": frame.window_bytes}
    elif isinstance(frame, Refuse):
        message = {"v": VERSION, "t": "refuse", "code": frame.code, "reason": frame.reason[:REASON_CHARS_MAX]}
    elif isinstance(frame, Ack):
        message = {"v": VERSION, "t": "ack", "acked": frame.acked}
    elif isinstance(frame, Done):
        message = {"v": VERSION, "t": "done", "digest": frame.digest}
    else:
        message = {"v": VERSION, "t": "abort", "reason": frame.reason[:REASON_CHARS_MAX]}
    return encode_frame(message, limits)


def parse_sender_frame(message: Message) -> SenderFrame:
    """What a sender may say; anything else raises ``RemoteProtocolError``."""
    kind = _envelope(message)
    if kind == "offer":
        _keys(message, {"v", "t", "p", "id", "size", "chunk", "from", "digest"})
        protocol = _text(message, "p", PROTOCOL_ID_CHARS_MAX)
        if not protocol.startswith("/"):
            raise RemoteProtocolError(f"offer names a protocol id that does not start with '/': {protocol!r}")
        size = _int(message, "size", 0, INT_MAX)
        return Offer(
            protocol,
            _int(message, "id", 0, INT_MAX),
            size,
            _int(message, "chunk", 1, INT_MAX),
            _int(message, "from", 0, size),
            _digest(message, "digest"),
        )
    if kind == "chunk":
        _keys(message, {"v", "t", "o", "h", "d"})
        data = message["d"]
        if not isinstance(data, bytes):
            raise RemoteProtocolError("chunk data 'd' must be bytes")
        return Chunk(_int(message, "o", 0, INT_MAX), _digest(message, "h"), data)
    raise RemoteProtocolError(f"unexpected frame type from a sender: {kind!r}")


def parse_receiver_frame(message: Message) -> ReceiverFrame:
    """What a receiver may say; anything else raises ``RemoteProtocolError``."""
    kind = _envelope(message)
    if kind == "accept":
        _keys(message, {"v", "t", "from", "window"})
        return Accept(_int(message, "from", 0, INT_MAX), _int(message, "window", 1, INT_MAX))
    if kind == "refuse":
        _keys(message, {"v", "t", "code", "reason"})
        return Refuse(_text(message, "code", CODE_CHARS_MAX), _text(message, "reason", REASON_CHARS_MAX))
    if kind == "ack":
        _keys(message, {"v", "t", "acked"})
        return Ack(_int(message, "acked", 0, INT_MAX))
    if kind == "done":
        _keys(message, {"v", "t", "digest"})
        return Done(_digest(message, "digest"))
    if kind == "abort":
        _keys(message, {"v", "t", "reason"})
        return Abort(_text(message, "reason", REASON_CHARS_MAX))
    raise RemoteProtocolError(f"unexpected frame type from a receiver: {kind!r}")


def _envelope(message: Message) -> str:
    version = message.get("v")
    if version != VERSION or isinstance(version, bool):
        raise RemoteProtocolError(f"unsupported transfer frame version {version!r}")
    kind = message.get("t")
    assert isinstance(kind, str), "wire.decode_body checks the envelope"
    return kind


def _keys(message: Message, expected: set[str]) -> None:
    if message.keys() != expected:
        raise RemoteProtocolError(
            f"{message['t']} frame has fields {sorted(message)}, expected {sorted(expected)}"
        )


def _int(message: Message, key: str, low: int, high: int) -> int:
    value = message[key]
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RemoteProtocolError(f"{message['t']} field {key!r} must be an integer in [{low}, {high}]")
    return value


def _text(message: Message, key: str, chars_max: int) -> str:
    value = message[key]
    if not isinstance(value, str) or len(value) > chars_max:
        raise RemoteProtocolError(f"{message['t']} field {key!r} must be a string of at most {chars_max}")
    return value


def _digest(message: Message, key: str) -> bytes:
    value = message[key]
    if not isinstance(value, bytes) or len(value) != BLAKE3_LEN_BYTES:
        raise RemoteProtocolError(f"{message['t']} field {key!r} must be {BLAKE3_LEN_BYTES} bytes")
    return value


def chunk_limits(chunk_size_bytes: int) -> Limits:
    """Decoder limits of a stream whose chunks are at most ``chunk_size_bytes``."""
    return Limits(
        frame_size_bytes_max=max(
            chunk_size_bytes + CHUNK_FRAME_OVERHEAD_BYTES, CONTROL_LIMITS.frame_size_bytes_max
        ),
        depth_max=2,
        count_max=32,
    )


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def blob_digest(chunk_hashes: bytes) -> bytes:
    """The blob digest: BLAKE3 of its chunk hashes, concatenated in order."""
    return blake3(chunk_hashes)


# ----- the service

StreamHandler = Callable[[INetStream], Awaitable[None]]


class TransferHost(Protocol):
    """What the service needs of ``pyagent.node.host.Host``."""

    def register_stream_handler(self, protocol_id: str, handler: StreamHandler) -> None: ...

    async def open_stream(self, peer: str, protocol_id: str) -> INetStream: ...

    async def connect(self, maddr: str) -> str: ...

    def connected_peers(self) -> list[str]: ...


class ChunkInbox(Protocol):
    """The bounded lane of the core's inbox (``Driver.inbox``): waiting on it is the backpressure."""

    async def send(self, item: TransferChunk | TransferReceived | TransferAborted) -> None: ...


@dataclass(frozen=True, slots=True)
class TransferConfig:
    # What this node sends with; a resumed transfer must use the same size, so change it with care.
    chunk_size_bytes: int = 1 << 20
    # Largest chunk it accepts from a sender.
    chunk_size_bytes_max: int = 4 << 20
    # Unacknowledged bytes on the wire per transfer: what the receiver may have to queue for it.
    window_bytes: int = 4 << 20
    # Largest blob it accepts, and most chunks per blob (bounds the hash list kept per transfer).
    size_bytes_max: int = 16 << 30
    chunks_max: int = 65_536
    outgoing_max: int = 16
    # Outgoing transfers beyond outgoing_max wait their turn; beyond this many waiting, they fail.
    outgoing_queued_max: int = 256
    incoming_max: int = 16
    # Chunk bytes handed to the core and not yet stepped by it, across all incoming transfers.
    chunk_bytes_queued_max: int = 16 << 20
    # A transfer that makes no progress for this long fails (sender) or aborts (receiver). Time that the
    # receiver spends waiting for its own core does not count.
    stall_timeout_ms: int = 30_000
    # From the stream's opening to the offer (receiver), and from the offer to its answer (sender).
    answer_timeout_ms: int = 10_000
    # TransferProgress at most once per this many acknowledged bytes.
    progress_interval_bytes: int = 8 << 20
    # Broken incoming transfers remembered for a resume, and for how long.
    resume_entries_max: int = 64
    resume_hash_bytes_max: int = 8 << 20
    resume_ttl_ms: int = 600_000
    # Bytes asked of the stream per read.
    read_size_bytes: int = 256 << 10

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            if getattr(self, name) <= 0:
                raise ValueError(f"TransferConfig.{name} must be positive, got {getattr(self, name)}")
        if self.chunk_size_bytes > self.chunk_size_bytes_max:
            raise ValueError("TransferConfig.chunk_size_bytes must not exceed chunk_size_bytes_max")
        if self.chunk_size_bytes_max > self.chunk_bytes_queued_max:
            # Otherwise one chunk could never fit in the budget.
            raise ValueError("TransferConfig.chunk_size_bytes_max must not exceed chunk_bytes_queued_max")
        if self.chunk_size_bytes_max + CHUNK_FRAME_OVERHEAD_BYTES >= 1 << 35:
            raise ValueError("TransferConfig.chunk_size_bytes_max is too large for a frame")


COUNTER_NAMES = (
    "out_started",
    "out_done",
    "out_failed",
    "out_bytes",
    "in_started",
    "in_resumed",
    "in_done",
    "in_aborted",
    "in_refused",
    "in_bytes",
    "protocol_errors",
)


class _Failed(Exception):
    """Ends a transfer with ``reason``; ``keep`` says whether a receiver keeps its prefix for a resume."""

    def __init__(self, reason: str, keep: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keep = keep


class _Frames:
    """Reads frames off a stream; ``None`` when it ends cleanly between frames."""

    def __init__(self, stream: INetStream, limits: Limits, read_size_bytes: int) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(limits)
        self._pending: deque[Message] = deque()
        self._read_size_bytes = read_size_bytes

    def relimit(self, limits: Limits) -> None:
        """New limits from the next frame on; only between frames (the peer waits for our answer)."""
        if self._pending or self._decoder.buffered_bytes:
            raise RemoteProtocolError("frames arrived before the answer to the offer")
        self._decoder = FrameDecoder(limits)

    async def next(self) -> Message | None:
        while not self._pending:
            try:
                data = await self._stream.read(self._read_size_bytes)
            except StreamEOF:
                data = b""
            if not data:
                if self._decoder.buffered_bytes:
                    raise RemoteProtocolError("stream ended inside a frame")
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.popleft()


class _ByteBudget:
    """Chunk bytes queued into the core, across transfers. One chunk always fits an empty budget."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self, amount: int) -> None:
        while self.used and self.used + amount > self.limit:
            await self._lot.park()
        self.used += amount

    def release(self, amount: int) -> None:
        if amount > self.used:
            raise LocalProtocolError(f"released {amount} chunk bytes, but only {self.used} are queued")
        self.used -= amount
        self._lot.unpark_all()


@dataclass(slots=True)
class _Partial:
    """What a broken incoming transfer leaves for a resume: its verified prefix."""

    size: int
    chunk_size: int
    digest: bytes
    received: int
    hashes: bytes
    expires_at: float = 0.0


class _ResumeTable:
    """Verified prefixes by (peer, protocol, transfer id): bounded in entries and in hash bytes, oldest
    evicted first, each kept ``ttl_s``."""

    def __init__(self, entries_max: int, hash_bytes_max: int, ttl_s: float) -> None:
        self._entries: OrderedDict[tuple[str, str, int], _Partial] = OrderedDict()
        self._entries_max = entries_max
        self._hash_bytes_max = hash_bytes_max
        self._hash_bytes = 0
        self._ttl_s = ttl_s

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: tuple[str, str, int], partial: _Partial) -> None:
        self.take(key)
        if len(partial.hashes) > self._hash_bytes_max:
            return
        while self._entries and (
            len(self._entries) >= self._entries_max
            or self._hash_bytes + len(partial.hashes) > self._hash_bytes_max
        ):
            self._remove(next(iter(self._entries)))
        partial.expires_at = trio.current_time() + self._ttl_s
        self._entries[key] = partial
        self._hash_bytes += len(partial.hashes)

    def take(self, key: tuple[str, str, int]) -> _Partial | None:
        now = trio.current_time()
        while self._entries:
            oldest = next(iter(self._entries))
            if self._entries[oldest].expires_at > now:
                break
            self._remove(oldest)
        return self._remove(key) if key in self._entries else None

    def _remove(self, key: tuple[str, str, int]) -> _Partial:
        partial = self._entries.pop(key)
        self._hash_bytes -= len(partial.hashes)
        return partial


@dataclass(eq=False, slots=True)
class _Outgoing:
    transfer: Transfer
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    acked: int = 0
    reported: int = 0


@dataclass(eq=False, slots=True)
class _Incoming:
    key: tuple[str, str, int]
    stream: INetStream
    offer: Offer
    stall_s: float
    start: int
    hashes: bytearray
    # Bytes handed to the core: what the receiver acknowledges and what a resume continues from.
    delivered: int
    received: bool = False
    failure: _Failed | None = None
    waiting_on_core: bool = False
    scope: trio.CancelScope | None = None
    finished: trio.Event = field(default_factory=trio.Event)

    def fail(self, failure: _Failed) -> None:
        if self.failure is None:
            self.failure = failure
        if self.scope is not None:
            self.scope.cancel()

    def wait_on_core(self, waiting: bool) -> None:
        self.waiting_on_core = waiting
        self.touch()

    def touch(self) -> None:
        """Progress: the stall deadline moves on, and stays off while the core is what we wait for."""
        if self.scope is not None:
            self.scope.deadline = math.inf if self.waiting_on_core else trio.current_time() + self.stall_s


class TransferService:
    """Carries out ``Transfer`` / ``CancelTransfer`` effects and serves incoming transfers.

    ``accepts(protocol)`` says whether this node has a component for an incoming transfer's protocol.
    ``feedback`` takes the sender-side events (``Driver.feedback``); ``inbox`` the receiver-side ones
    (``Driver.inbox``). The owner of the core must call ``chunk_stepped`` after stepping each
    ``TransferChunk``, which frees its bytes from the queued-chunk budget.
    """

    def __init__(
        self,
        host: TransferHost,
        inbox: ChunkInbox,
        feedback: Callable[[Event], None],
        accepts: Callable[[str], bool],
        config: TransferConfig | None = None,
    ) -> None:
        self.config = config or TransferConfig()
        self._host = host
        self._inbox = inbox
        self._feedback = feedback
        self._accepts = accepts
        self._counters = Counters(COUNTER_NAMES)
        self._budget = _ByteBudget(self.config.chunk_bytes_queued_max)
        # Every outgoing transfer not yet ended: running, or waiting in `_waiting` for a slot (in order).
        self._outgoing: dict[tuple[str, int], _Outgoing] = {}
        self._waiting: deque[_Outgoing] = deque()
        self._running = 0
        self._incoming: dict[tuple[str, str, int], _Incoming] = {}
        self._resume = _ResumeTable(
            self.config.resume_entries_max,
            self.config.resume_hash_bytes_max,
            self.config.resume_ttl_ms / 1000,
        )
        self._nursery: trio.Nursery | None = None
        host.register_stream_handler(PROTOCOL_ID, self._serve)

    # ----- what the daemon and the driver call

    async def run(self) -> None:
        """Runs outgoing transfers until cancelled. Transfers started before it runs wait for it."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._dispatch()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self._outgoing.clear()
                self._waiting.clear()

    def start(self, transfer: Transfer) -> None:
        """Starts (or queues) an outgoing transfer; never blocks. Its end comes back as exactly one
        ``TransferDone`` or ``TransferFailed`` through ``feedback``."""
        key = (transfer.protocol, transfer.transfer_id)
        if key in self._outgoing:
            raise LocalProtocolError(f"transfer {key} is already running; cancel it or wait for its end")
        if transfer.offset < 0:
            raise LocalProtocolError(f"transfer {key} has a negative offset {transfer.offset}")
        self._counters.add("out_started")
        if len(self._outgoing) >= self.config.outgoing_max + self.config.outgoing_queued_max:
            self._counters.add("out_failed")
            reason = f"busy: {len(self._outgoing)} outgoing transfers running or queued"
            self._feedback(TransferFailed(transfer.protocol, transfer.transfer_id, reason, transfer.offset))
            return
        entry = self._outgoing[key] = _Outgoing(transfer, acked=transfer.offset)
        self._waiting.append(entry)
        self._dispatch()

    def cancel(self, cancel: CancelTransfer) -> None:
        """Stops an outgoing transfer at once: ``TransferFailed(reason="cancelled")`` is reported now,
        and nothing else is reported for it later. Unknown (or already ended) transfers are ignored."""
        entry = self._outgoing.get((cancel.protocol, cancel.transfer_id))
        if entry is not None:
            entry.scope.cancel()
            if entry in self._waiting:
                self._waiting.remove(entry)
            self._end_outgoing(entry, "cancelled")

    def chunk_stepped(self, chunk: TransferChunk) -> None:
        """The owner stepped ``chunk``: its bytes leave the queued-chunk budget."""
        self._budget.release(len(chunk.data))

    def stats(self) -> dict[str, int]:
        snapshot = self._counters.snapshot()
        snapshot["outgoing"] = len(self._outgoing)
        snapshot["incoming"] = len(self._incoming)
        snapshot["resumable"] = len(self._resume)
        snapshot["chunk_bytes_queued"] = self._budget.used
        return snapshot

    # ----- sender

    def _end_outgoing(self, entry: _Outgoing, reason: str | None, digest: bytes = b"") -> None:
        """Reports an outgoing transfer's end, exactly once (a cancel may have reported it already)."""
        transfer = entry.transfer
        key = (transfer.protocol, transfer.transfer_id)
        if self._outgoing.get(key) is not entry:
            return
        del self._outgoing[key]
        if reason is None:
            self._counters.add("out_done")
            self._feedback(
                TransferDone(transfer.protocol, transfer.transfer_id, transfer.source.size, digest)
            )
        else:
            self._counters.add("out_failed")
            log.info("transfer %s to %s failed: %s", key, transfer.peer, reason)
            self._feedback(TransferFailed(transfer.protocol, transfer.transfer_id, reason, entry.acked))

    def _dispatch(self) -> None:
        """Starts waiting transfers, in the order they were started, while slots are free."""
        while self._nursery is not None and self._running < self.config.outgoing_max and self._waiting:
            entry = self._waiting.popleft()
            self._running += 1
            self._nursery.start_soon(self._run_outgoing, entry)

    async def _run_outgoing(self, entry: _Outgoing) -> None:
        try:
            with entry.scope:
                try:
                    digest = await self._send(entry)
                except _Failed as failure:
                    self._end_outgoing(entry, failure.reason)
                    return
                self._end_outgoing(entry, None, digest)
        finally:
            self._running -= 1
            self._dispatch()

    async def _send(self, entry: _Outgoing) -> bytes:
        transfer = entry.transfer
        source = transfer.source
        size = source.size
        chunk_size = self.config.chunk_size_bytes
        await self._connect(transfer)
        hashes = await _hash_source(source, chunk_size)
        digest = blob_digest(hashes)
        # The receiver holds the bytes before `offset`, so it holds those before the chunk boundary too.
        offset = size if transfer.offset >= size else transfer.offset - transfer.offset % chunk_size
        entry.acked = offset
        try:
            stream = await self._host.open_stream(transfer.peer, PROTOCOL_ID)
        except RequestError as exc:
            prefix = "refused" if exc.reason == "refused" else "unreachable"
            raise _Failed(f"{prefix}: {exc}") from None
        failed = True
        try:
            frames = _Frames(stream, CONTROL_LIMITS, self.config.read_size_bytes)
            await stream.write(
                encode(Offer(transfer.protocol, transfer.transfer_id, size, chunk_size, offset, digest))
            )
            answer: Message | None = None
            with trio.move_on_after(self.config.answer_timeout_ms / 1000) as answer_scope:
                answer = await frames.next()
            if answer_scope.cancelled_caught:
                raise _Failed(f"timeout: no answer to the offer within {self.config.answer_timeout_ms} ms")
            if answer is None:
                raise _Failed("stream: the receiver closed the stream instead of answering")
            accepted = _accepted(parse_receiver_frame(answer), offset, chunk_size)
            entry.acked = entry.reported = accepted.offset
            await self._stream_chunks(entry, stream, frames, hashes, digest, accepted)
            failed = False
            return digest
        except RemoteProtocolError as exc:
            self._counters.add("protocol_errors")
            raise _Failed(f"protocol: {exc}") from None
        except (IOException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Failed(f"stream: {exc!r}") from None
        finally:
            await finish_stream(stream, reset=failed)

    async def _connect(self, transfer: Transfer) -> None:
        if transfer.peer in self._host.connected_peers():
            return
        if not transfer.addrs:
            raise _Failed("unreachable: not connected, and the transfer has no address to dial")
        suffix = f"/p2p/{transfer.peer}"
        reason = ""
        for addr in transfer.addrs:
            try:
                await self._host.connect(addr if addr.endswith(suffix) else addr + suffix)
                return
            except (DialError, ValueError) as exc:
                reason = str(exc)
        raise _Failed(f"unreachable: {reason}")

    async def _stream_chunks(
        self,
        entry: _Outgoing,
        stream: INetStream,
        frames: _Frames,
        hashes: bytes,
        digest: bytes,
        accepted: Accept,
    ) -> None:
        """Writes chunks within the window while a second task reads the receiver's acks."""
        source = entry.transfer.source
        size = source.size
        chunk_size = self.config.chunk_size_bytes
        window = min(self.config.window_bytes, accepted.window_bytes)
        stall_s = self.config.stall_timeout_ms / 1000
        acked_changed = trio.lowlevel.ParkingLot()
        failure: list[_Failed] = []
        sent = accepted.offset
        done = False

        def fail(reason: str) -> None:
            failure.append(_Failed(reason))
            nursery.cancel_scope.cancel()

        async def read_acks() -> None:
            nonlocal done
            try:
                while True:
                    message = await frames.next()
                    if message is None:
                        fail("stream: the receiver closed the stream before confirming the blob")
                        return
                    frame = parse_receiver_frame(message)
                    if isinstance(frame, Ack):
                        aligned = frame.acked % chunk_size == 0 or frame.acked == size
                        if not entry.acked <= frame.acked <= sent or not aligned:
                            raise RemoteProtocolError(f"ack of {frame.acked} bytes; {sent} sent")
                        entry.acked = frame.acked
                        nursery.cancel_scope.deadline = trio.current_time() + stall_s
                        acked_changed.unpark_all()
                        self._report_progress(entry, size)
                    elif isinstance(frame, Done):
                        if entry.acked != size or frame.digest != digest:
                            raise RemoteProtocolError(
                                "done before every byte was acknowledged, or wrong digest"
                            )
                        done = True
                        nursery.cancel_scope.cancel()
                        return
                    elif isinstance(frame, Abort):
                        fail(f"aborted: {frame.reason}")
                        return
                    else:
                        raise RemoteProtocolError(
                            f"unexpected {type(frame).__name__.lower()} after the answer"
                        )
            except RemoteProtocolError as exc:
                self._counters.add("protocol_errors")
                fail(f"protocol: {exc}")
            except (IOException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                fail(f"stream: {exc!r}")

        async def write_chunks() -> None:
            nonlocal sent
            limits = chunk_limits(chunk_size)
            try:
                for index in range(accepted.offset // chunk_size, chunk_count(size, chunk_size)):
                    offset = index * chunk_size
                    length = min(chunk_size, size - offset)
                    while offset + length - entry.acked > window:
                        await acked_changed.park()
                    data = await _read_source(source, offset, length)
                    chunk_hash = hashes[index * BLAKE3_LEN_BYTES : (index + 1) * BLAKE3_LEN_BYTES]
                    frame = encode(Chunk(offset, chunk_hash, data), limits)
                    sent = offset + length
                    await stream.write(frame)
                    self._counters.add("out_bytes", length)
                    nursery.cancel_scope.deadline = trio.current_time() + stall_s
            except _Failed as exc:
                fail(exc.reason)
            except (IOException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                fail(f"stream: {exc!r}")

        async with trio.open_nursery() as nursery:
            nursery.cancel_scope.deadline = trio.current_time() + stall_s
            nursery.start_soon(read_acks)
            nursery.start_soon(write_chunks)
        if failure:
            raise failure[0]
        if not done:
            raise _Failed(f"timeout: no progress for {self.config.stall_timeout_ms} ms")

    def _report_progress(self, entry: _Outgoing, size: int) -> None:
        # Coalesced: the feedback lane carries one event per interval, not one per chunk.
        if entry.acked < size and entry.acked - entry.reported >= self.config.progress_interval_bytes:
            entry.reported = entry.acked
            transfer = entry.transfer
            self._feedback(TransferProgress(transfer.protocol, transfer.transfer_id, entry.acked))

    # ----- receiver

    async def _serve(self, stream: INetStream) -> None:
        """The stream handler: one incoming transfer from offer to end. The host contains what escapes."""
        peer = str(stream.muxed_conn.peer_id)
        frames = _Frames(stream, CONTROL_LIMITS, self.config.read_size_bytes)
        message: Message | None = None
        with trio.move_on_after(self.config.answer_timeout_ms / 1000):
            message = await frames.next()
        if message is None:
            await finish_stream(stream, reset=True)
            return
        offer = parse_sender_frame(message)
        if not isinstance(offer, Offer):
            raise RemoteProtocolError("a transfer stream must begin with an offer")
        key = (peer, offer.protocol, offer.transfer_id)
        previous = self._incoming.get(key)
        if previous is not None:
            # The sender gave up on the old stream, which may not have broken on this side yet: end it, so
            # that its verified prefix is remembered before this offer is answered.
            previous.fail(_Failed("superseded: the sender opened a new stream for this transfer"))
            await finish_stream(previous.stream, reset=True)
            with trio.move_on_after(self.config.answer_timeout_ms / 1000):
                await previous.finished.wait()
        refusal = self._refusal(offer)
        if refusal is None and key in self._incoming:
            refusal = Refuse("too-many-transfers", "an earlier stream of this transfer is still ending")
        if refusal is not None:
            self._counters.add("in_refused")
            log.info("refusing transfer %s: %s: %s", key, refusal.code, refusal.reason)
            await stream.write(encode(refusal))
            await finish_stream(stream, reset=False)
            return
        incoming = self._admit(key, stream, offer)
        try:
            frames.relimit(chunk_limits(offer.chunk_size))
            window = max(self.config.window_bytes, offer.chunk_size)
            await stream.write(encode(Accept(incoming.start, window)))
            await self._receive(incoming, frames, window)
        finally:
            del self._incoming[key]
            incoming.finished.set()

    def _refusal(self, offer: Offer) -> Refuse | None:
        config = self.config
        if not self._accepts(offer.protocol):
            return Refuse("unknown-protocol", f"no component speaks {offer.protocol} here")
        if offer.size > config.size_bytes_max:
            return Refuse("too-large", f"{offer.size} bytes is over this node's {config.size_bytes_max}")
        if offer.chunk_size > config.chunk_size_bytes_max:
            return Refuse(
                "bad-offer", f"chunks of {offer.chunk_size} bytes are over {config.chunk_size_bytes_max}"
            )
        if chunk_count(offer.size, offer.chunk_size) > config.chunks_max:
            return Refuse("too-large", f"more than {config.chunks_max} chunks")
        if len(self._incoming) >= config.incoming_max:
            return Refuse("too-many-transfers", f"{len(self._incoming)} incoming transfers already")
        return None

    def _admit(self, key: tuple[str, str, int], stream: INetStream, offer: Offer) -> _Incoming:
        partial = self._resume.take(key)
        start = 0
        hashes = bytearray()
        on_boundary = offer.offset % offer.chunk_size == 0 or offer.offset == offer.size
        if (
            partial is not None
            and (partial.size, partial.chunk_size, partial.digest)
            == (offer.size, offer.chunk_size, offer.digest)
            and offer.offset <= partial.received
            and on_boundary
        ):
            start = offer.offset
            hashes[:] = partial.hashes[: chunk_count(start, offer.chunk_size) * BLAKE3_LEN_BYTES]
            self._counters.add("in_resumed")
        self._counters.add("in_started")
        incoming = _Incoming(key, stream, offer, self.config.stall_timeout_ms / 1000, start, hashes, start)
        self._incoming[key] = incoming
        return incoming

    async def _receive(self, incoming: _Incoming, frames: _Frames, window: int) -> None:
        """Verifies chunks as they arrive (reader) and hands them to the core in order (deliverer).

        The reader never waits for the deliverer: the sender keeps within the window, so the queue between
        them holds at most one window, and yamux's own window never closes on the sender for long."""
        offer = incoming.offer
        peer, protocol, transfer_id = incoming.key
        send_chunk, receive_chunk = trio.open_memory_channel[Chunk](chunk_count(window, offer.chunk_size) + 1)

        async def read() -> None:
            try:
                async with send_chunk:
                    await self._read_chunks(incoming, frames, window, send_chunk)
            except _Failed as exc:
                incoming.fail(exc)
            except RemoteProtocolError as exc:
                self._counters.add("protocol_errors")
                incoming.fail(_Failed(f"protocol: {exc}"))
            except (IOException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                incoming.fail(_Failed(f"stream: {exc!r}"))

        async def deliver() -> None:
            async for chunk in receive_chunk:
                size = len(chunk.data)
                incoming.wait_on_core(True)
                await self._budget.acquire(size)
                try:
                    await self._inbox.send(
                        TransferChunk(peer, protocol, transfer_id, chunk.offset, offer.size, chunk.data)
                    )
                except BaseException:
                    self._budget.release(size)
                    raise
                incoming.delivered = chunk.offset + size
                incoming.wait_on_core(False)
                # A write that fails means a broken stream, which the reader reports; after the last chunk
                # nobody reads, and the verified blob still reaches the core whole.
                await _write_quietly(incoming.stream, encode(Ack(incoming.delivered)))
            if incoming.delivered == offer.size:  # else the reader failed, and said why
                incoming.wait_on_core(True)
                await self._inbox.send(
                    TransferReceived(peer, protocol, transfer_id, offer.size, offer.digest)
                )
                incoming.received = True
                await _write_quietly(incoming.stream, encode(Done(offer.digest)))

        async with trio.open_nursery() as nursery:
            incoming.scope = nursery.cancel_scope
            if incoming.failure is not None:
                nursery.cancel_scope.cancel()  # superseded before it began
            incoming.touch()
            nursery.start_soon(read)
            nursery.start_soon(deliver)
        incoming.scope = None
        self._counters.add("in_bytes", incoming.delivered - incoming.start)
        if incoming.received:
            self._counters.add("in_done")
            await finish_stream(incoming.stream, reset=False)
            return
        failure = incoming.failure or _Failed(f"timeout: no progress for {self.config.stall_timeout_ms} ms")
        await _abort_stream(incoming.stream, failure.reason)
        if failure.keep and incoming.delivered > 0:
            chunks = chunk_count(incoming.delivered, offer.chunk_size)
            self._resume.put(
                incoming.key,
                _Partial(
                    offer.size,
                    offer.chunk_size,
                    offer.digest,
                    incoming.delivered,
                    bytes(incoming.hashes[: chunks * BLAKE3_LEN_BYTES]),
                ),
            )
        self._counters.add("in_aborted")
        log.info(
            "incoming transfer %s aborted after %d bytes: %s",
            incoming.key,
            incoming.delivered,
            failure.reason,
        )
        await self._inbox.send(
            TransferAborted(peer, protocol, transfer_id, incoming.delivered, failure.reason)
        )

    async def _read_chunks(
        self,
        incoming: _Incoming,
        frames: _Frames,
        window: int,
        queue: trio.MemorySendChannel[Chunk],
    ) -> None:
        offer = incoming.offer
        expected = incoming.start
        if expected == offer.size:
            self._check_digest(incoming)
        while expected < offer.size:
            message = await frames.next()
            if message is None:
                raise _Failed(f"stream: ended after {expected} of {offer.size} bytes")
            chunk = parse_sender_frame(message)
            if not isinstance(chunk, Chunk):
                raise RemoteProtocolError("a second offer on one transfer stream")
            length = min(offer.chunk_size, offer.size - expected)
            if chunk.offset != expected or len(chunk.data) != length:
                raise RemoteProtocolError(
                    f"chunk of {len(chunk.data)} bytes at {chunk.offset}, expected {length} at {expected}"
                )
            if expected + length - incoming.delivered > window:
                raise RemoteProtocolError(f"the sender went past the window of {window} bytes")
            if blake3(chunk.data) != chunk.digest:
                raise _Failed(f"hash: the chunk at offset {expected} does not match its hash")
            incoming.hashes += chunk.digest
            expected += length
            if expected == offer.size:
                self._check_digest(incoming)
            incoming.touch()
            await queue.send(chunk)

    def _check_digest(self, incoming: _Incoming) -> None:
        if blob_digest(bytes(incoming.hashes)) != incoming.offer.digest:
            # Every chunk matched its own hash, so the sender's blob is not the one it offered; the prefix
            # held here belongs to another blob and is no basis for a resume.
            raise _Failed("digest: the chunk hashes do not add up to the offered digest", keep=False)


async def _abort_stream(stream: INetStream, reason: str) -> None:
    """Tells the sender why, then ends the stream. A reset right after the abort frame could discard it:
    yamux drops what a reader has not yet taken when a reset arrives. So the frame is followed by an end
    of stream, and the reset waits (bounded) until the sender has reset or closed its side."""
    with trio.move_on_after(STREAM_ABORT_TIMEOUT_S):
        try:
            await stream.write(encode(Abort(reason)))
            if isinstance(stream, NetStream):
                await stream.close_write()
            while await stream.read(CONTROL_LIMITS.frame_size_bytes_max):
                pass
        except (IOException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("transfer stream ended after an abort: %r", exc)
    await finish_stream(stream, reset=True)


async def _write_quietly(stream: INetStream, frame: bytes) -> None:
    try:
        await stream.write(frame)
    except (IOException, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("transfer stream write failed: %r", exc)


def _accepted(answer: ReceiverFrame, offset: int, chunk_size: int) -> Accept:
    if isinstance(answer, Refuse):
        raise _Failed(f"refused: {answer.code}: {answer.reason}")
    if not isinstance(answer, Accept):
        raise RemoteProtocolError(f"expected an accept or a refusal, got {type(answer).__name__.lower()}")
    if answer.offset not in (0, offset):
        raise RemoteProtocolError(f"accept from {answer.offset}: neither 0 nor the offered {offset}")
    if answer.window_bytes < chunk_size:
        raise RemoteProtocolError(f"window of {answer.window_bytes} bytes is under one chunk")
    return answer


async def _hash_source(source: BlobSource, chunk_size: int) -> bytes:
    """The concatenated chunk hashes of ``source``, read one chunk at a time off the event loop."""
    if isinstance(source, BytesSource):
        return await trio.to_thread.run_sync(blake3_chunks, source.data, chunk_size)
    size = source.size
    hashes = bytearray()
    for offset in range(0, size, chunk_size):
        data = await _read_source(source, offset, min(chunk_size, size - offset))
        hashes += blake3(data)
    return bytes(hashes)


async def _read_source(source: BlobSource, offset: int, length: int) -> bytes:
    if isinstance(source, BytesSource):
        data = source.read(offset, length)
    else:
        # A file-backed source may block on the disk; the event loop must not.
        try:
            data = await trio.to_thread.run_sync(source.read, offset, length)
        except OSError as exc:
            raise _Failed(f"source: {exc!r}") from None
    if len(data) != length:
        raise _Failed(f"source: read({offset}, {length}) returned {len(data)} bytes")
    return bytes(data)
