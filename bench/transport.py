"""Transport benchmark: our framing and Host against raw py-libp2p streams, server in a second process.

Run: ``.venv/bin/python bench/transport.py [--requests N] [--mebibytes M]``. It starts
``bench/transport.py serve`` as a subprocess (one Host, whose py-libp2p host also serves the raw
protocols, so both sides share the exact same settings), then measures from this process:

- round trip of a 100-byte request/response: ours (`Host.request`, a fresh stream per request) against
  raw (a fresh stream per request, 4-byte length prefix); and ours over long-lived streams (`Host.send`
  both ways) against raw echo on one long-lived stream;
- throughput of 64 KiB chunks: ours (`Host.send_with_backpressure`, msgpack frames) against raw
  (length-prefixed writes on one stream).
"""

from __future__ import annotations

import argparse
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import trio
from libp2p import generate_new_ed25519_identity
from libp2p.abc import INetStream
from libp2p.custom_types import TProtocol
from libp2p.io.utils import read_exactly
from libp2p.peer.id import ID

from pyagent.node.host import Host, HostConfig
from pyagent.proto.events import Event, MessageReceived
from pyagent.proto.wire import Limits, Message

REQUEST = "/pyagent/bench-request/1.0.0"
PINGPONG = "/pyagent/bench-pingpong/1.0.0"
SINK = "/pyagent/bench-sink/1.0.0"
SINK_TOTAL = "/pyagent/bench-sink-total/1.0.0"
RAW_REQUEST = "/bench/raw-request/1.0.0"
RAW_ECHO = "/bench/raw-echo/1.0.0"
RAW_SINK = "/bench/raw-sink/1.0.0"

PAYLOAD_BYTES = 100
CHUNK_BYTES = 64 * 1024
LIMITS = Limits(frame_size_bytes_max=CHUNK_BYTES + 1024)
LENGTH = struct.Struct(">I")
WARMUP_ROUNDS = 200
TIMEOUT_MS = 10_000


async def _read_prefixed(stream: INetStream) -> bytes:
    (length,) = LENGTH.unpack(await read_exactly(stream, LENGTH.size))
    return await read_exactly(stream, length)


async def raw_request_handler(stream: INetStream) -> None:
    await stream.write(LENGTH.pack(PAYLOAD_BYTES) + await _read_prefixed(stream))
    await stream.close()


async def raw_echo_handler(stream: INetStream) -> None:
    try:
        while True:
            body = await _read_prefixed(stream)
            await stream.write(LENGTH.pack(len(body)) + body)
    except Exception:
        await stream.reset()


async def raw_sink_handler(stream: INetStream) -> None:
    total = 0
    try:
        while True:
            total += len(await _read_prefixed(stream))
    except Exception:
        pass  # the writer half-closed: the total is complete
    await stream.write(total.to_bytes(8, "big"))
    await stream.close()


async def serve() -> None:
    send, receive = trio.open_memory_channel[Event](1024)
    host = Host(generate_new_ed25519_identity(), HostConfig(), send)
    sink_total = 0

    async def answer(peer: str, message: Message) -> Message:
        return {"v": 1, "t": "reply", "d": message["d"]}

    async def total(peer: str, message: Message) -> Message:
        return {"v": 1, "t": "total", "bytes": sink_total}

    host.register_request_handler(REQUEST, LIMITS, answer)
    host.register_request_handler(SINK_TOTAL, LIMITS, total)
    host.register_protocol(PINGPONG, LIMITS)
    host.register_protocol(SINK, LIMITS)
    for protocol, handler in ((RAW_REQUEST, raw_request_handler), (RAW_ECHO, raw_echo_handler)):
        host.libp2p_host.set_stream_handler(TProtocol(protocol), handler)
    host.libp2p_host.set_stream_handler(TProtocol(RAW_SINK), raw_sink_handler)
    async with host.running():
        print(host.listen_addrs()[0], flush=True)
        async for event in receive:
            if isinstance(event, MessageReceived) and event.protocol == SINK:
                sink_total += len(event.message["d"])
            elif isinstance(event, MessageReceived) and event.protocol == PINGPONG:
                host.send(event.peer, PINGPONG, event.message)


async def _timed_pair(
    rounds: int, ours: Callable[[], Awaitable[None]], raw: Callable[[], Awaitable[None]]
) -> tuple[list[float], list[float]]:
    """Times ``ours`` and ``raw`` in alternating rounds, so that whatever else loads the machine during
    the run weighs on both alike and the ratio stays meaningful on a shared machine."""
    for _ in range(WARMUP_ROUNDS):
        await ours()
        await raw()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for one_round, into in ((ours, samples[0]), (raw, samples[1])):
            start = time.perf_counter()
            await one_round()
            into.append(time.perf_counter() - start)
    return samples


async def client(server_addr: str, rounds: int, mebibytes: int) -> list[tuple[str, str, float]]:
    send, receive = trio.open_memory_channel[Event](1024)
    host = Host(generate_new_ed25519_identity(), HostConfig(), send)
    host.register_protocol(PINGPONG, LIMITS)
    rows: list[tuple[str, str, float]] = []
    payload = b"r" * PAYLOAD_BYTES
    chunk = b"\xab" * CHUNK_BYTES
    chunks = mebibytes * 1024 * 1024 // CHUNK_BYTES
    async with host.running():
        server = await host.connect(server_addr)
        server_id = ID.from_base58(server)
        lp = host.libp2p_host

        async def ours_request() -> None:
            await host.request(server, REQUEST, {"v": 1, "t": "ask", "d": payload}, TIMEOUT_MS)

        async def raw_request() -> None:
            stream = await lp.new_stream(server_id, [TProtocol(RAW_REQUEST)])
            await stream.write(LENGTH.pack(PAYLOAD_BYTES) + payload)
            await _read_prefixed(stream)
            await stream.close()

        async def ours_pingpong() -> None:
            host.send(server, PINGPONG, {"v": 1, "t": "ping", "d": payload})
            while not isinstance(await receive.receive(), MessageReceived):
                pass

        echo_stream = await lp.new_stream(server_id, [TProtocol(RAW_ECHO)])

        async def raw_echo() -> None:
            await echo_stream.write(LENGTH.pack(PAYLOAD_BYTES) + payload)
            await _read_prefixed(echo_stream)

        for kind, ours, raw in (
            ("rtt request/response, fresh stream", ours_request, raw_request),
            ("rtt ping-pong, long-lived streams", ours_pingpong, raw_echo),
        ):
            for side, samples in zip(("ours", "raw"), await _timed_pair(rounds, ours, raw), strict=True):
                label = f"{kind}: {side}"
                rows.append((label, "median us", statistics.median(samples) * 1e6))
                rows.append((label, "p99 us", statistics.quantiles(samples, n=100)[98] * 1e6))
        await echo_stream.close()

        start = time.perf_counter()
        for _ in range(chunks):
            await host.send_with_backpressure(server, SINK, {"v": 1, "t": "chunk", "d": chunk})
        while True:
            reply = await host.request(server, SINK_TOTAL, {"v": 1, "t": "total?"}, TIMEOUT_MS)
            if reply["bytes"] >= chunks * CHUNK_BYTES:
                break
            await trio.sleep(0.001)
        rows.append(
            (
                "throughput 64 KiB chunks: ours",
                "MB/s",
                chunks * CHUNK_BYTES / (time.perf_counter() - start) / 1e6,
            )
        )

        start = time.perf_counter()
        stream = await lp.new_stream(server_id, [TProtocol(RAW_SINK)])
        for _ in range(chunks):
            await stream.write(LENGTH.pack(CHUNK_BYTES) + chunk)
        await stream.close_write()
        received = int.from_bytes(await read_exactly(stream, 8), "big")
        assert received == chunks * CHUNK_BYTES, received
        rows.append(
            (
                "throughput 64 KiB chunks: raw",
                "MB/s",
                chunks * CHUNK_BYTES / (time.perf_counter() - start) / 1e6,
            )
        )
        await stream.close()
    return rows


def print_table(rows: list[tuple[str, str, float]]) -> None:
    print(f"{'measurement':48} {'unit':10} {'value':>10} {'ours/raw':>9}")
    by_key = {(label, unit): value for label, unit, value in rows}
    for label, unit, value in rows:
        ratio = ""
        if label.endswith(": ours"):
            raw = next(
                (
                    v
                    for (lb, u), v in by_key.items()
                    if u == unit and lb.startswith(label[:-5]) and lb.endswith(": raw")
                ),
                None,
            )
            if raw:
                ratio = f"{value / raw:9.2f}"
        print(f"{label:48} {unit:10} {value:10.1f} {ratio:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["serve"], help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--mebibytes", type=int, default=64)
    args = parser.parse_args()
    if args.mode == "serve":
        trio.run(serve)
        return

    def run_client(server_addr: str) -> None:
        started = time.perf_counter()
        print_table(trio.run(client, server_addr, args.requests, args.mebibytes))
        print(
            f"(client run {time.perf_counter() - started:.1f} s; {args.requests} rounds per rtt row, "
            f"{args.mebibytes} MiB per throughput row)"
        )

    run_beside_server(__file__, run_client)


def run_beside_server(script: str, run_client: Callable[[str], None]) -> None:
    """Start ``script serve`` in a second process, read the address it prints, run ``run_client`` on it
    here, and stop the server however the client ends: the two sides never share a core's GIL."""
    server = subprocess.Popen([sys.executable, script, "serve"], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        run_client(server.stdout.readline().strip())
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
