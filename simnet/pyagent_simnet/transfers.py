"""Bulk transfers between simulated nodes: what a ``Transfer`` effect goes through.

A transfer is a reliable, flow-controlled stream, unlike a frame: a slow link delays it, it never loses
a chunk to loss, and it fails only when an end goes down, its link stays cut (partition or clog) for
``[transfers] stall_timeout_ms``, a chunk arrives damaged (``[transfers] corrupt``), or the sender cancels.

The sender's ``BlobSource`` is read one chunk at a time (``chunk_bytes``), never whole. Each directed
link serializes the chunks of all its transfers at ``bandwidth_bps`` in the order they were sent (so
transfers on one link queue behind each other), and each transfer has at most ``window_chunks`` chunks
unacknowledged: the receiver's acknowledgements pace the sender (backpressure). Chunks of one transfer
arrive in order.

What the cores see: the receiver gets ``TransferChunk`` for each chunk and ``TransferReceived`` when the
blob is complete, or ``TransferAborted`` when it breaks off after at least one chunk; the sender gets
``TransferProgress`` per acknowledged chunk and ``TransferDone`` when the last one is acknowledged, or
``TransferFailed`` (with the acknowledged length, to resume from).

The digest: every chunk (at multiples of ``chunk_bytes`` from the blob's start) is hashed, and the digest
is the hash of the concatenated chunk hashes (a hash list), so it does not depend on where a transfer was
resumed. The hash is BLAKE3 when ``pyagent._core`` provides it, else BLAKE2b-256 (``chunk_hash``).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyagent.errors import LocalProtocolError
from pyagent.proto.events import (
    TransferAborted,
    TransferChunk,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferReceived,
)
from pyagent.proto.ready import CancelTransfer, Transfer
from pyagent_simnet import latency

if TYPE_CHECKING:
    from pyagent_simnet.sim import Sim, SimNode

US_PER_MS = 1_000
US_PER_S = 1_000_000
BITS_PER_BYTE = 8
# BLAKE3 of the empty input: how we recognise a real BLAKE3 in pyagent._core.
_BLAKE3_EMPTY = bytes.fromhex("af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262")


def _pick_hash() -> tuple[str, Callable[[bytes], bytes]]:
    try:
        from pyagent import _core

        blake3 = getattr(_core, "blake3", None)
        if blake3 is not None and blake3(b"") == _BLAKE3_EMPTY:
            return "blake3", blake3
    except Exception:  # no Rust core here, or a blake3 of another shape: use the fallback
        pass
    # Only for a Rust core built without BLAKE3: digests then differ from the daemon's (report.json says
    # which hash ran, as transfer_hash), but a run still checks itself consistently.
    return "blake2b-256", lambda data: hashlib.blake2b(data, digest_size=32).digest()


HASH_NAME, chunk_hash = _pick_hash()


def digest_of(chunk_hashes: list[bytes]) -> bytes:
    """The blob digest: the hash of its chunk hashes, concatenated in order."""
    return chunk_hash(b"".join(chunk_hashes))


class _Stream:
    """One transfer, from its ``Transfer`` effect to its end."""

    __slots__ = (
        "acked",
        "chunks_delivered",
        "dst",
        "dst_epoch",
        "ended",
        "hashes",
        "in_flight",
        "key",
        "last_ack_us",
        "last_arrive_us",
        "next_offset",
        "protocol",
        "received",
        "receiver_done",
        "size",
        "source",
        "src",
        "src_epoch",
        "stalled",
        "transfer_id",
    )

    def __init__(self, src: SimNode, dst: SimNode, transfer: Transfer, size: int, chunks: int) -> None:
        self.src, self.dst = src, dst
        self.src_epoch, self.dst_epoch = src.epoch, dst.epoch
        self.key = (src.index, transfer.protocol, transfer.transfer_id)
        self.protocol = transfer.protocol
        self.transfer_id = transfer.transfer_id
        self.source = transfer.source
        self.size = size
        self.next_offset = self.acked = self.received = transfer.offset
        self.hashes: list[bytes | None] = [None] * chunks
        self.in_flight = 0
        self.chunks_delivered = 0
        self.last_arrive_us = self.last_ack_us = 0
        self.stalled = False
        self.receiver_done = False
        self.ended = False


class Transfers:
    def __init__(self, sim: Sim, config: dict[str, Any], rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.chunk_bytes: int = config["chunk_bytes"]
        self.window: int = config["window_chunks"]
        self.bandwidth_bps: int = config["bandwidth_bps"]
        self.stall_timeout_us = int(config["stall_timeout_ms"] * US_PER_MS)
        self.corrupt: float = config["corrupt"]
        self.in_flight_max: int = config["in_flight_max"]
        # Jitter on top of the region matrix, as for frames (but from the transfers' own generator).
        self.sample_latency_us = latency.build(sim.scenario.network["latency"], "network.latency")
        self.streams: dict[tuple[int, str, int], _Stream] = {}
        self.link_free_at_us: dict[tuple[int, int], int] = {}
        self.counters = {"started": 0, "done": 0, "failed": 0, "chunks": 0, "bytes": 0}

    # ----- the sender's effects

    def start(self, node: SimNode, transfer: Transfer) -> None:
        sim = self.sim
        key = (node.index, transfer.protocol, transfer.transfer_id)
        if key in self.streams:
            raise LocalProtocolError(
                f"{node.peer}: transfer {transfer.transfer_id} on {transfer.protocol} is already running"
            )
        if len(self.streams) >= self.in_flight_max:
            raise LocalProtocolError(f"more than transfers.in_flight_max={self.in_flight_max} transfers")
        size = transfer.source.size
        if not 0 <= transfer.offset <= size:
            raise LocalProtocolError(f"{node.peer}: transfer offset {transfer.offset} outside 0..{size}")
        self.counters["started"] += 1
        target = sim.index_of.get(transfer.peer)
        if target is None:
            self._fail_early(node, transfer, "unreachable: unknown peer", 0)
            return
        dst = sim.nodes[target]
        if not dst.up:
            self._fail_early(node, transfer, "unreachable: peer down", sim.disconnect_detect_us)
            return
        if transfer.protocol not in dst.protocols:
            self._fail_early(node, transfer, "refused: protocol not supported", 2 * self._delay_us(node, dst))
            return
        chunks = -(-size // self.chunk_bytes)
        stream = _Stream(node, dst, transfer, size, chunks)
        self.streams[key] = stream
        for index in range(transfer.offset // self.chunk_bytes):
            stream.hashes[index] = chunk_hash(self._read_chunk(stream, index))
        if transfer.offset == size:
            # Nothing left to send: the receiver already holds it all. It verifies the digest at once.
            at_us = sim.now_us + self._delay_us(node, dst)
            sim.node_call(dst, at_us, self._complete, stream, stream.dst_epoch)
            return
        self._pump(stream)

    def cancel(self, node: SimNode, cancel: CancelTransfer) -> None:
        stream = self.streams.get((node.index, cancel.protocol, cancel.transfer_id))
        if stream is not None:
            self._end(stream, "cancelled", src_delay_us=0, dst_delay_us=self._delay_us(node, stream.dst))

    def _fail_early(self, node: SimNode, transfer: Transfer, reason: str, delay_us: int) -> None:
        self.counters["failed"] += 1
        event = TransferFailed(transfer.protocol, transfer.transfer_id, reason, transfer.offset)
        self.sim.feed(node, self.sim.now_us + delay_us, event)

    # ----- moving chunks

    def _blocked(self, stream: _Stream) -> bool:
        net, src, dst = self.sim.network, stream.src.index, stream.dst.index
        # A stream needs both directions: chunks one way, acknowledgements the other.
        if net.cut and (net.blocked(src, dst) or net.blocked(dst, src)):
            return True
        return net.clogged(src, dst) or net.clogged(dst, src)

    def _read_chunk(self, stream: _Stream, index: int) -> bytes:
        start = index * self.chunk_bytes
        length = min(self.chunk_bytes, stream.size - start)
        data = stream.source.read(start, length)
        if len(data) != length:
            raise LocalProtocolError(
                f"{stream.src.peer}: BlobSource.read({start}, {length}) returned {len(data)} bytes"
            )
        return data

    def _pump(self, stream: _Stream) -> None:
        sim = self.sim
        now_us = sim.now_us
        while not stream.ended and stream.in_flight < self.window and stream.next_offset < stream.size:
            if self._blocked(stream):
                if not stream.stalled:
                    stream.stalled = True
                    sim.schedule(now_us + self.stall_timeout_us, self._stall_check, stream)
                return
            index = stream.next_offset // self.chunk_bytes
            data = self._read_chunk(stream, index)
            stream.hashes[index] = chunk_hash(data)
            piece = data[stream.next_offset - index * self.chunk_bytes :]
            link = (stream.src.index, stream.dst.index)
            free_us = self.link_free_at_us.get(link, now_us)
            depart_us = max(free_us, now_us) + len(piece) * BITS_PER_BYTE * US_PER_S // self.bandwidth_bps
            self.link_free_at_us[link] = depart_us
            arrive_us = max(depart_us + self._delay_us(stream.src, stream.dst), stream.last_arrive_us)
            stream.last_arrive_us = arrive_us
            damaged = bool(self.corrupt) and self.rng.random() < self.corrupt
            chunk = (stream, stream.next_offset, piece, damaged)
            sim.node_call(stream.dst, arrive_us, self._on_chunk, chunk, stream.dst_epoch)
            stream.next_offset += len(piece)
            stream.in_flight += 1

    def _stall_check(self, stream: _Stream) -> None:
        if stream.ended:
            return
        stream.stalled = False
        if self._blocked(stream):
            delay_us = self._delay_us(stream.src, stream.dst)
            self._end(stream, "stalled: link cut", src_delay_us=delay_us, dst_delay_us=delay_us)
            return
        self._pump(stream)

    def _on_chunk(self, chunk: tuple[_Stream, int, bytes, bool]) -> None:
        stream, offset, piece, damaged = chunk
        if stream.ended:
            return
        sim = self.sim
        delay_us = self._delay_us(stream.dst, stream.src)
        if damaged:
            self._end(stream, "chunk hash mismatch", src_delay_us=delay_us, dst_delay_us=0)
            return
        dst = stream.dst
        if stream.protocol not in dst.protocols:
            self._end(stream, "refused: protocol not supported", src_delay_us=delay_us, dst_delay_us=-1)
            return
        stream.received = offset + len(piece)
        stream.chunks_delivered += 1
        self.counters["chunks"] += 1
        self.counters["bytes"] += len(piece)
        index = offset // self.chunk_bytes
        sim.trace.add(
            b"%d C %d %d %d " % (sim.now_us, stream.src.index, dst.index, offset)
            + (stream.hashes[index] or b"")
        )
        peer = stream.src.peer
        sim.step_node(
            dst, TransferChunk(peer, stream.protocol, stream.transfer_id, offset, stream.size, piece)
        )
        if stream.ended or not dst.up:
            return
        if stream.received == stream.size:
            self._complete(stream)
        ack_us = max(sim.now_us + delay_us, stream.last_ack_us)
        stream.last_ack_us = ack_us
        sim.node_call(stream.src, ack_us, self._on_ack, (stream, stream.received), stream.src_epoch)

    def _complete(self, stream: _Stream) -> None:
        """The receiver holds the whole blob: it checks the digest over the hash list."""
        if stream.ended:
            return
        stream.receiver_done = True
        digest = digest_of([h for h in stream.hashes if h is not None])
        event = TransferReceived(stream.src.peer, stream.protocol, stream.transfer_id, stream.size, digest)
        self.sim.step_node(stream.dst, event)
        if stream.acked == stream.size and stream.size == stream.received and stream.in_flight == 0:
            # A transfer with nothing left to send: the sender hears of it one hop later.
            at_us = self.sim.now_us + self._delay_us(stream.dst, stream.src)
            self.sim.node_call(stream.src, at_us, self._on_ack, (stream, stream.size), stream.src_epoch)

    def _on_ack(self, ack: tuple[_Stream, int]) -> None:
        stream, acked = ack
        if stream.ended:
            return
        stream.acked = acked
        stream.in_flight = max(0, stream.in_flight - 1)
        sim = self.sim
        if acked == stream.size:
            stream.ended = True
            del self.streams[stream.key]
            self.counters["done"] += 1
            digest = digest_of([h for h in stream.hashes if h is not None])
            sim.trace.add(b"%d F %d %d done\n" % (sim.now_us, stream.src.index, stream.transfer_id))
            sim.step_node(stream.src, TransferDone(stream.protocol, stream.transfer_id, stream.size, digest))
            return
        sim.step_node(stream.src, TransferProgress(stream.protocol, stream.transfer_id, acked))
        self._pump(stream)

    # ----- ends

    def _end(self, stream: _Stream, reason: str, src_delay_us: int, dst_delay_us: int) -> None:
        """Stop ``stream``: the sender hears ``TransferFailed`` after ``src_delay_us``, and the receiver, if
        it saw any of it and not the end, ``TransferAborted`` after ``dst_delay_us`` (never if < 0)."""
        if stream.ended:
            return
        stream.ended = True
        del self.streams[stream.key]
        self.counters["failed"] += 1
        sim = self.sim
        sim.trace.add(
            b"%d F %d %d %s\n" % (sim.now_us, stream.src.index, stream.transfer_id, reason.encode())
        )
        if src_delay_us >= 0 and stream.src.epoch == stream.src_epoch:
            failed = TransferFailed(stream.protocol, stream.transfer_id, reason, stream.acked)
            sim.feed(stream.src, sim.now_us + src_delay_us, failed, stream.src_epoch)
        if (
            dst_delay_us >= 0
            and stream.chunks_delivered
            and not stream.receiver_done
            and stream.dst.epoch == stream.dst_epoch
        ):
            peer = stream.src.peer
            aborted = TransferAborted(peer, stream.protocol, stream.transfer_id, stream.received, reason)
            sim.feed(stream.dst, sim.now_us + dst_delay_us, aborted, stream.dst_epoch)

    def node_down(self, node: SimNode) -> None:
        """``node`` crashed: each of its transfers fails at the other end once the reset arrives."""
        detect_us = self.sim.disconnect_detect_us
        for stream in [s for s in self.streams.values() if s.src is node or s.dst is node]:
            if stream.src is node:
                self._end(stream, "peer down", src_delay_us=-1, dst_delay_us=detect_us)
            else:
                self._end(stream, "peer down", src_delay_us=detect_us, dst_delay_us=-1)

    def _delay_us(self, src: SimNode, dst: SimNode) -> int:
        base_us = self.sim.network.region_base_us[src.region][dst.region]
        return base_us + self.sample_latency_us(self.rng)

    def set_bandwidth(self, bandwidth_bps: int) -> None:
        self.bandwidth_bps = max(1, bandwidth_bps)

    def figures(self) -> dict[str, Any]:
        if not self.counters["started"]:
            return {}
        figures: dict[str, Any] = {f"transfers_{name}": count for name, count in self.counters.items()}
        figures["transfer_hash"] = HASH_NAME
        return figures
