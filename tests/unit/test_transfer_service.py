"""TransferService over two real Hosts on 127.0.0.1: what each side's core is told, and when."""

from __future__ import annotations

import os
import threading
import time

import pytest
import trio
from libp2p import generate_new_ed25519_identity
from libp2p.io.exceptions import IOException
from libp2p.network.stream.net_stream import NetStream
from transfer_harness import COMPONENT, Peer, connected_pair, digest_of, running_peer

from pyagent._core import blake3
from pyagent.errors import LocalProtocolError
from pyagent.node.host import Host, HostConfig
from pyagent.node.transfer import (
    CONTROL_LIMITS,
    PROTOCOL_ID,
    Abort,
    Accept,
    Ack,
    Chunk,
    Done,
    Offer,
    TransferConfig,
    _Partial,
    _ResumeTable,
    chunk_limits,
    encode,
    parse_receiver_frame,
)
from pyagent.proto.events import (
    Event,
    TransferAborted,
    TransferChunk,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferReceived,
)
from pyagent.proto.ready import BytesSource, CancelTransfer, Transfer
from pyagent.proto.wire import FrameDecoder

CHUNK = 64 << 10
WINDOW = 4 * CHUNK
# Small chunks, so that a few hundred KiB make many of them; progress at most every other chunk.
SMALL = TransferConfig(
    chunk_size_bytes=CHUNK,
    chunk_size_bytes_max=CHUNK,
    window_bytes=WINDOW,
    chunk_bytes_queued_max=16 * CHUNK,
    progress_interval_bytes=2 * CHUNK,
)


class SlowSource:
    """A file-like source: reads take ``delay_s`` and must happen off the event loop. ``corrupt`` flips
    a byte of the chunk at that offset from its second read on (the first read is the hashing pass)."""

    def __init__(self, data: bytes, delay_s: float = 0.0, corrupt: int | None = None) -> None:
        self.data = data
        self.delay_s = delay_s
        self.corrupt = corrupt
        self.reads: dict[int, int] = {}
        self.threads: set[int] = set()

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        self.threads.add(threading.get_ident())
        self.reads[offset] = self.reads.get(offset, 0) + 1
        time.sleep(self.delay_s)
        data = self.data[offset : offset + length]
        if offset == self.corrupt and self.reads[offset] > 1:
            data = bytes([data[0] ^ 1]) + data[1:]
        return data


def assert_assembled(peer: Peer, transfer_id: int, data: bytes) -> None:
    assert bytes(peer.receiver.blobs[(COMPONENT, transfer_id)]) == data


async def test_round_trip_checks_the_digest_and_coalesces_progress() -> None:
    data = os.urandom(20 * CHUNK + 1234)
    async with connected_pair(SMALL, SMALL) as (a, b):
        a.service.start(Transfer(b.peer_id, COMPONENT, 1, BytesSource(data)))
        done = await a.feedback.end_of(1)
        assert done == TransferDone(COMPONENT, 1, len(data), digest_of(data, CHUNK))
        received = await b.receiver.wait_for(TransferReceived)
        assert received == TransferReceived(a.peer_id, COMPONENT, 1, len(data), done.digest)
        # In order, each chunk once, and the receiver's last event is the verdict.
        assert [c.offset for c in b.receiver.chunks(1)] == list(range(0, len(data), CHUNK))
        assert b.receiver.events[-1] == received
        assert_assembled(b, 1, data)
        progress = [e for e in a.feedback.events if isinstance(e, TransferProgress)]
        assert 0 < len(progress) <= len(data) // SMALL.progress_interval_bytes
        assert [p.acked for p in progress] == sorted(p.acked for p in progress)
        assert a.feedback.events[-1] == done
        assert b.service.stats()["chunk_bytes_queued"] == 0
        assert b.service.stats()["in_done"] == 1 and a.service.stats()["out_done"] == 1


async def test_empty_blob_and_a_file_like_source_read_off_the_event_loop() -> None:
    data = os.urandom(3 * CHUNK + 5)
    source = SlowSource(data)
    async with connected_pair(SMALL, SMALL) as (a, b):
        a.service.start(Transfer(b.peer_id, COMPONENT, 1, BytesSource(b"")))
        a.service.start(Transfer(b.peer_id, COMPONENT, 2, source))
        assert await a.feedback.end_of(1) == TransferDone(COMPONENT, 1, 0, digest_of(b"", CHUNK))
        assert isinstance(await a.feedback.end_of(2), TransferDone)
        assert await b.receiver.wait_for(TransferReceived, lambda e: e.transfer_id == 1)
        assert_assembled(b, 2, data)
        assert threading.get_ident() not in source.threads
        # One hashing pass, one sending pass: the source is never held whole.
        assert set(source.reads.values()) == {2}


async def test_a_corrupt_chunk_aborts_the_receiver_and_fails_the_sender() -> None:
    data = os.urandom(10 * CHUNK)
    async with connected_pair(SMALL, SMALL) as (a, b):
        a.service.start(Transfer(b.peer_id, COMPONENT, 1, SlowSource(data, corrupt=6 * CHUNK)))
        failed = await a.feedback.end_of(1)
        assert isinstance(failed, TransferFailed)
        assert failed.reason.startswith("aborted: hash:"), failed.reason
        aborted = await b.receiver.wait_for(TransferAborted)
        assert isinstance(aborted, TransferAborted)
        assert aborted.received == 6 * CHUNK and aborted.reason.startswith("hash:")
        assert failed.acked <= aborted.received
        # Nothing of the bad chunk reached the core.
        assert max(c.offset for c in b.receiver.chunks(1)) == 5 * CHUNK


async def test_resume_after_the_connection_dies_resends_at_most_one_window() -> None:
    data = os.urandom(64 * CHUNK)
    async with connected_pair(SMALL, SMALL) as (a, b):
        source = SlowSource(data, delay_s=0.005)
        a.service.start(Transfer(b.peer_id, COMPONENT, 9, source))
        await a.feedback.wait_for(TransferProgress, lambda e: e.acked >= 16 * CHUNK)
        await a.host.disconnect(b.peer_id)
        failed = await a.feedback.end_of(9)
        assert isinstance(failed, TransferFailed) and failed.reason.startswith("stream:"), failed
        aborted = await b.receiver.wait_for(TransferAborted)
        assert isinstance(aborted, TransferAborted)
        assert 16 * CHUNK <= failed.acked <= aborted.received < len(data)
        sent_before = a.service.stats()["out_bytes"]
        chunks_before = len(b.receiver.chunks(9))

        a.feedback.events.clear()
        a.service.start(Transfer(b.peer_id, COMPONENT, 9, source, offset=failed.acked, addrs=(b.addr,)))
        assert isinstance(await a.feedback.end_of(9), TransferDone)
        await b.receiver.wait_for(TransferReceived)
        assert b.receiver.chunks(9)[chunks_before].offset == failed.acked
        assert_assembled(b, 9, data)
        resent = a.service.stats()["out_bytes"] - len(data)
        assert resent <= WINDOW, (resent, sent_before)
        assert b.service.stats()["in_resumed"] == 1


async def test_a_resume_offset_beyond_what_the_receiver_holds_starts_over() -> None:
    data = os.urandom(8 * CHUNK)
    async with connected_pair(SMALL, SMALL) as (a, b):
        a.service.start(Transfer(b.peer_id, COMPONENT, 3, BytesSource(data), offset=4 * CHUNK))
        assert isinstance(await a.feedback.end_of(3), TransferDone)
        assert b.receiver.chunks(3)[0].offset == 0
        assert_assembled(b, 3, data)
        assert b.service.stats()["in_resumed"] == 0


async def test_refusals_say_why() -> None:
    receiver_config = TransferConfig(
        chunk_size_bytes=CHUNK, chunk_size_bytes_max=CHUNK, size_bytes_max=10 * CHUNK, incoming_max=1
    )
    async with connected_pair(SMALL, receiver_config) as (a, b):
        a.service.start(Transfer(b.peer_id, "/pyagent/nobody/1.0.0", 1, BytesSource(b"x")))
        a.service.start(Transfer(b.peer_id, COMPONENT, 2, BytesSource(bytes(11 * CHUNK))))
        reasons = [await a.feedback.end_of(transfer_id) for transfer_id in (1, 2)]
        assert [r.reason.split(":")[:2] for r in reasons if isinstance(r, TransferFailed)] == [
            ["refused", " unknown-protocol"],
            ["refused", " too-large"],
        ]
        # The receiver's core is stuck: the first transfer holds the only incoming slot.
        b.receiver.hold = trio.Event()
        a.service.start(Transfer(b.peer_id, COMPONENT, 3, BytesSource(bytes(4 * CHUNK))))
        with trio.fail_after(10):
            while b.service.stats()["incoming"] == 0:
                await trio.sleep(0.01)
        a.service.start(Transfer(b.peer_id, COMPONENT, 4, BytesSource(b"y")))
        busy = await a.feedback.end_of(4)
        assert isinstance(busy, TransferFailed) and busy.reason.startswith("refused: too-many-transfers")
        b.receiver.hold.set()
        assert isinstance(await a.feedback.end_of(3), TransferDone)
        assert b.service.stats()["in_refused"] == 3 and not b.receiver.events[:0]

    big_chunks = TransferConfig(chunk_size_bytes=2 * CHUNK, chunk_size_bytes_max=2 * CHUNK)
    async with connected_pair(big_chunks, receiver_config) as (a, b):
        a.service.start(Transfer(b.peer_id, COMPONENT, 1, BytesSource(b"z")))
        refused = await a.feedback.end_of(1)
        assert isinstance(refused, TransferFailed) and refused.reason.startswith("refused: bad-offer")


async def test_unreachable_peers_fail_with_the_dialers_reason() -> None:
    async with running_peer(SMALL) as a, running_peer(SMALL) as b:
        a.service.start(Transfer(b.peer_id, COMPONENT, 1, BytesSource(b"x")))
        failed = await a.feedback.end_of(1)
        assert isinstance(failed, TransferFailed) and failed.reason.startswith("unreachable: not connected")
        dead = "/ip4/127.0.0.1/tcp/1"
        a.service.start(Transfer(b.peer_id, COMPONENT, 2, BytesSource(b"x"), addrs=(dead,)))
        failed = await a.feedback.end_of(2)
        assert isinstance(failed, TransferFailed) and "cannot connect" in failed.reason, failed.reason
        # Dialled through the hint, then served.
        a.service.start(Transfer(b.peer_id, COMPONENT, 3, BytesSource(b"x"), addrs=(dead, b.addr)))
        assert isinstance(await a.feedback.end_of(3), TransferDone)


async def test_a_peer_without_the_protocol_refuses_the_stream() -> None:
    events, _ = trio.open_memory_channel[Event](64)
    plain = Host(generate_new_ed25519_identity(), HostConfig(), events)  # no transfer service
    async with running_peer(SMALL) as a, plain.running():
        await a.host.connect(plain.listen_addrs()[0])
        a.service.start(Transfer(plain.peer_id, COMPONENT, 1, BytesSource(b"x")))
        failed = await a.feedback.end_of(1)
        assert isinstance(failed, TransferFailed) and failed.reason.startswith("refused:"), failed.reason


async def test_cancel_reports_once_and_the_receiver_aborts() -> None:
    data = os.urandom(64 * CHUNK)
    async with connected_pair(SMALL, SMALL) as (a, b):
        a.service.start(Transfer(b.peer_id, COMPONENT, 5, SlowSource(data, delay_s=0.01)))
        await a.feedback.wait_for(TransferProgress)
        a.service.cancel(CancelTransfer(COMPONENT, 5))
        failed = a.feedback.events[-1]
        assert isinstance(failed, TransferFailed) and failed.reason == "cancelled"
        aborted = await b.receiver.wait_for(TransferAborted)
        assert isinstance(aborted, TransferAborted) and aborted.received >= failed.acked
        await trio.sleep(0.2)
        assert [e for e in a.feedback.events if isinstance(e, TransferDone | TransferFailed)] == [failed]
        a.service.cancel(CancelTransfer(COMPONENT, 5))  # already ended: ignored
        # The id is free again at once.
        a.feedback.events.clear()
        a.service.start(Transfer(b.peer_id, COMPONENT, 5, BytesSource(data), offset=failed.acked))
        assert isinstance(await a.feedback.end_of(5), TransferDone)
        with pytest.raises(LocalProtocolError, match="already running"):
            a.service.start(Transfer(b.peer_id, COMPONENT, 6, SlowSource(data, delay_s=0.01)))
            a.service.start(Transfer(b.peer_id, COMPONENT, 6, BytesSource(data)))


async def test_no_acks_time_the_sender_out() -> None:
    quick = TransferConfig(
        chunk_size_bytes=CHUNK, chunk_size_bytes_max=CHUNK, window_bytes=WINDOW, stall_timeout_ms=500
    )
    async with connected_pair(quick, SMALL) as (a, b):
        b.receiver.hold = trio.Event()  # the receiving core takes nothing: no chunk is ever acknowledged
        a.service.start(Transfer(b.peer_id, COMPONENT, 1, BytesSource(bytes(16 * CHUNK))))
        failed = await a.feedback.end_of(1)
        assert failed == TransferFailed(COMPONENT, 1, "timeout: no progress for 500 ms", 0)
        b.receiver.hold.set()
        aborted = await b.receiver.wait_for(TransferAborted)
        assert isinstance(aborted, TransferAborted) and aborted.reason.startswith("stream:"), aborted


async def test_a_receiver_waiting_on_its_own_core_does_not_time_out() -> None:
    quick = TransferConfig(
        chunk_size_bytes=CHUNK, chunk_size_bytes_max=CHUNK, window_bytes=WINDOW, stall_timeout_ms=300
    )
    async with connected_pair(SMALL, quick) as (a, b):
        b.receiver.hold = trio.Event()
        a.service.start(Transfer(b.peer_id, COMPONENT, 1, BytesSource(bytes(16 * CHUNK))))
        await trio.sleep(1.0)
        assert b.service.stats()["incoming"] == 1 and not b.receiver.events
        b.receiver.hold.set()
        assert isinstance(await a.feedback.end_of(1), TransferDone)
        assert isinstance(await b.receiver.wait_for(TransferReceived), TransferReceived)


async def test_chunks_queued_into_a_slow_core_stay_within_the_byte_budget() -> None:
    budget = 3 * CHUNK
    receiver_config = TransferConfig(
        chunk_size_bytes=CHUNK, chunk_size_bytes_max=CHUNK, window_bytes=WINDOW, chunk_bytes_queued_max=budget
    )
    data = os.urandom(32 * CHUNK)
    async with connected_pair(SMALL, receiver_config) as (a, b):
        b.receiver.defer_steps = True
        for transfer_id in range(3):
            a.service.start(Transfer(b.peer_id, COMPONENT, transfer_id, BytesSource(data)))
        await trio.sleep(0.5)
        # The core stepped nothing: exactly the budget is queued, and every transfer waits.
        assert b.service.stats()["chunk_bytes_queued"] == budget
        assert len(b.receiver.pending) == 3
        while len([e for e in a.feedback.events if isinstance(e, TransferDone)]) < 3:
            b.receiver.step_pending()
            await trio.sleep(0.005)
        b.receiver.step_pending()
        assert b.receiver.queued_bytes_peak <= budget
        assert b.service.stats()["chunk_bytes_queued"] == 0
        for transfer_id in range(3):
            assert_assembled(b, transfer_id, data)


async def test_outgoing_transfers_queue_beyond_the_limit_and_fail_beyond_the_queue() -> None:
    config = TransferConfig(
        chunk_size_bytes=CHUNK, chunk_size_bytes_max=CHUNK, outgoing_max=1, outgoing_queued_max=1
    )
    async with connected_pair(config, SMALL) as (a, b):
        for transfer_id in range(3):
            a.service.start(Transfer(b.peer_id, COMPONENT, transfer_id, BytesSource(bytes(8 * CHUNK))))
        busy = await a.feedback.end_of(2)
        assert isinstance(busy, TransferFailed) and busy.reason.startswith("busy:")
        assert isinstance(await a.feedback.end_of(0), TransferDone)
        assert isinstance(await a.feedback.end_of(1), TransferDone)
        # One at a time: the second began only after the first ended.
        chunk_ids = [c.transfer_id for c in b.receiver.events if isinstance(c, TransferChunk)]
        assert chunk_ids == sorted(chunk_ids)


# ----- a misbehaving peer costs only its stream


class RawSender:
    """Speaks the sender's side of the protocol by hand, to misbehave in chosen ways."""

    def __init__(self, stream: NetStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(CONTROL_LIMITS)
        self.received: list[object] = []

    @classmethod
    async def open(cls, a: Peer, b: Peer) -> RawSender:
        return cls(await a.host.open_stream(b.peer_id, PROTOCOL_ID))

    async def write(self, frame: bytes) -> None:
        await self.stream.write(frame)

    async def next(self) -> object | None:
        """The receiver's next frame; None once the stream ended or broke."""
        with trio.fail_after(10):
            while not self.received:
                try:
                    data = await self.stream.read(65536)
                except IOException:
                    data = b""
                if not data:
                    return None
                self.received += [parse_receiver_frame(m) for m in self.decoder.feed(data)]
        return self.received.pop(0)

    async def rest(self) -> list[object]:
        frames = []
        while (frame := await self.next()) is not None:
            frames.append(frame)
        return frames


async def test_garbage_costs_the_peer_its_stream_and_nothing_else() -> None:
    async with connected_pair(SMALL, SMALL) as (a, b):
        raw = await RawSender.open(a, b)
        await raw.write(b"\x05garbage and more")
        assert await raw.rest() == []
        assert b.host.stats()["protocol_errors"] == 1
        a.service.start(Transfer(b.peer_id, COMPONENT, 1, BytesSource(b"still works")))
        assert isinstance(await a.feedback.end_of(1), TransferDone)


def chunk_frame(data: bytes, index: int) -> bytes:
    piece = data[index * CHUNK : (index + 1) * CHUNK]
    return encode(Chunk(index * CHUNK, blake3(piece), piece), chunk_limits(CHUNK))


async def test_a_sender_past_the_window_is_aborted() -> None:
    data = os.urandom(8 * CHUNK)
    async with connected_pair(SMALL, SMALL) as (a, b):
        # The core holds every chunk, so no ack comes, and the sender goes on anyway.
        b.receiver.hold = trio.Event()
        raw = await RawSender.open(a, b)
        await raw.write(encode(Offer(COMPONENT, 1, len(data), CHUNK, 0, digest_of(data, CHUNK))))
        assert await raw.next() == Accept(0, WINDOW)
        for index in range(WINDOW // CHUNK + 1):
            await raw.write(chunk_frame(data, index))
        answers = await raw.rest()
        assert answers and isinstance(answers[-1], Abort) and "window" in answers[-1].reason, answers
        b.receiver.hold.set()
        aborted = await b.receiver.wait_for(TransferAborted)
        assert isinstance(aborted, TransferAborted) and aborted.reason.startswith("protocol:")


async def test_a_blob_off_its_digest_is_aborted_and_not_kept_for_a_resume() -> None:
    data = os.urandom(8 * CHUNK)
    async with connected_pair(SMALL, SMALL) as (a, b):
        raw = await RawSender.open(a, b)
        await raw.write(encode(Offer(COMPONENT, 2, len(data), CHUNK, 0, bytes(32))))
        assert await raw.next() == Accept(0, WINDOW)
        for index in range(8):
            if index >= WINDOW // CHUNK:
                assert await raw.next() == Ack((index - WINDOW // CHUNK + 1) * CHUNK)
            await raw.write(chunk_frame(data, index))
        answers = await raw.rest()
        assert isinstance(answers[-1], Abort) and answers[-1].reason.startswith("digest:"), answers
        aborted = await b.receiver.wait_for(TransferAborted)
        # Every chunk but the last reached the core; the last one, which completed the wrong digest, did not.
        assert isinstance(aborted, TransferAborted) and aborted.received == len(data) - CHUNK
        assert b.service.stats()["resumable"] == 0


async def test_a_silent_sender_times_the_receiver_out() -> None:
    quick = TransferConfig(chunk_size_bytes=CHUNK, chunk_size_bytes_max=CHUNK, stall_timeout_ms=300)
    data = os.urandom(4 * CHUNK)
    async with connected_pair(SMALL, quick) as (a, b):
        raw = await RawSender.open(a, b)
        await raw.write(encode(Offer(COMPONENT, 3, len(data), CHUNK, 0, digest_of(data, CHUNK))))
        assert isinstance(await raw.next(), Accept)
        await raw.write(chunk_frame(data, 0))
        assert await raw.rest() == [Ack(CHUNK), Abort("timeout: no progress for 300 ms")]
        aborted = await b.receiver.wait_for(TransferAborted)
        assert aborted == TransferAborted(a.peer_id, COMPONENT, 3, CHUNK, "timeout: no progress for 300 ms")
        assert b.service.stats()["resumable"] == 1


async def test_a_new_offer_supersedes_a_stream_the_receiver_still_holds() -> None:
    data = os.urandom(6 * CHUNK)
    digest = digest_of(data, CHUNK)
    async with connected_pair(SMALL, SMALL) as (a, b):
        first = await RawSender.open(a, b)
        await first.write(encode(Offer(COMPONENT, 4, len(data), CHUNK, 0, digest)))
        assert await first.next() == Accept(0, WINDOW)
        for index in range(2):
            await first.write(chunk_frame(data, index))
        assert [await first.next(), await first.next()] == [Ack(CHUNK), Ack(2 * CHUNK)]
        # The sender lost the first stream on its side and offers again from what it saw acknowledged.
        second = await RawSender.open(a, b)
        await second.write(encode(Offer(COMPONENT, 4, len(data), CHUNK, 2 * CHUNK, digest)))
        assert await second.next() == Accept(2 * CHUNK, WINDOW)
        aborted = await b.receiver.wait_for(TransferAborted)
        assert isinstance(aborted, TransferAborted) and aborted.received == 2 * CHUNK
        assert aborted.reason.startswith("superseded:")
        for index in range(2, 6):
            await second.write(chunk_frame(data, index))
        answers = await second.rest()
        assert answers[-1] == Done(digest), answers
        received = await b.receiver.wait_for(TransferReceived)
        assert received == TransferReceived(a.peer_id, COMPONENT, 4, len(data), digest)
        assert_assembled(b, 4, data)


async def test_the_resume_table_is_bounded_in_entries_hash_bytes_and_time(autojump_clock: object) -> None:
    table = _ResumeTable(entries_max=3, hash_bytes_max=4 * 32, ttl_s=10.0)

    def partial(chunks: int) -> _Partial:
        return _Partial(chunks, 1, bytes(32), chunks, bytes(32 * chunks))

    for transfer_id in range(4):
        table.put(("peer", COMPONENT, transfer_id), partial(1))
    assert len(table) == 3 and table.take(("peer", COMPONENT, 0)) is None  # the oldest went first
    table.put(("peer", COMPONENT, 9), partial(3))  # 3 hashes: only one older entry still fits beside it
    assert len(table) == 2 and table.take(("peer", COMPONENT, 3)) is not None
    table.put(("peer", COMPONENT, 10), partial(5))  # over the byte bound by itself: not kept
    assert table.take(("peer", COMPONENT, 10)) is None
    await trio.sleep(11)
    assert table.take(("peer", COMPONENT, 9)) is None and len(table) == 0
