"""The daemon's owner task: one task steps the core, and no dependent send overtakes its write.

The storage here is slow on purpose (every sync takes 20 ms of trio's clock) and the load comes from
many tasks at once: requests, peer messages and timers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import pytest
import trio

from pyagent.node.driver import BURST_EVENTS_MAX, IDLE_CEDES_PER_EVENT, Driver, RequestFailed
from pyagent.proto.component import Component
from pyagent.proto.events import LocalRequest, MessageReceived, RequestCancelled, Started
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import Ready, Reply, Send, SetTimer
from pyagent.proto.storage import Put, WriteBatch
from pyagent.proto.wire import Message

PROTOCOL = "/pyagent/recorder/1.0.0"
SYNC_S = 0.02


class Note:
    def __init__(self, text: str) -> None:
        self.text = text


class Hang:
    """A command the component never answers."""


class Recorder(Component):
    """Writes every note, acknowledges it to a peer and to the caller only once it is durable, and keeps
    a timer ticking so timers compete with everything else."""

    name: ClassVar[str] = "recorder"
    protocol_id: ClassVar[str] = PROTOCOL
    command_types: ClassVar[tuple[type, ...]] = (Note, Hang)

    def __init__(self) -> None:
        self.tag = 0
        self.heard: list[str] = []
        self.ticks = 0
        self.cancelled: list[int] = []

    def on_started(self, event: Started, now_us: int, out: Ready) -> None:
        out.timers.append(SetTimer(self.timer_key("tick"), now_us + 1_000))

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        if isinstance(request.command, Hang):
            return
        assert isinstance(request.command, Note)
        self.tag += 1
        out.writes.append(
            WriteBatch(self.name, (Put(b"note/%d" % self.tag, request.command.text.encode()),), tag=self.tag)
        )
        out.send_before_persist.append(Send("peer", PROTOCOL, {"v": 1, "t": "early", "tag": self.tag}))
        out.send.append(Send("peer", PROTOCOL, {"v": 1, "t": "durable", "tag": self.tag}))
        out.apply.append(Reply(request.request_id, value=self.tag))

    def on_message(self, event: MessageReceived, now_us: int, out: Ready) -> None:
        self.heard.append(str(event.message["t"]))

    def on_timer(self, suffix: str, now_us: int, out: Ready) -> None:
        self.ticks += 1
        out.timers.append(SetTimer(self.timer_key("tick"), now_us + 1_000))

    def on_request_cancelled(self, event: RequestCancelled, now_us: int, out: Ready) -> None:
        self.cancelled.append(event.request_id)


class SlowStorage:
    """Group commit over a MemoryStore; each sync takes SYNC_S. Records when each tag became durable."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.recovered = False
        self.queue: list[WriteBatch] = []
        self.durable_tags: set[int] = set()
        self.syncs = 0
        self._wakeup = trio.Event()
        self._progress = trio.Event()

    @property
    def pending(self) -> int:
        return len(self.queue)

    def submit(self, batch: WriteBatch) -> None:
        self.queue.append(batch)
        self._wakeup.set()

    async def wait_below(self, limit: int) -> None:
        while len(self.queue) >= limit:
            await self._progress.wait()

    async def run(self, on_persisted: Callable[[WriteBatch], None]) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            taken, self.queue = self.queue, []
            await trio.sleep(SYNC_S)
            self.syncs += 1
            for batch in taken:
                self.store.apply(batch)
                self.durable_tags.add(batch.tag)
                on_persisted(batch)
            self._progress.set()
            self._progress = trio.Event()


class CheckingSender:
    """Fails the test if a dependent send leaves before the write it depends on is durable."""

    def __init__(self, storage: SlowStorage) -> None:
        self.storage = storage
        self.sent: list[Message] = []
        self.violations: list[int] = []

    def send(self, peer: str, protocol_id: str, message: Message, addrs: tuple[str, ...] = ()) -> None:
        if message["t"] == "durable" and message["tag"] not in self.storage.durable_tags:
            self.violations.append(int(message["tag"]))
        self.sent.append(message)

    def reset_inbound(self, peer: str, protocol_id: str) -> None:
        raise AssertionError("no message in this test is bad")


class OneTaskCore(NodeCore):
    """Records which task steps it, and whether a step ever starts inside another."""

    def __init__(self, components: list[Component]) -> None:
        super().__init__("me", components)
        self.stepping_tasks: set[object] = set()
        self.inside = False
        self.overlaps = 0

    def step(self, event, now_us, *, flush=True):  # type: ignore[no-untyped-def]
        self.overlaps += self.inside
        self.inside = True
        self.stepping_tasks.add(trio.lowlevel.current_task())
        try:
            return super().step(event, now_us, flush=flush)
        finally:
            self.inside = False


async def test_one_task_steps_the_core_and_dependent_sends_wait_for_their_fsync(
    autojump_clock: object,
) -> None:
    recorder = Recorder()
    core = OneTaskCore([recorder])
    storage = SlowStorage()
    sender = CheckingSender(storage)
    driver = Driver(core, sender, storage)
    replies: list[object] = []

    async def client(index: int) -> None:
        for round_ in range(5):
            replies.append(await driver.request(Note(f"{index}/{round_}")))

    async def peer() -> None:
        for _ in range(200):
            await driver.inbox.send(MessageReceived("peer", PROTOCOL, {"v": 1, "t": "hello"}))
            await trio.sleep(0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        async with trio.open_nursery() as load:
            for index in range(40):
                load.start_soon(client, index)
            load.start_soon(peer)
        nursery.cancel_scope.cancel()

    assert len(core.stepping_tasks) == 1 and core.overlaps == 0
    assert sender.violations == []
    assert sorted(replies) == list(range(1, 201))  # every reply came, each after its write
    assert {int(m["tag"]) for m in sender.sent if m["t"] == "durable"} == set(range(1, 201))
    assert recorder.heard.count("hello") == 200 and recorder.ticks > 0
    # Group commit: 200 writes from 40 concurrent writers took far fewer syncs.
    assert storage.syncs < 100
    assert storage.store.reader("recorder").get(b"note/200") is not None


async def test_a_request_that_times_out_is_cancelled_in_the_core(autojump_clock: object) -> None:
    recorder = Recorder()
    storage = SlowStorage()
    driver = Driver(NodeCore("me", [recorder]), CheckingSender(storage), storage)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        with pytest.raises(RequestFailed) as failed:
            await driver.request(Hang(), timeout_s=1)
        assert failed.value.error.code == "timeout"
        await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert recorder.cancelled == [1]


class Batcher(Component):
    """Defers every note to ``on_flush``, as the KV store defers its Raft Ready: one write and one
    round of replies for all the notes a flush finds."""

    name: ClassVar[str] = "batcher"
    protocol_id: ClassVar[str] = PROTOCOL
    command_types: ClassVar[tuple[type, ...]] = (Note,)

    def __init__(self) -> None:
        self.waiting: list[LocalRequest] = []
        self.flushed_sizes: list[int] = []

    def on_request(self, request: LocalRequest, now_us: int, out: Ready) -> None:
        self.waiting.append(request)

    def on_flush(self, now_us: int, out: Ready) -> None:
        if not self.waiting:
            return
        taken, self.waiting = self.waiting, []
        self.flushed_sizes.append(len(taken))
        ops = tuple(Put(b"note/%d" % r.request_id, b"") for r in taken)
        out.writes.append(WriteBatch(self.name, ops, tag=len(self.flushed_sizes)))
        out.apply.extend(Reply(r.request_id, value=r.request_id) for r in taken)


async def test_a_burst_of_queued_events_is_flushed_once_and_nothing_waits_past_its_burst(
    autojump_clock: object,
) -> None:
    batcher = Batcher()
    storage = SlowStorage()
    driver = Driver(NodeCore("me", [batcher]), CheckingSender(storage), storage)
    replies: list[object] = []

    async def client() -> None:
        for _ in range(5):
            replies.append(await driver.request(Note("n")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver.run)
        async with trio.open_nursery() as load:
            for _ in range(100):
                load.start_soon(client)
        nursery.cancel_scope.cancel()

    # Every request was answered, so every flush took everything stepped before it.
    assert sorted(replies) == list(range(1, 501)) and batcher.waiting == []
    # The 100 clients' requests queue up while the owner works, and each burst shares one flush.
    assert sum(batcher.flushed_sizes) == 500
    assert len(batcher.flushed_sizes) < 100
    assert max(batcher.flushed_sizes) <= BURST_EVENTS_MAX


async def test_the_owner_flushes_at_most_burst_events_max_at_a_time(autojump_clock: object) -> None:
    batcher = Batcher()
    storage = SlowStorage()
    driver = Driver(NodeCore("me", [batcher]), CheckingSender(storage), storage)
    async with trio.open_nursery() as nursery:
        for request_id in range(1, BURST_EVENTS_MAX * 2 + 2):
            driver.inbox.send_feedback(LocalRequest(request_id, Note("n")))
        nursery.start_soon(driver.run)
        with trio.fail_after(5):
            while sum(batcher.flushed_sizes) < BURST_EVENTS_MAX * 2 + 1:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert batcher.flushed_sizes == [BURST_EVENTS_MAX, BURST_EVENTS_MAX, 1]


async def flushed_sizes_of_straggling_pair(queued_before: int, checkpoints_between: int) -> list[int]:
    """Flush sizes when ``queued_before`` notes are queued at once, and then, once they are flushed, one
    task sends a note and another after ``checkpoints_between`` turns of the scheduler."""
    batcher = Batcher()
    storage = SlowStorage()
    driver = Driver(NodeCore("me", [batcher]), CheckingSender(storage), storage)
    async with trio.open_nursery() as nursery:
        for request_id in range(1, queued_before + 1):
            driver.inbox.send_feedback(LocalRequest(request_id, Note("n")))
        nursery.start_soon(driver.run)
        with trio.fail_after(5):
            while sum(batcher.flushed_sizes) < queued_before:
                await trio.sleep(0.01)
        driver.inbox.send_feedback(LocalRequest(queued_before + 1, Note("n")))
        for _ in range(checkpoints_between):
            await trio.sleep(0)
        driver.inbox.send_feedback(LocalRequest(queued_before + 2, Note("n")))
        with trio.fail_after(5):
            while sum(batcher.flushed_sizes) < queued_before + 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return batcher.flushed_sizes


async def test_after_a_burst_the_owner_waits_a_few_turns_for_stragglers(autojump_clock: object) -> None:
    # The burst of 5 lets the next one cede up to 8 times: a note 3 turns behind joins its flush.
    assert IDLE_CEDES_PER_EVENT * 4 > 3
    assert await flushed_sizes_of_straggling_pair(5, checkpoints_between=3) == [5, 2]


async def test_after_a_lone_event_the_owner_flushes_at_once(autojump_clock: object) -> None:
    # A lone event (one client, an idle mesh) is flushed without waiting: the note 3 turns behind gets
    # its own flush.
    assert await flushed_sizes_of_straggling_pair(1, checkpoints_between=3) == [1, 1, 1]
