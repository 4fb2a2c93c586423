"""Bulk transfer benchmark: TransferService against a raw py-libp2p stream, receiver in a second process.

Run: ``.venv/bin/python bench/transfer.py [--mebibytes M] [--rounds R]``. It starts
``bench/transfer.py serve`` as a subprocess: one Host serving ``/pyagent/transfer/1.0.0`` into a real
``Inbox`` whose owner task steps each chunk at once (and frees it with ``chunk_stepped``, as the driver
does), and the raw 64 KiB-chunk sink of ``bench/transport.py``. From this process, in alternating rounds
so that whatever else loads the machine weighs on both alike, it measures:

- raw: 64 KiB length-prefixed writes on one stream (``transport.py``'s "throughput 64 KiB chunks: raw");
- transfer: one ``Transfer`` of M MiB from a ``BytesSource``, from start to ``TransferDone`` (hashing the
  source, the offer, chunks, acks and the receiver's digest check included);

and prints both, their ratio, and the receiver's peak RSS before and after the transfers. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import trio
from libp2p import generate_new_ed25519_identity
from libp2p.custom_types import TProtocol
from libp2p.io.utils import read_exactly
from libp2p.peer.id import ID

# bench/ is not a package: share transport.py's raw sink rather than copy it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from pyagent.node.host import Host, HostConfig
from pyagent.node.inbox import Inbox
from pyagent.node.transfer import TransferConfig, TransferService
from pyagent.proto.events import Event, TransferChunk, TransferDone, TransferFailed
from pyagent.proto.ready import BytesSource, Transfer
from pyagent.proto.wire import Limits, Message
from transport import CHUNK_BYTES, LENGTH, RAW_SINK, raw_sink_handler, run_beside_server

COMPONENT = "/pyagent/bench-component/1.0.0"
STATS = "/pyagent/bench-transfer-stats/1.0.0"
TIMEOUT_MS = 10_000


def _memory_kib() -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of this process, in KiB (Linux)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


async def serve() -> None:
    events_send, events_receive = trio.open_memory_channel[Event](1024)
    host = Host(generate_new_ed25519_identity(), HostConfig(), events_send)
    inbox: Inbox[Event] = Inbox(4096, 65_536)
    service = TransferService(host, inbox, inbox.send_feedback, lambda protocol: protocol == COMPONENT)
    received = 0

    async def stats(peer: str, message: Message) -> Message:
        return {"v": 1, "t": "stats", "received": received, **_memory_kib(), **service.stats()}

    host.register_request_handler(STATS, Limits(), stats)
    host.libp2p_host.set_stream_handler(TProtocol(RAW_SINK), raw_sink_handler)

    async def own() -> None:
        # The driver's owner task, minus the core: take each item, "step" it, free a chunk's bytes.
        nonlocal received
        while True:
            item = await inbox.receive()
            if isinstance(item, TransferChunk):
                received += len(item.data)
                service.chunk_stepped(item)

    async with host.running(), trio.open_nursery() as nursery:
        nursery.start_soon(own)
        nursery.start_soon(service.run)

        async def drain() -> None:
            async for _event in events_receive:
                pass

        nursery.start_soon(drain)
        print(host.listen_addrs()[0], flush=True)


async def client(server_addr: str, mebibytes: int, rounds: int) -> None:
    events_send, events_receive = trio.open_memory_channel[Event](1024)
    host = Host(generate_new_ed25519_identity(), HostConfig(), events_send)
    finished: dict[int, Event] = {}
    changed = trio.Event()

    def feedback(event: Event) -> None:
        nonlocal changed
        if isinstance(event, TransferDone | TransferFailed):
            finished[event.transfer_id] = event
            changed.set()
            changed = trio.Event()

    service = TransferService(host, _NoInbox(), feedback, lambda protocol: False, TransferConfig())
    blob = os.urandom(mebibytes << 20)
    raw_chunk = b"\xab" * CHUNK_BYTES
    raw_chunks = (mebibytes << 20) // CHUNK_BYTES
    results: dict[str, list[float]] = {"raw": [], "transfer": []}
    async with host.running(), trio.open_nursery() as nursery:
        nursery.start_soon(service.run)
        server = await host.connect(server_addr)
        server_id = ID.from_base58(server)
        before = await host.request(server, STATS, {"v": 1, "t": "stats?"}, TIMEOUT_MS)

        async def raw_round() -> float:
            start = time.perf_counter()
            stream = await host.libp2p_host.new_stream(server_id, [TProtocol(RAW_SINK)])
            for _ in range(raw_chunks):
                await stream.write(LENGTH.pack(CHUNK_BYTES) + raw_chunk)
            await stream.close_write()
            got = int.from_bytes(await read_exactly(stream, 8), "big")
            assert got == raw_chunks * CHUNK_BYTES, got
            await stream.close()
            return raw_chunks * CHUNK_BYTES / (time.perf_counter() - start) / 1e6

        async def transfer_round(transfer_id: int) -> float:
            start = time.perf_counter()
            service.start(Transfer(server, COMPONENT, transfer_id, BytesSource(blob)))
            while transfer_id not in finished:
                await changed.wait()
            end = finished[transfer_id]
            if not isinstance(end, TransferDone):
                raise SystemExit(f"transfer failed: {end}")
            return len(blob) / (time.perf_counter() - start) / 1e6

        for index in range(rounds):
            results["raw"].append(await raw_round())
            results["transfer"].append(await transfer_round(index))
        after = await host.request(server, STATS, {"v": 1, "t": "stats?"}, TIMEOUT_MS)
        nursery.cancel_scope.cancel()
    del events_receive

    raw = statistics.median(results["raw"])
    ours = statistics.median(results["transfer"])
    print(f"{'measurement':52} {'unit':8} {'value':>9}")
    print(f"{'throughput 64 KiB chunks: raw (median)':52} {'MB/s':8} {raw:9.1f}")
    print(f"{'throughput transfer, 1 MiB chunks (median)':52} {'MB/s':8} {ours:9.1f}")
    print(f"{'transfer / raw':52} {'':8} {ours / raw:9.2f}")
    print(f"{'rounds raw':52} {'MB/s':8} {' '.join(f'{v:.1f}' for v in results['raw'])}")
    print(f"{'rounds transfer':52} {'MB/s':8} {' '.join(f'{v:.1f}' for v in results['transfer'])}")
    print(f"{'receiver RSS before the runs':52} {'MiB':8} {before['VmRSS'] / 1024:9.1f}")
    print(f"{'receiver peak RSS (VmHWM) after the runs':52} {'MiB':8} {after['VmHWM'] / 1024:9.1f}")
    print(f"{'receiver bytes taken by its core':52} {'MiB':8} {after['received'] / (1 << 20):9.1f}")
    print(f"({rounds} rounds of {mebibytes} MiB each way; sender's blob of {mebibytes} MiB is in memory)")


class _NoInbox:
    """The sending side receives nothing."""

    async def send(self, item: object) -> None:
        raise AssertionError(f"unexpected incoming transfer event {item!r}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    parser.add_argument("--mebibytes", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.mode == "serve":
        trio.run(serve)
        return
    run_beside_server(
        __file__, lambda server_addr: trio.run(client, server_addr, args.mebibytes, args.rounds)
    )


if __name__ == "__main__":
    main()
