"""A well-behaved peer's ping while one hostile address floods a real daemon (issue 16: within 2x of quiet).

    .venv/bin/python bench/flood.py                     # quiet, then each flood with quiet between
    .venv/bin/python bench/flood.py --phase-s 5 --no-limits   # the same without flood limits, to compare

One ``pyagent daemon`` on 127.0.0.1 (default settings, or with ``--no-limits`` every flood limit set so
high that none applies). A pinger process connects to it from 127.0.0.1 as an ordinary libp2p peer and
pings it over one long-lived ``/ipfs/ping/1.0.0`` stream every ``--interval-ms``, the whole time. Each
phase runs one attacker process beside it for ``--phase-s`` seconds, and the pinger's round trips during
the phase give its p50 and p99:

- ``quiet``: no attacker;
- ``noise``: a Noise handshake flood from 127.0.0.2: each connection sends multistream-select, ``/noise``
  and a first XX message at once (32 random bytes: the attacker does no crypto, the responder must answer
  with a key exchange and a signature), waits for the answer and closes; ``--concurrency`` at a time;
- ``tcp``: a TCP connection flood from 127.0.0.2: connections that never speak, ``--concurrency`` held
  at a time, each closed after 1 s and opened again, as fast as the kernel accepts them;
- ``streams``: a stream flood from one connected libp2p peer: a wave of 1,000 streams opened at once
  every ``--wave-interval-ms``, each negotiating ``/ipfs/ping/1.0.0``, reset at the next wave; cut off,
  it reconnects under a new identity;
- and ``quiet`` again between floods: each flood is compared with the quiet phases beside it, since the
  machine is shared and its background load drifts.

Each row prints the phase's ping p50/p99, the p99 as a multiple of the quiet p99, what the attacker did,
and what the daemon refused (its counters, from ``pyagent stats``). All processes share this machine's
cores: the attacker stands for another machine, so it runs at ``--attacker-nice`` 19 by default and its
own CPU use yields to the daemon's (``--attacker-nice 0`` to let it compete).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import trio

FLOODER_IP = "127.0.0.2"
MULTISTREAM = b"\x13/multistream/1.0.0\n"
NOISE_PROPOSAL = b"\x07/noise\n"
NOISE_MESSAGE_1_BYTES = 32  # XX's first message: the initiator's ephemeral key, no payload
STREAM_WAVE = 1_000
YAMUX_HEADER = "!BBHII"  # version, type, flags, stream id, length
YAMUX_DATA, YAMUX_WINDOW_UPDATE = 0, 1
YAMUX_SYN, YAMUX_RST = 0x1, 0x8
PING_BYTES = 32
ATTACKS = ("noise", "tcp", "streams")
# High enough that no flood limit ever applies (--no-limits).
NO_LIMITS = {
    "pending_handshakes_max": 1_000_000,
    "pending_handshakes_per_ip_max": 1_000_000,
    "connections_per_ip_max": 1_000_000,
    "connections_per_ip_per_s": 1_000_000,
    "connections_per_ip_burst": 1_000_000,
    "stream_opens_per_peer_per_s": 1_000_000,
    "stream_opens_per_peer_burst": 1_000_000,
}


# ----- the pinger (its own process) -----


async def pinger(target: str, interval_ms: int, out_path: str) -> None:
    """Pings over one stream until SIGTERM; appends "<monotonic time> <rtt s>" lines to ``out_path``."""
    from libp2p import generate_new_ed25519_identity
    from libp2p.custom_types import TProtocol
    from libp2p.host.ping import ID as PING_ID
    from libp2p.io.utils import read_exactly
    from libp2p.peer.id import ID

    from pyagent.node.host import Host, HostConfig

    send, _ = trio.open_memory_channel[Any](10_000)
    host = Host(generate_new_ed25519_identity(), HostConfig(), send)
    async with host.running():
        peer = await host.connect(target)
        stream = await host.libp2p_host.new_stream(ID.from_base58(peer), [TProtocol(str(PING_ID))])
        payload = os.urandom(PING_BYTES)
        with open(out_path, "w", buffering=1) as out, trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop)
                print("ready", flush=True)
                while True:
                    start = time.monotonic()
                    await stream.write(payload)
                    echo = await read_exactly(stream, PING_BYTES)
                    rtt_s = time.monotonic() - start
                    assert echo == payload
                    out.write(f"{start:.6f} {rtt_s:.6f}\n")
                    await trio.sleep(max(0.0, interval_ms / 1000 - rtt_s))


# ----- the attackers (each its own process; they print what they did when stopped) -----


async def _until_term(run: Any, *args: Any) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop)
            await run(*args)


async def _raw_connect(port: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((FLOODER_IP, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def noise_flood(port: int, concurrency: int, done: dict[str, int]) -> None:
    opening = MULTISTREAM + NOISE_PROPOSAL + NOISE_MESSAGE_1_BYTES.to_bytes(2, "big")

    async def worker() -> None:
        while True:
            try:
                stream = await _raw_connect(port)
            except OSError:
                done["connect_errors"] += 1
                await trio.sleep(0.01)
                continue
            done["attempts"] += 1
            try:
                await stream.send_all(opening + os.urandom(NOISE_MESSAGE_1_BYTES))
                answered = b""
                with trio.move_on_after(2):
                    # Header, protocol echo, then the responder's XX message (its key exchange).
                    while len(answered) < len(MULTISTREAM) + len(NOISE_PROPOSAL) + 2 + 32:
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        answered += chunk
                if len(answered) > len(MULTISTREAM) + len(NOISE_PROPOSAL) + 2:
                    done["handshakes_answered"] += 1
                else:
                    done["refused_or_dropped"] += 1
            except (OSError, trio.BrokenResourceError):
                done["refused_or_dropped"] += 1
            finally:
                await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


async def tcp_flood(port: int, concurrency: int, done: dict[str, int]) -> None:
    async def worker() -> None:
        while True:
            try:
                stream = await _raw_connect(port)
            except OSError:
                done["connect_errors"] += 1
                await trio.sleep(0.01)
                continue
            done["attempts"] += 1
            try:
                with trio.move_on_after(1):
                    if not await stream.receive_some(4096):
                        done["closed_by_daemon"] += 1
            except (OSError, trio.BrokenResourceError):
                done["closed_by_daemon"] += 1
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)


async def stream_flood(target: str, wave_interval_ms: int, done: dict[str, int]) -> None:
    """Waves of ``STREAM_WAVE`` streams from a connected peer, written as raw yamux frames on its
    connection (py-libp2p's own opener waits for each of its 256 opening slots, so it floods slowly):
    each stream opens with its multistream-select negotiation of ``/ipfs/ping/1.0.0`` in the same frame,
    and is reset at the next wave. When the daemon cuts it off, it comes back under a new identity."""
    while True:
        try:
            await _stream_flood_once(target, wave_interval_ms, done)
        except Exception:
            done["cut_off"] += 1
            await trio.sleep(0.01)


async def _stream_flood_once(target: str, wave_interval_ms: int, done: dict[str, int]) -> None:
    from libp2p import generate_new_ed25519_identity
    from libp2p.peer.id import ID

    from pyagent.node.host import Host, HostConfig

    send, _ = trio.open_memory_channel[Any](10_000)
    host = Host(generate_new_ed25519_identity(), HostConfig(), send)
    async with host.running():
        peer = ID.from_base58(await host.connect(target))
        done["connections"] += 1
        (conn,) = host.libp2p_host.get_network().get_connections(peer)
        secured = conn.muxed_conn.secured_conn  # type: ignore[attr-defined]
        negotiation = MULTISTREAM + b"\x11/ipfs/ping/1.0.0\n"
        # Far above the ids py-libp2p's own yamux gives this side's streams (odd, counting from 1).
        next_id = 1_000_001
        previous: range = range(0)
        while True:
            if not host.connected_peers():
                raise ConnectionError("cut off")
            ids = range(next_id, next_id + 2 * STREAM_WAVE, 2)
            next_id += 2 * STREAM_WAVE
            opens = b"".join(
                struct.pack(YAMUX_HEADER, 0, YAMUX_DATA, YAMUX_SYN, sid, len(negotiation)) + negotiation
                for sid in ids
            )
            resets = b"".join(
                struct.pack(YAMUX_HEADER, 0, YAMUX_WINDOW_UPDATE, YAMUX_RST, sid, 0) for sid in previous
            )
            await secured.write(resets + opens)
            done["attempts"] += STREAM_WAVE
            done["waves"] += 1
            previous = ids
            await trio.sleep(wave_interval_ms / 1000)


def attacker_main(kind: str, target: str, concurrency: int, wave_interval_ms: int) -> None:
    done: defaultdict[str, int] = defaultdict(int)
    port = int(target.split("/tcp/")[1].split("/")[0])
    cpu_before = time.process_time()
    if kind == "noise":
        trio.run(_until_term, noise_flood, port, concurrency, done)
    elif kind == "tcp":
        trio.run(_until_term, tcp_flood, port, concurrency, done)
    else:
        trio.run(_until_term, stream_flood, target, wave_interval_ms, done)
    done["attacker_cpu_ms"] = round((time.process_time() - cpu_before) * 1000)
    print(json.dumps(dict(done)), flush=True)


# ----- the orchestration -----


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _counters(home: Path) -> dict[str, int]:
    from pyagent.testing.cli import run_cli

    shown = run_cli(home, "stats", "--json")
    flat: dict[str, int] = {}

    def walk(node: object, prefix: str = "") -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, int | float) and not isinstance(node, bool):
            flat[prefix.rstrip(".")] = int(node)

    if shown.returncode == 0:
        walk(json.loads(shown.stdout))
    return flat


def _refusals(before: dict[str, int], after: dict[str, int]) -> str:
    from pyagent.node import limits

    parts = []
    for name in limits.COUNTER_NAMES:
        keys = [k for k in after if k.endswith(name) and "{" not in k]
        delta = sum(after[k] - before.get(k, 0) for k in keys[:1])
        if delta:
            parts.append(f"{name.removeprefix('inbound_refused_').removeprefix('streams_reset_')}={delta}")
    return " ".join(parts) or "-"


def _daemon_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("role", nargs="?", choices=["pinger", *ATTACKS], help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--phase-s", type=float, default=8.0)
    parser.add_argument("--interval-ms", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=200, help="raw flood connections at a time")
    parser.add_argument(
        "--wave-interval-ms", type=int, default=1000, help="between waves of the stream flood"
    )
    parser.add_argument("--no-limits", action="store_true", help="run the daemon with no flood limit")
    parser.add_argument(
        "--host", action="append", default=[], metavar="KEY=VALUE", help="a [host] setting of the daemon"
    )
    parser.add_argument(
        "--phases", nargs="+", default=["quiet", "noise", "quiet", "tcp", "quiet", "streams", "quiet"]
    )
    parser.add_argument("--rounds", type=int, default=1, help="run the phases this many times over")
    parser.add_argument(
        "--attacker-nice",
        type=int,
        default=19,
        help="the attacker's niceness: it stands for another machine, so by default its CPU use yields",
    )
    args = parser.parse_args()
    if args.role == "pinger":
        trio.run(pinger, args.target, args.interval_ms, args.out)
        return
    if args.role in ATTACKS:
        attacker_main(args.role, args.target, args.concurrency, args.wave_interval_ms)
        return

    from pyagent.config import CONFIG_FILE
    from pyagent.localmesh import LocalPeer, init_home, stop_all

    with socket.socket() as probe:
        try:
            probe.bind((FLOODER_IP, 0))
        except OSError:
            sys.exit(
                f"bench/flood.py: cannot bind {FLOODER_IP} (the attacker's address); needs Linux loopback"
            )

    with tempfile.TemporaryDirectory(prefix="pyagent-flood-") as workdir:
        home = Path(workdir) / "target"
        init_home(home)
        settings = dict(NO_LIMITS) if args.no_limits else {}
        settings.update(dict(item.split("=", 1) for item in args.host))
        config = home / CONFIG_FILE
        text = config.read_text()
        for key, value in settings.items():
            line = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
            text = text.replace(line, f"{key} = {value}")
        config.write_text(text)
        daemon = LocalPeer("target", home)
        daemon.start()
        daemon.wait_ready()
        assert daemon.process is not None
        samples_path = Path(workdir) / "pings.txt"
        pinger_process = subprocess.Popen(
            [sys.executable, __file__, "pinger", "--target", daemon.addr, "--out", str(samples_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        rows = []
        try:
            assert pinger_process.stdout is not None
            assert pinger_process.stdout.readline().strip() == "ready", "the pinger did not start"
            time.sleep(1.0)  # warm-up
            for phase in args.phases * args.rounds:
                attack = phase if phase in ATTACKS else None
                before = _counters(home)
                cpu_before = _daemon_cpu_s(daemon.process.pid)
                attacker = None
                if attack is not None:
                    command = [sys.executable, __file__, attack, "--target", daemon.addr]
                    command += ["--concurrency", str(args.concurrency)]
                    attacker = subprocess.Popen(
                        [*command, "--wave-interval-ms", str(args.wave_interval_ms)],
                        stdout=subprocess.PIPE,
                        text=True,
                        preexec_fn=lambda: os.nice(args.attacker_nice),
                    )
                    time.sleep(0.5)  # let it start before the measured window
                began = time.monotonic()
                time.sleep(args.phase_s)
                ended = time.monotonic()
                did: dict[str, int] = {}
                if attacker is not None:
                    attacker.send_signal(signal.SIGTERM)
                    out, _ = attacker.communicate(timeout=60)
                    did = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
                cpu_s = _daemon_cpu_s(daemon.process.pid) - cpu_before
                after = _counters(home)
                rtts = []
                for line in samples_path.read_text().splitlines():
                    at, rtt = (float(x) for x in line.split())
                    if began <= at < ended:
                        rtts.append(rtt * 1000)
                rows.append((phase, rtts, did, _refusals(before, after), cpu_s / (ended - began)))
                time.sleep(1.0)  # let the daemon settle between phases
        finally:
            pinger_process.terminate()
            pinger_process.wait(10)
            stop_all([daemon])
    _print(rows, args)


Row = tuple[str, list[float], dict[str, int], str, float]


def _quiet_p99_around(rows: list[Row], index: int) -> float:
    """The mean p99 of the quiet phases just before and after ``index``: this machine is shared, so a
    flood is compared with the quiet moments nearest to it."""
    near = [
        _percentile(rows[i][1], 0.99)
        for i in (index - 1, index + 1)
        if 0 <= i < len(rows) and rows[i][0] == "quiet" and rows[i][1]
    ]
    if not near:
        near = [_percentile(r[1], 0.99) for r in rows if r[0] == "quiet" and r[1]]
    return statistics.mean(near) if near else float("nan")


def _print(rows: list[Row], args: argparse.Namespace) -> None:
    limits = "no flood limits" if args.no_limits else "default flood limits"
    if args.host:
        limits += " but " + ", ".join(args.host)
    print(
        f"\nping every {args.interval_ms} ms over one stream, {args.phase_s:.0f} s per phase, {limits}, "
        f"attacker at nice {args.attacker_nice}; p99/quiet is against the quiet phases beside each flood"
    )
    header = f"{'phase':<8} {'pings':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99/quiet':>9} {'daemon cpu':>10}"
    print(f"{header}  attacker / daemon refused")
    for index, (phase, rtts, did, refused, cpu) in enumerate(rows):
        if not rtts:
            print(f"{phase:<8} no pings answered")
            continue
        p50, p99 = statistics.median(rtts), _percentile(rtts, 0.99)
        ratio = p99 / _quiet_p99_around(rows, index) if phase in ATTACKS else 1.0
        mark = "" if ratio <= 2 else "  (over 2x)"
        attacker = " ".join(f"{k}={v}" for k, v in did.items()) or "-"
        print(
            f"{phase:<8} {len(rtts):>6} {p50:>8.2f} {p99:>8.2f} {ratio:>8.1f}x {cpu:>9.0%}  "
            f"{attacker} / {refused}{mark}"
        )
    if args.rounds > 1:
        print("median over the rounds of each flood's p99/quiet:")
        for attack in ATTACKS:
            ratios = [
                _percentile(rows[i][1], 0.99) / _quiet_p99_around(rows, i)
                for i in range(len(rows))
                if rows[i][0] == attack and rows[i][1]
            ]
            if ratios:
                shown = ", ".join(f"{r:.1f}x" for r in ratios)
                print(f"  {attack:<8} {statistics.median(ratios):.1f}x  ({shown})")


if __name__ == "__main__":
    main()
