"""A KV client workload for tests on real daemons: concurrent clients write and read through
``pyagent.client`` while the test breaks things, and every call goes into a linearizability history.

Each client talks to one daemon at a time (any daemon may answer) and moves to another when its daemon
goes away. Values are unique per write, so the checker can tell writes apart. A call without an answer
(its daemon was killed, it timed out) is recorded as unknown: it may or may not have taken effect.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from pyagent.client import KvClient
from pyagent.controlconn import ClientError
from pyagent_simnet.linearizability import HistoryRecorder

KEYS = [f"key-{index}".encode() for index in range(12)]
CALL_TIMEOUT_S = 8.0


@dataclass
class Tally:
    acknowledged_writes: int = 0
    reads: int = 0
    unknown: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


async def run_client(
    client_id: int,
    homes: Callable[[], Sequence[Path]],
    recorder: HistoryRecorder,
    tally: Tally,
    stop: trio.Event,
    seed: int,
) -> None:
    """Issue operations until ``stop`` is set, one at a time, through whichever daemon is up."""
    rng = random.Random(seed)
    written = 0
    while not stop.is_set():
        candidates = list(homes())
        if not candidates:
            await trio.sleep(0.1)
            continue
        try:
            async with KvClient.open(rng.choice(candidates), timeout_s=CALL_TIMEOUT_S) as kv:
                while not stop.is_set():
                    key = rng.choice(KEYS)
                    roll = rng.random()
                    written += 1
                    value = f"c{client_id}-{written}".encode()
                    if roll < 0.45:
                        with recorder.invoke(client_id, "put", key, value=value) as op:
                            await kv.put(key, value)
                            op.ok()
                            tally.acknowledged_writes += 1
                    elif roll < 0.85:
                        with recorder.invoke(client_id, "get", key) as op:
                            op.ok(await kv.get(key))
                            tally.reads += 1
                    elif roll < 0.95:
                        expected = await _peek(kv, key)
                        with recorder.invoke(client_id, "cas", key, value=value, expected=expected) as op:
                            swapped, _ = await kv.cas(key, expected, value)
                            op.ok(swapped)
                            tally.acknowledged_writes += swapped
                    else:
                        with recorder.invoke(client_id, "delete", key) as op:
                            await kv.delete(key)
                            op.ok()
                            tally.acknowledged_writes += 1
        except (ClientError, trio.TooSlowError, OSError) as exc:
            # The daemon went away or could not answer in time: the open call was recorded as unknown.
            tally.unknown += 1
            if len(tally.errors) < 20:
                tally.errors.append(f"client {client_id}: {exc}")
            await trio.sleep(0.05)


async def _peek(kv: KvClient, key: bytes) -> bytes | None:
    """A stale read, to give a cas a plausible expected value (unrecorded: it only picks the input)."""
    return await kv.get(key, stale=True)


async def final_reads(home: Path, recorder: HistoryRecorder) -> dict[bytes, bytes | None]:
    """Read every key once more, linearizably, and record those reads too: what the mesh holds at the
    end must agree with every write it acknowledged."""
    values: dict[bytes, bytes | None] = {}
    async with KvClient.open(home, timeout_s=30.0) as kv:
        for key in KEYS:
            with recorder.invoke("final", "get", key) as op:
                values[key] = await kv.get(key)
                op.ok(values[key])
    return values
