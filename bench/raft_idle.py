"""What an idle KV mesh costs, and what a write to a quiet shard pays to wake it.

    .venv/bin/python bench/raft_idle.py                 # 3 daemons, 20 s idle window, 16 wake samples
    .venv/bin/python bench/raft_idle.py --idle-s 60 --samples 32

Three ``pyagent daemon`` processes on 127.0.0.1 with default config (64 shards x 3 replicas), started as
``bench/raft.py`` starts them (``raft_pyagent.PyAgent``: the first put accepted through every daemon, then
the leader layout settled). A few writes go in (one per shard), the mesh is left alone for ``--quiet-s``
(idle groups go quiet), then over ``--idle-s`` each daemon's ``pyagent stats`` counters give, per member:
the KV protocol's bytes/s (Raft frames: heartbeats, appends, their replies) and all protocols' bytes/s
(membership included). Bytes are framed messages before Noise, yamux and TCP, both directions.

Then the wake latency: a put through node-1 to each of ``--samples`` shards that have been idle for the
whole window (quiet ones once quiescence is in), then at once a second put to the same shard, which is
awake now. Both go through the same daemon and follow the same forwarding, so the difference is the wake.

Last, failover: two shards led by node-3, one kept busy by a writer through node-1 (awake: its followers'
election timers run) and one idle (quiet: its followers wait for membership to suspect node-3). node-3 is
killed with ``kill -9``, and each shard is timed from the kill until a put to it, sent at the kill,
succeeds through node-1.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from pyagent.client import KvClient
from pyagent.localmesh import LocalPeer
from pyagent.proto.kv.messages import PROTOCOL_ID
from pyagent.proto.kv.placement import SHARDS_DEFAULT, shard_of
from raft_pyagent import PyAgent

KV_SENT = f"protocol_sent_bytes{{protocol={PROTOCOL_ID}}}"
KV_RECEIVED = f"protocol_received_bytes{{protocol={PROTOCOL_ID}}}"
VALUE = b"v" * 100
FAILOVER_TIMEOUT_S = 60.0
BUSY_PAUSE_S = 0.02
BUSY_BEFORE_KILL_S = 1.0


def one_key_per_shard(shards: int = SHARDS_DEFAULT) -> dict[int, bytes]:
    """The first key ``idle/<n>`` that lands in each shard."""
    keys: dict[int, bytes] = {}
    index = 0
    while len(keys) < shards:
        key = b"idle/%d" % index
        keys.setdefault(shard_of(key, shards), key)
        index += 1
    return keys


def idle_rates(peers: Sequence[LocalPeer], idle_s: float) -> dict[str, float]:
    """Per member over ``idle_s``: the KV protocol's and every protocol's bytes/s, sent and in + out."""
    before = [p.call("stats") for p in peers]
    started = time.monotonic()
    time.sleep(idle_s)
    after = [p.call("stats") for p in peers]
    window_s = time.monotonic() - started

    def rate(*keys: str) -> float:
        total = sum(a.get(k, 0) - b.get(k, 0) for a, b in zip(after, before, strict=True) for k in keys)
        return total / len(peers) / window_s

    return {
        "kv_sent": rate(KV_SENT),
        "kv": rate(KV_SENT, KV_RECEIVED),
        "all_sent": rate("bytes_out"),
        "all": rate("bytes_out", "bytes_in"),
    }


async def timed_put(kv: KvClient, key: bytes) -> float:
    started = time.perf_counter()
    await kv.put(key, VALUE)
    return (time.perf_counter() - started) * 1000


async def wake_latencies(peer: LocalPeer, keys: Sequence[bytes]) -> tuple[list[float], list[float]]:
    """For each key: the put that finds its shard idle, then the put right after it (ms)."""
    first, second = [], []
    async with KvClient.open(peer.home) as kv:
        for key in keys:
            first.append(await timed_put(kv, key))
            second.append(await timed_put(kv, key))
    return first, second


def describe_ms(samples: Sequence[float]) -> str:
    return f"p50 {statistics.median(samples):6.1f} ms  max {max(samples):6.1f} ms  (n={len(samples)})"


async def failover(peers: Sequence[LocalPeer], busy: bytes, idle: bytes) -> tuple[float, float]:
    """Seconds from ``kill -9`` of ``peers[2]`` until a put to the busy key's shard, and one to the idle
    key's, succeed through ``peers[0]``."""
    async with KvClient.open(peers[0].home, timeout_s=FAILOVER_TIMEOUT_S) as kv:
        killed = trio.Event()

        async def keep_busy() -> None:
            while not killed.is_set():
                await kv.put(busy, VALUE)
                await trio.sleep(BUSY_PAUSE_S)

        took: dict[bytes, float] = {}

        async def time_put(key: bytes) -> None:
            took[key] = await timed_put(kv, key) / 1000

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_busy)
            await trio.sleep(BUSY_BEFORE_KILL_S)
            peers[2].kill()
            killed.set()
            nursery.start_soon(time_put, busy)
            nursery.start_soon(time_put, idle)
    return took[busy], took[idle]


def two_shards_led_by(peer: LocalPeer, leader: LocalPeer, keys: dict[int, bytes]) -> tuple[bytes, bytes]:
    led = [keys[s["shard"]] for s in peer.call("kv.shards") if s["leader"] == leader.peer_id]
    if len(led) < 2:
        raise RuntimeError(f"{leader.name} leads {len(led)} shards; need 2")
    return led[0], led[1]


async def write_every_shard(peer: LocalPeer, keys: Sequence[bytes]) -> None:
    async with KvClient.open(peer.home) as kv:
        for key in keys:
            await kv.put(key, VALUE)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--idle-s", type=float, default=20.0, help="the measured idle window")
    parser.add_argument("--quiet-s", type=float, default=3.0, help="idle time before the window starts")
    parser.add_argument("--samples", type=int, default=16, help="shards whose wake latency is timed")
    args = parser.parse_args()
    keys = one_key_per_shard()
    system = PyAgent()
    with tempfile.TemporaryDirectory(prefix="raft-idle-") as workdir:
        try:
            system.start(Path(workdir))
            for note in system.notes():
                print(f"# {note}")
            trio.run(write_every_shard, system.peers[0], list(keys.values()))
            time.sleep(args.quiet_s)
            rates = idle_rates(system.peers, args.idle_s)
            sampled = [keys[shard] for shard in sorted(keys)[: args.samples]]
            quiet, awake = trio.run(wake_latencies, system.peers[0], sampled)
            time.sleep(args.quiet_s)
            busy, idle = two_shards_led_by(system.peers[0], system.peers[2], keys)
            busy_s, idle_s = trio.run(failover, system.peers, busy, idle)
        finally:
            system.stop()
    window = f"idle {args.idle_s:.0f} s after {args.quiet_s:.0f} s"
    print(f"3 daemons, {SHARDS_DEFAULT} shards x 3 replicas, {window}; bytes/s per member:")
    print(f"  raft (kv protocol): out {rates['kv_sent']:7.0f}, in + out {rates['kv']:7.0f}")
    print(f"  all protocols:      out {rates['all_sent']:7.0f}, in + out {rates['all']:7.0f}")
    print(f"  put to an idle shard (wakes it):   {describe_ms(quiet)}")
    print(f"  put to the same shard right after: {describe_ms(awake)}")
    print("kill -9 of node-3, until a put sent at the kill succeeds:")
    print(f"  a shard it led, kept busy:  {busy_s:5.2f} s")
    print(f"  a shard it led, idle:       {idle_s:5.2f} s")


if __name__ == "__main__":
    main()
