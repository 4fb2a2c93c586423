"""The transfer model: chunks, digests, bandwidth and queueing per link, flow control, and every way a
transfer ends (done, peer down, stalled link, cancel, damaged chunk), on three peers."""

from __future__ import annotations

from typing import Any

from blobs import Blobs, CancelBlob, CountingSource, SendBlob

from pyagent.proto.events import (
    TransferAborted,
    TransferChunk,
    TransferDone,
    TransferFailed,
    TransferProgress,
    TransferReceived,
)
from pyagent_simnet import Sim
from pyagent_simnet.transfers import chunk_hash

CHUNK = 10_000
BLOB = bytes(range(256)) * 400  # 102,400 bytes: ten whole chunks and a short one


def make(network: dict[str, Any] | None = None, **transfers: Any) -> Sim:
    sim = Sim(
        {
            "peers": 3,
            "components": [],
            "extra_components": ["blobs:factory"],
            "network": {"latency": {"kind": "constant", "ms": 5}, **(network or {})},
            "transfers": {"chunk_bytes": CHUNK, "bandwidth_bps": 8_000_000, **transfers},
        },
        seed=1,
    )
    sim.run(0.001)  # every node starts at t=0
    return sim


def blobs(sim: Sim, index: int) -> Blobs:
    core = sim.nodes[index].core
    assert core is not None
    component = core.component("blobs")
    assert isinstance(component, Blobs)
    return component


def send(sim: Sim, src: int, dst: int, source: Any, transfer_id: int = 1, offset: int = 0) -> None:
    sim.request(sim.nodes[src], SendBlob(sim.nodes[dst].peer, transfer_id, source, offset))


def expected_digest(data: bytes, chunk: int = CHUNK) -> bytes:
    """The hash list, computed here from the definition: the hash of the chunks' hashes."""
    return chunk_hash(b"".join(chunk_hash(data[i : i + chunk]) for i in range(0, len(data), chunk)))


def done_at(sim: Sim, index: int) -> list[float]:
    return [t / 1e6 for t, event in blobs(sim, index).events if isinstance(event, TransferDone)]


def test_a_blob_arrives_whole_in_chunks_read_one_at_a_time_and_the_digests_agree() -> None:
    sim = make()
    source = CountingSource(BLOB)
    send(sim, 0, 1, source)
    sim.run(2)
    sender, receiver = blobs(sim, 0), blobs(sim, 1)
    chunks = receiver.of(TransferChunk)
    assert [c.offset for c in chunks] == list(range(0, len(BLOB), CHUNK))  # type: ignore[attr-defined]
    assert bytes(receiver.received[(sim.nodes[0].peer, 1)]) == BLOB
    assert all(length <= CHUNK for _, length in source.reads)  # never the whole blob at once
    (received,) = receiver.of(TransferReceived)
    (done,) = sender.of(TransferDone)
    assert received.digest == done.digest == expected_digest(BLOB)  # type: ignore[attr-defined]
    acked = [p.acked for p in sender.of(TransferProgress)]  # type: ignore[attr-defined]
    assert acked == sorted(acked) and acked[-1] < len(BLOB)
    assert sim.transfers.streams == {}


def test_the_digest_is_the_daemons_when_the_rust_core_has_blake3() -> None:
    from pyagent import _core

    if not hasattr(_core, "blake3_chunks"):
        return  # the BLAKE2b stand-in: nothing to compare with
    assert expected_digest(BLOB) == _core.blake3(_core.blake3_chunks(BLOB, CHUNK))


def test_an_empty_blob_is_received_and_done_at_once() -> None:
    sim = make()
    send(sim, 0, 1, CountingSource(b""))
    sim.run(1)
    (received,) = blobs(sim, 1).of(TransferReceived)
    (done,) = blobs(sim, 0).of(TransferDone)
    assert received.size == done.size == 0  # type: ignore[attr-defined]
    assert received.digest == done.digest == chunk_hash(b"")  # type: ignore[attr-defined]


def test_bandwidth_paces_a_transfer_and_a_link_queues_its_transfers() -> None:
    alone, shared = make(), make()
    send(alone, 0, 1, CountingSource(BLOB))
    send(shared, 0, 1, CountingSource(BLOB), transfer_id=1)
    send(shared, 0, 1, CountingSource(BLOB), transfer_id=2)
    send(shared, 0, 2, CountingSource(BLOB), transfer_id=3)  # another link: not queued behind them
    for sim in (alone, shared):
        sim.run(5)
    serialize_s = len(BLOB) * 8 / 8_000_000  # 0.1024 s at 1 MB/s
    (one,) = done_at(alone, 0)
    assert serialize_s < one < serialize_s + 0.05
    times = sorted(done_at(shared, 0))
    assert len(times) == 3
    assert times[0] < serialize_s + 0.05  # the transfer on the free link
    assert 2 * serialize_s < times[2] < 2 * serialize_s + 0.05  # the two that shared a link


def test_a_slow_link_delays_a_transfer_and_loss_does_not_touch_it() -> None:
    sim = make(network={"loss": 0.5})
    sim.inject({"action": "set", "key": "transfer_bandwidth_bps", "value": 800_000})  # 100 kB/s
    send(sim, 0, 1, CountingSource(BLOB))
    sim.run(5)
    (done,) = done_at(sim, 0)
    assert done > len(BLOB) * 8 / 800_000
    assert bytes(blobs(sim, 1).received[(sim.nodes[0].peer, 1)]) == BLOB


def test_the_window_paces_the_sender_by_the_receivers_acknowledgements() -> None:
    """20 chunks, 100 ms round trips, no bandwidth limit: 2 chunks per round trip take ~1 s, 20 one."""
    durations = {}
    for window in (2, 20):
        sim = make(
            network={"latency": {"kind": "constant", "ms": 50}},
            window_chunks=window,
            chunk_bytes=1_000,
            bandwidth_bps=10**12,
        )
        send(sim, 0, 1, CountingSource(bytes(20_000)))
        sim.run(5)
        (done,) = done_at(sim, 0)
        durations[window] = done
    assert 0.95 < durations[2] < 1.1
    assert durations[20] < 0.15


def test_a_crashed_receiver_fails_the_transfer_and_a_crashed_sender_aborts_it() -> None:
    sim = make()
    send(sim, 0, 1, CountingSource(BLOB))
    sim.run(0.05)
    sim.crash(sim.nodes[1])
    sim.run(1)
    (failed,) = blobs(sim, 0).of(TransferFailed)
    assert failed.reason == "peer down" and 0 < failed.acked < len(BLOB)  # type: ignore[attr-defined]
    assert blobs(sim, 0).of(TransferDone) == []

    sim = make()
    send(sim, 0, 1, CountingSource(BLOB))
    sim.run(0.05)
    sim.crash(sim.nodes[0])
    sim.run(1)
    (aborted,) = blobs(sim, 1).of(TransferAborted)
    assert aborted.reason == "peer down" and 0 < aborted.received < len(BLOB)  # type: ignore[attr-defined]
    assert blobs(sim, 1).of(TransferReceived) == []


def test_a_short_partition_delays_a_transfer_and_a_long_one_fails_it_on_both_sides() -> None:
    short, long = make(stall_timeout_ms=1_000), make(stall_timeout_ms=1_000)
    for sim in (short, long):
        send(sim, 0, 1, CountingSource(BLOB))
        sim.run(0.03)
        sim.inject({"action": "partition", "sides": [[0], [1, 2]]})
    short.run(0.5)
    short.inject({"action": "heal"})
    short.run(5)
    long.run(5)
    (done,) = done_at(short, 0)
    assert done > 1.0  # resumed at the stall check, a second after the cut
    (failed,) = blobs(long, 0).of(TransferFailed)
    (aborted,) = blobs(long, 1).of(TransferAborted)
    assert failed.reason == aborted.reason == "stalled: link cut"  # type: ignore[attr-defined]


def test_a_cancelled_transfer_ends_on_both_sides_and_resumes_from_what_was_acknowledged() -> None:
    sim = make()
    send(sim, 0, 1, CountingSource(BLOB))
    sim.run(0.05)
    sim.request(sim.nodes[0], CancelBlob(1))
    sim.run(1)
    (failed,) = blobs(sim, 0).of(TransferFailed)
    (aborted,) = blobs(sim, 1).of(TransferAborted)
    assert failed.reason == aborted.reason == "cancelled"  # type: ignore[attr-defined]
    acked = failed.acked  # type: ignore[attr-defined]
    assert 0 < acked < len(BLOB) and acked % CHUNK == 0
    source = CountingSource(BLOB)
    send(sim, 0, 1, source, offset=acked)
    sim.run(3)
    receiver = blobs(sim, 1)
    resumed = [c.offset for c in receiver.of(TransferChunk)][-((len(BLOB) - acked + CHUNK - 1) // CHUNK) :]  # type: ignore[attr-defined]
    assert resumed[0] == acked
    (received,) = receiver.of(TransferReceived)
    assert received.digest == expected_digest(BLOB)  # type: ignore[attr-defined]
    assert bytes(receiver.received[(sim.nodes[0].peer, 1)]) == BLOB


def test_a_damaged_chunk_fails_the_transfer() -> None:
    sim = make(corrupt=1.0)
    send(sim, 0, 1, CountingSource(BLOB))
    sim.run(1)
    (failed,) = blobs(sim, 0).of(TransferFailed)
    assert failed.reason == "chunk hash mismatch" and failed.acked == 0  # type: ignore[attr-defined]
    assert blobs(sim, 1).of(TransferChunk) == []


def test_unknown_unreachable_and_unwilling_peers() -> None:
    sim = make()
    sim.request(sim.nodes[0], SendBlob("nobody", 1, CountingSource(BLOB)))
    sim.crash(sim.nodes[2])
    send(sim, 0, 2, CountingSource(BLOB), transfer_id=2)
    sim.nodes[1].protocols = {}  # as if node 1 ran no blobs component
    send(sim, 0, 1, CountingSource(BLOB), transfer_id=3)
    sim.run(1)
    reasons = {f.transfer_id: f.reason for f in blobs(sim, 0).of(TransferFailed)}  # type: ignore[attr-defined]
    assert reasons == {
        1: "unreachable: unknown peer",
        2: "unreachable: peer down",
        3: "refused: protocol not supported",
    }
