"""A write storm through a ``StorageHandle``, for the ``kill -9`` durability test.

Run: ``python -m pyagent.testing.storage_writer HOME [--writers N] [--value-bytes B]``. Each of N trio
tasks writes batches in a closed loop (submit, wait until persisted, submit the next). Batch ``i`` of
writer ``w`` puts key ``w<w>-<i>``, puts ``last-w<w>`` and appends entry ``i + 1`` to log ``w<w>`` of
component ``c<w % 4>``; every third batch has ``sync=False``. When ``on_persisted`` reports a batch,
the script prints ``persisted <w> <i>`` and flushes, so whatever the test reads was reported durable
before the process was killed. A writer resumes after the batches the store already holds, so the
script can be killed and run again on the same home. ``check_store`` is what the test asserts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from pyagent.node.storage import StorageHandle
from pyagent.proto.storage import LogAppend, Put, StorageReader, WriteBatch

COMPONENTS = 4


def component(writer: int) -> str:
    return f"c{writer % COMPONENTS}"


def value(writer: int, i: int, size: int) -> bytes:
    head = f"{writer}:{i}:".encode()
    return (head * (size // len(head) + 1))[:size]


def make_batch(writer: int, i: int, size: int) -> WriteBatch:
    data = value(writer, i, size)
    return WriteBatch(
        component(writer),
        (
            Put(f"w{writer}-{i:07d}".encode(), data),
            Put(f"last-w{writer}".encode(), str(i).encode()),
            LogAppend(f"w{writer}", i + 1, (data,)),
        ),
        sync=i % 3 != 2,
        tag=writer * 10_000_000 + i,
    )


def check_store(home: Path, writers: int, size: int) -> dict[int, int]:
    """Assert the store holds, for each writer, a prefix of its batches, each whole; return the count
    per writer."""
    handle = StorageHandle(home)
    counts: dict[int, int] = {}
    try:
        for w in range(writers):
            reader: StorageReader = handle.reader(component(w))
            prefix = f"w{w}-".encode()
            keys = [key for key, _ in reader.scan(prefix, prefix + b"\xff", 10_000_000)]
            count = len(keys)
            assert keys == [f"w{w}-{i:07d}".encode() for i in range(count)], f"writer {w}: keys not a prefix"
            bounds = reader.log_bounds(f"w{w}")
            assert bounds == ((1, count) if count else None), f"writer {w}: log {bounds}, {count} keys"
            if count:
                assert reader.get(f"last-w{w}".encode()) == str(count - 1).encode(), f"writer {w}: last"
                entries = reader.log_entries(f"w{w}", 1, count + 1)
                for i, entry in enumerate(entries):
                    assert entry == value(w, i, size), f"writer {w}: entry {i + 1}"
                    assert reader.get(f"w{w}-{i:07d}".encode()) == entry, f"writer {w}: value {i}"
            else:
                assert reader.get(f"last-w{w}".encode()) is None, f"writer {w}: last without batches"
            counts[w] = count
    finally:
        handle.close()
    return counts


async def storm(home: Path, writers: int, size: int) -> None:
    handle = StorageHandle(home)
    done: dict[int, trio.Event] = {}

    def on_persisted(batch: WriteBatch) -> None:
        writer, i = divmod(batch.tag, 10_000_000)
        sys.stdout.write(f"persisted {writer} {i}\n")
        sys.stdout.flush()
        done.pop(batch.tag).set()

    async def writer(w: int) -> None:
        # After an earlier kill, go on from what the store holds.
        bounds = handle.reader(component(w)).log_bounds(f"w{w}")
        i = bounds[1] if bounds else 0
        while True:
            batch = make_batch(w, i, size)
            done[batch.tag] = event = trio.Event()
            await handle.wait_below(handle.pending_max)
            handle.submit(batch)
            await event.wait()
            i += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle.run, on_persisted)
        for w in range(writers):
            nursery.start_soon(writer, w)
        sys.stdout.write("ready\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("home", type=Path)
    parser.add_argument("--writers", type=int, default=64)
    parser.add_argument("--value-bytes", type=int, default=200)
    args = parser.parse_args()
    trio.run(storm, args.home, args.writers, args.value_bytes)


if __name__ == "__main__":
    main()
