"""The sharded KV store on real daemons over real libp2p on 127.0.0.1, with their default config.

- Three daemons started with ``--bootstrap`` take ``pyagent kv put`` with no manual step, and each shard
  ends up with three replicas; once idle, every shard goes quiet and the mesh sends (next to) no Raft
  frames.
- Concurrent clients write and read while the leader of a shard is killed with ``kill -9``, restarted,
  and killed again; the recorded history is linearizable, and what the mesh holds at the end agrees
  with every acknowledged write (the final reads are part of the checked history).
- Restarting the whole mesh from disk keeps every key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from kv_workload import KEYS, Tally, final_reads, run_client

from pyagent.localmesh import LocalPeer, wait_until
from pyagent.proto.kv.messages import PROTOCOL_ID
from pyagent.proto.kv.placement import shard_of
from pyagent_simnet.linearizability import HistoryRecorder, check

SHARDS = 64
KV_FRAMES_SENT = f"protocol_sent_frames{{protocol={PROTOCOL_ID}}}"
IDLE_WINDOW_S = 3.0
IDLE_FRAMES_MAX = 12


def replicated(peer: LocalPeer, replicas: int) -> bool:
    shards = peer.call("kv.shards")
    return len(shards) == SHARDS and all(len(s["voters"]) == replicas and s["leader"] for s in shards)


def quiet(peer: LocalPeer) -> bool:
    return all(s["quiet"] for s in peer.call("kv.shards"))


def kv_frames_sent(peer: LocalPeer) -> int:
    sent: int = peer.call("stats").get(KV_FRAMES_SENT, 0)
    return sent


def leader_of(peers: list[LocalPeer], shard: int) -> LocalPeer:
    for peer in peers:
        if peer.process is None or peer.process.poll() is not None:
            continue
        for status in peer.call("kv.shards"):
            if status["shard"] == shard and status["role"] == "leader":
                return peer
    raise LookupError(f"no live peer leads shard {shard}")


def test_three_bootstrapped_daemons_take_writes_with_no_manual_step(
    mesh: Callable[..., list[LocalPeer]],
) -> None:
    peers = mesh(3)
    put = peers[2].cli("kv", "put", "greeting", "hello")
    assert put.returncode == 0, put.stderr
    for peer in peers:
        got = peer.cli("kv", "get", "greeting")
        assert (got.returncode, got.stdout) == (0, "hello\n"), got.stderr
    absent = peers[1].cli("kv", "get", "nobody")
    assert absent.returncode == 1 and "not found" in absent.stderr
    wait_until(lambda: all(replicated(p, 3) for p in peers), 60, "every shard has 3 replicas")
    shards = peers[0].cli("shards")
    assert shards.returncode == 0 and "warning" not in shards.stdout, shards.stdout
    # Leaders move to their placement's preferred peer one transfer at a time (a transfer that aborts is
    # tried again later), so the spread is awaited, not expected at once.
    wait_until(
        lambda: len({s["leader"] for s in peers[0].call("kv.shards")}) == 3,
        60,
        "leadership is spread over the three peers",
    )
    # Then the idle shards go quiet, and the mesh stops sending Raft frames.
    wait_until(lambda: all(quiet(p) for p in peers), 60, "every shard is quiet on every peer")
    shown = peers[0].cli("shards")
    assert shown.returncode == 0 and "(quiet)" in shown.stdout, shown.stdout
    before = [kv_frames_sent(p) for p in peers]
    time.sleep(IDLE_WINDOW_S)
    sent = sum(kv_frames_sent(p) for p in peers) - sum(before)
    # Awake, each daemon sends ~20 heartbeat frames a second to each peer; a wake (say a false suspicion
    # by membership on this loaded machine) costs a few before the shards settle again.
    assert sent <= IDLE_FRAMES_MAX, f"{sent} Raft frames in {IDLE_WINDOW_S} s of an idle mesh"


@pytest.mark.parametrize("count", [3, 5])
def test_kill_9_of_a_shard_leader_keeps_the_history_linearizable(
    mesh: Callable[..., list[LocalPeer]], count: int
) -> None:
    peers = mesh(count)
    wait_until(lambda: replicated(peers[0], 3), 90, "every shard has 3 replicas")
    victim_shard = shard_of(KEYS[0], SHARDS)
    recorder = HistoryRecorder(trio.current_time)
    tally = Tally()

    def live_homes() -> list[Path]:
        return [p.home for p in peers if p.process is not None and p.process.poll() is None]

    async def chaos(stop: trio.Event) -> None:
        await trio.sleep(2.0)
        for _ in range(2):
            leader = await trio.to_thread.run_sync(leader_of, peers, victim_shard)
            await trio.to_thread.run_sync(leader.kill)
            await trio.sleep(2.0)
            leader.start()
            await trio.to_thread.run_sync(leader.wait_ready)
            await trio.sleep(2.0)
        stop.set()

    async def main() -> dict[bytes, bytes | None]:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for client in range(8):
                nursery.start_soon(run_client, client, live_homes, recorder, tally, stop, client)
            nursery.start_soon(chaos, stop)
        return await final_reads(peers[0].home, recorder)

    final = trio.run(main)
    history = recorder.history()
    result = check(history)
    print(
        f"{count} daemons: {len(history)} operations, {tally.acknowledged_writes} acknowledged writes, "
        f"{tally.reads} reads, {tally.unknown} unknown; {result.explanation.splitlines()[0]}"
    )
    assert result.linearizable, result.explanation
    assert tally.acknowledged_writes > 50, f"the workload barely ran: {tally}"
    assert any(value is not None for value in final.values())


def test_a_whole_mesh_restarted_from_disk_keeps_every_key(mesh: Callable[..., list[LocalPeer]]) -> None:
    peers = mesh(3)
    wait_until(lambda: replicated(peers[0], 3), 90, "every shard has 3 replicas")

    async def write_all() -> None:
        from pyagent.client import KvClient

        async with KvClient.open(peers[1].home) as kv:
            for index in range(200):
                await kv.put(f"k{index}".encode(), f"v{index}".encode())

    trio.run(write_all)
    for peer in peers:
        peer.stop()
    for peer in peers:
        # Each comes back on its old address, as a daemon on a fixed port does: the others find it there.
        peer.extra_args += ["--listen", peer.addr.split("/p2p/")[0]]
        peer.start()
    for peer in peers:
        peer.wait_ready()

    async def read_all() -> list[bytes | None]:
        from pyagent.client import KvClient

        async with KvClient.open(peers[2].home, timeout_s=30) as kv:
            return [await kv.get(f"k{index}".encode()) for index in range(200)]

    assert trio.run(read_all) == [f"v{index}".encode() for index in range(200)]
