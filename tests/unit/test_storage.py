"""The daemon's storage handle (``pyagent.node.storage``) over the Rust store (raft-engine).

Semantics are checked against ``pyagent.proto.memstore.MemoryStore``, which defines them; durability
across a real ``kill -9`` is in ``tests/integration/test_storage_kill9.py``.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyagent._core import Store
from pyagent.errors import LocalProtocolError
from pyagent.node.storage import StorageHandle, encode
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.storage import (
    Delete,
    DeleteRange,
    LogAppend,
    LogCompact,
    LogTruncate,
    Op,
    Put,
    StorageReader,
    WriteBatch,
)


async def persist(handle: StorageHandle, batches: Sequence[WriteBatch]) -> list[WriteBatch]:
    """Submit ``batches``, run the writer until every one is reported, return them in report order."""
    reported: list[WriteBatch] = []
    async with trio.open_nursery() as nursery:

        def on_persisted(batch: WriteBatch) -> None:
            reported.append(batch)
            if len(reported) == len(batches):
                nursery.cancel_scope.cancel()

        for batch in batches:
            handle.submit(batch)
        nursery.start_soon(handle.run, on_persisted)
    return reported


def newest_log_file(path: Path) -> Path:
    return max(path.glob("*.raftlog"))


def numbered(i: int, sync: bool = True) -> WriteBatch:
    value = bytes([i % 256]) * 2000
    return WriteBatch(
        "t",
        (Put(b"k%05d" % i, value), LogAppend("log", i, (value,)), Put(b"last", b"%d" % i)),
        sync=sync,
        tag=i,
    )


def check_numbered(reader: StorageReader, through: int) -> None:
    for i in range(1, through + 1):
        assert reader.get(b"k%05d" % i) == bytes([i % 256]) * 2000, i
    # The batch after the last one is all or nothing: none of its three ops is there.
    assert reader.get(b"k%05d" % (through + 1)) is None
    assert reader.log_bounds("log") == (1, through)
    assert reader.get(b"last") == b"%d" % through


async def test_reports_in_order_and_reads_see_them(tmp_path: Path) -> None:
    handle = StorageHandle(tmp_path)
    assert not handle.recovered
    batches = [numbered(i, sync=i % 2 == 0) for i in range(1, 41)]
    reported = await persist(handle, batches)
    assert [b.tag for b in reported] == list(range(1, 41))
    assert handle.pending == 0
    check_numbered(handle.reader("t"), 40)
    assert handle.reader("t").log_entries("log", 3, 5) == [b"\x03" * 2000, b"\x04" * 2000]
    assert handle.reader("other").get(b"k00001") is None
    counters = handle.counters()
    assert counters["storage_batches"] == 40
    assert 1 <= counters["storage_writes"] <= 40
    assert counters["storage_bytes"] > 0  # raft-engine compresses writes above 8 KiB


async def test_a_refused_batch_is_fatal_and_leaves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handle = StorageHandle(tmp_path)
    await persist(handle, [WriteBatch("a", (LogAppend("g", 1, (b"1",)),))])
    # Folded into one write with a good batch, the hole fails both: nothing of either lands.
    good = WriteBatch("a", (Put(b"k", b"v"), LogAppend("g", 2, (b"2",))))
    other = WriteBatch("b", (Put(b"k", b"v"),))
    hole = WriteBatch("a", (Put(b"k2", b"v"), LogAppend("g", 9, (b"x",))))
    for batch in (good, other, hole):
        handle.submit(batch)
    reported: list[WriteBatch] = []
    with caplog.at_level(logging.ERROR, logger="pyagent.storage"), pytest.raises(ValueError, match="hole"):
        await handle.run(reported.append)
    assert reported == []
    assert [r.getMessage() for r in caplog.records if r.name == "pyagent.storage"] == [
        'a write batch was refused: a: append at 9 to "g" leaves a hole after 2 (3 batches of a, b); stopping'
    ]
    reader = handle.reader("a")
    assert reader.get(b"k") is None and reader.get(b"k2") is None
    assert handle.reader("b").get(b"k") is None
    assert reader.log_bounds("g") == (1, 1)
    with pytest.raises(LocalProtocolError, match="failed earlier"):
        handle.submit(good)
    handle.close()
    reopened = StorageHandle(tmp_path)
    assert reopened.reader("a").log_bounds("g") == (1, 1)
    assert reopened.reader("a").get(b"k") is None


async def test_group_commit_many_writers_share_fsyncs(tmp_path: Path) -> None:
    handle = StorageHandle(tmp_path)
    writers, rounds = 256, 4
    done: dict[int, trio.Event] = {}

    def on_persisted(batch: WriteBatch) -> None:
        done.pop(batch.tag).set()

    async def writer(w: int) -> None:
        for r in range(rounds):
            tag = w * rounds + r
            done[tag] = event = trio.Event()
            handle.submit(WriteBatch(f"c{w % 8}", (Put(b"%d" % tag, b"x" * 100),), tag=tag))
            await event.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle.run, on_persisted)
        async with trio.open_nursery() as writers_nursery:
            for w in range(writers):
                writers_nursery.start_soon(writer, w)
        nursery.cancel_scope.cancel()
    counters = handle.counters()
    assert counters["storage_batches"] == writers * rounds
    # One write (one fsync) per round of all writers would be ideal; far fewer than one per batch.
    assert counters["storage_fsyncs"] == counters["storage_writes"]
    assert counters["storage_writes"] <= writers * rounds // 8, counters
    assert handle.reader("c3").get(b"%d" % (3 * rounds)) == b"x" * 100


async def test_pending_is_bounded_and_wait_below_waits(tmp_path: Path) -> None:
    handle = StorageHandle(tmp_path, pending_max=4)
    for i in range(4):
        handle.submit(WriteBatch("a", (Put(b"%d" % i, b"v"),)))
    assert handle.pending == 4
    with pytest.raises(LocalProtocolError, match="pending"):
        handle.submit(WriteBatch("a", (Put(b"x", b"v"),)))
    with pytest.raises(ValueError):
        await handle.wait_below(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle.run, lambda batch: None)
        with trio.fail_after(10):
            await handle.wait_below(1)
        assert handle.pending == 0
        nursery.cancel_scope.cancel()
    await handle.wait_below(1)  # returns at once


async def test_reopen_sees_everything(tmp_path: Path) -> None:
    handle = StorageHandle(tmp_path)
    await persist(handle, [numbered(i, sync=False) for i in range(1, 11)])
    await persist(
        handle,
        [
            WriteBatch("x", (Put(b"a", b"1"), Put(b"b", b"2"), Put(b"c", b"3"))),
            WriteBatch("x", (DeleteRange(b"b", b"c"), LogAppend("l", 5, (b"e5", b"e6")))),
            WriteBatch("x", (LogCompact("l", 6), Delete(b"a"))),
        ],
    )
    handle.close()
    reopened = StorageHandle(tmp_path)
    assert reopened.recovered
    check_numbered(reopened.reader("t"), 10)
    reader = reopened.reader("x")
    assert reader.scan(b"", None, 100) == [(b"c", b"3")]
    assert reader.log_bounds("l") == (6, 6)
    assert reader.log_entries("l", 6, 7) == [b"e6"]


@pytest.mark.parametrize("damage", ["cut", "garbage"])
async def test_torn_tail_loses_only_the_torn_batch(tmp_path: Path, damage: str) -> None:
    handle = StorageHandle(tmp_path)
    for i in range(1, 9):
        await persist(handle, [numbered(i)])  # one write each, so the last is the file's last record
    handle.close()
    path = newest_log_file(tmp_path / "store")
    size = path.stat().st_size
    if damage == "cut":
        # Batch 8's record holds two copies of a 2000-byte value: 1000 bytes off the end is inside it.
        with path.open("r+b") as file:
            file.truncate(size - 1000)
        survivors = 7
    else:
        with path.open("ab") as file:
            file.write(bytes((i * 37 + 11) % 256 for i in range(3000)))
        survivors = 8
    reopened = StorageHandle(tmp_path)
    assert reopened.recovered
    check_numbered(reopened.reader("t"), survivors)
    # And it goes on writing after the repaired tail.
    await persist(reopened, [numbered(survivors + 1)])
    reopened.close()
    check_numbered(StorageHandle(tmp_path).reader("t"), survivors + 1)


# Semantics: random batch sequences through the Rust store and through MemoryStore, compared.

COMPONENTS = ("a", "b")
LOGS = ("x", "y")
KEYS = (b"", b"a", b"ab", b"b", b"c", b"__", b"\xff")
KINDS = ("put", "put", "delete", "range", "append", "append", "cut", "compact")


def draw_batch(data: st.DataObject, memory: MemoryStore, component: str) -> WriteBatch:
    reader = memory.reader(component)
    spans = {log: reader.log_bounds(log) for log in LOGS}
    # After a truncate or a compact of a log, this batch appends no more to it: there MemoryStore's
    # check does not follow the log (see the report in docs/adr/0008-storage.md).
    settled: set[str] = set()
    ops: list[Op] = []
    for _ in range(data.draw(st.integers(1, 5))):
        kind = data.draw(
            st.sampled_from(["put", "put", "delete", "range", "append", "append", "cut", "compact"])
        )
        log = data.draw(st.sampled_from(LOGS))
        span = spans[log]
        last = span[1] if span else 0
        if kind == "put":
            ops.append(Put(data.draw(st.sampled_from(KEYS)), data.draw(st.binary(max_size=3))))
        elif kind == "delete":
            ops.append(Delete(data.draw(st.sampled_from(KEYS))))
        elif kind == "range":
            start, end = sorted(
                data.draw(st.lists(st.sampled_from(KEYS), min_size=2, max_size=2, unique=True))
            )
            ops.append(DeleteRange(start, end))
        elif kind == "append" and log not in settled:
            if span is None:
                first = data.draw(st.integers(1, 12))
            elif data.draw(st.integers(0, 9)) == 0:
                first = last + data.draw(st.integers(2, 3))  # a hole: both must refuse the batch
            else:
                first = data.draw(st.integers(span[0], last + 1))
            entries = tuple(data.draw(st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=3)))
            ops.append(LogAppend(log, first, entries))
            spans[log] = ((span[0] if span and first > span[0] else first), first + len(entries) - 1)
        elif kind == "cut":
            ops.append(LogTruncate(log, data.draw(st.integers(1, last + 2))))
            settled.add(log)
        elif kind == "compact":
            ops.append(LogCompact(log, data.draw(st.integers(1, last + 2))))
            settled.add(log)
    if not ops:
        ops.append(Put(b"a", b"fill"))
    return WriteBatch(component, tuple(ops), sync=data.draw(st.booleans()))


def assert_same(store: Store, memory: MemoryStore, data: st.DataObject) -> None:
    for component in COMPONENTS:
        want = memory.reader(component)
        assert store.scan(component, b"", None, 1000) == want.scan(b"", None, 1000)
        start = data.draw(st.sampled_from(KEYS))
        end = data.draw(st.sampled_from((None, *KEYS)))
        limit = data.draw(st.integers(0, 4))
        if end is None or start < end:
            assert store.scan(component, start, end, limit) == want.scan(start, end, limit)
        for key in KEYS:
            assert store.get(component, key) == want.get(key)
        for log in LOGS:
            bounds = want.log_bounds(log)
            assert store.log_bounds(component, log) == bounds
            if bounds is not None:
                lo, hi = bounds
                assert store.log_entries(component, log, lo, hi + 1) == want.log_entries(log, lo, hi + 1)
                with pytest.raises(IndexError):
                    store.log_entries(component, log, lo, hi + 2)
            else:
                with pytest.raises(IndexError):
                    store.log_entries(component, log, 1, 2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_semantics_agree_with_memstore(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = Store(directory)
        memory = MemoryStore()
        for _ in range(data.draw(st.integers(1, 12), label="writes")):
            # Several batches in one write, as the group-committing writer folds them; each is drawn
            # against the state the ones before it leave.
            before = copy.deepcopy(memory)
            group: list[WriteBatch] = []
            refused = False
            for _ in range(data.draw(st.integers(1, 3))):
                batch = draw_batch(data, memory, data.draw(st.sampled_from(COMPONENTS)))
                batch.check()
                group.append(batch)
                try:
                    memory.apply(batch)
                except ValueError:
                    refused = True
                    break
            if refused:
                memory = before
                with pytest.raises(ValueError, match="hole"):
                    store.write([encode(batch) for batch in group], True)
            else:
                store.write([encode(batch) for batch in group], any(b.sync for b in group))
            if data.draw(st.integers(0, 7)) == 0:
                store.close()
                store = Store(directory)
            assert store.is_empty() == memory.is_empty()
            assert_same(store, memory, data)
        store.close()


def test_encode_refuses_what_is_not_an_op() -> None:
    bad: Callable[[], object] = lambda: encode(WriteBatch("a", (object(),)))  # type: ignore[arg-type]  # noqa: E731
    with pytest.raises(TypeError):
        bad()
