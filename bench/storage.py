"""Storage benchmark: synced write batches through ``StorageHandle`` (raft-engine, group commit).

Run: ``.venv/bin/python bench/storage.py [--seconds S] [--dir DIR]``. In one run it measures:

- closed-loop writers (1, 16 and 256 trio tasks; each submits a ``sync=True`` batch of one 100-byte
  put and one 100-byte log entry, waits until ``on_persisted`` reports it, and submits the next):
  batches per second, p50/p99 commit latency (submit to ``on_persisted``), and engine writes (fsyncs)
  per batch, which shows the group commit;
- beside them, a plain loop of 128-byte ``os.write`` + ``os.fsync`` on one file, and the same with
  ``os.fdatasync``: the floor one synced write costs on this disk.

Figures are printed, never asserted. Files go to a temporary directory under ``--dir`` (default: the
current directory, so a real disk, not a tmpfs), removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

try:
    from pyagent.node.storage import StorageHandle
except ImportError as error:  # the Rust core is not built
    sys.exit(f"bench/storage.py: the Rust core is not built ({error}); run ./dev setup")

from pyagent.proto.storage import LogAppend, Put, WriteBatch

WRITER_COUNTS = (1, 16, 256)
VALUE = b"v" * 100
WARMUP_S = 0.5


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def line(name: str, count: int, seconds: float, latencies_s: list[float], extra: str = "") -> None:
    p50 = percentile(latencies_s, 0.5) * 1e3
    p99 = percentile(latencies_s, 0.99) * 1e3
    print(f"  {name:<26} {count / seconds:>9,.0f}/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   {extra}")


async def handle_run(directory: Path, writers: int, seconds: float) -> None:
    handle = StorageHandle(directory)
    started: dict[int, float] = {}
    waiting: dict[int, trio.Event] = {}
    latencies: list[float] = []
    measuring = False
    count = 0

    def on_persisted(batch: WriteBatch) -> None:
        nonlocal count
        now = time.perf_counter()
        if measuring:
            latencies.append(now - started.pop(batch.tag))
            count += 1
        else:
            started.pop(batch.tag)
        waiting.pop(batch.tag).set()

    async def writer(w: int) -> None:
        i = 0
        while True:
            tag = w * 100_000_000 + i
            batch = WriteBatch(
                f"c{w % 8}", (Put(b"%d" % w, VALUE), LogAppend(f"w{w}", i + 1, (VALUE,))), tag=tag
            )
            waiting[tag] = event = trio.Event()
            started[tag] = time.perf_counter()
            handle.submit(batch)
            await event.wait()
            i += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle.run, on_persisted)
        for w in range(writers):
            nursery.start_soon(writer, w)
        await trio.sleep(WARMUP_S)
        before = handle.counters()
        measuring = True
        t0 = time.perf_counter()
        await trio.sleep(seconds)
        measuring = False
        elapsed = time.perf_counter() - t0
        after = handle.counters()
        nursery.cancel_scope.cancel()
    handle.close()
    fsyncs = after["storage_fsyncs"] - before["storage_fsyncs"]
    line(
        f"StorageHandle, {writers} writer{'s' if writers > 1 else ''}",
        count,
        elapsed,
        latencies,
        f"{fsyncs / max(count, 1):.3f} fsyncs/batch, {fsyncs / elapsed:,.0f} fsyncs/s",
    )


def plain_loop(directory: Path, name: str, sync: Callable[[int], None], seconds: float) -> None:
    path = directory / f"plain-{name}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    record = b"r" * 128
    latencies: list[float] = []
    try:
        end = time.perf_counter() + seconds
        while (start := time.perf_counter()) < end:
            os.write(fd, record)
            sync(fd)
            latencies.append(time.perf_counter() - start)
    finally:
        os.close(fd)
    line(f"os.write + os.{name}", len(latencies), seconds, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time per case")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where the temporary files go")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="storage-bench-", dir=args.dir))
    try:
        print(f"synced write batches, {args.seconds:.0f} s each, files in {args.dir}")
        plain_loop(directory, "fsync", os.fsync, args.seconds / 2)
        plain_loop(directory, "fdatasync", os.fdatasync, args.seconds / 2)
        for writers in WRITER_COUNTS:
            trio.run(handle_run, directory / f"home-{writers}", writers, args.seconds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
