"""The trio side of the sans-I/O seam: one task owns ``NodeCore`` and feeds it from one inbox.

Everything the core sees goes through ``Inbox`` (``inbox.py``): host messages and connection changes,
due timers, local requests, incoming transfer chunks, and the feedback the shell owes the core about its
effects. The owner task takes one item at a time, steps the core, and hands the Ready to the one
``Interpreter`` (``proto/interpret.py``), which keeps the documented order; this module only supplies
the sink. So ``step`` is never re-entered, Readies are carried out in order, and a send that depends on a
write leaves only after the storage reported the write durable (``Persisted``), however slow the disk.
The owner steps every item already queued (up to ``BURST_EVENTS_MAX``) before it flushes the core once,
so the work components defer to the flush (the KV store's Raft Ready) is shared by the whole burst.
Under load it waits a little for the burst to grow: after a burst of several events it cedes to the
other tasks a few times before the flush (``_take_burst``), which halved the KV store's flushes and
its CPU per write (ADR 0017).

Backpressure: when storage falls behind (too many batches pending, or too many effects held for it), the
owner stops taking new work until it catches up. Its producers then wait on the full inbox, and TCP
pushes back on the peers.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from pyagent.errors import LocalProtocolError, RemoteProtocolError
from pyagent.node.inbox import Inbox
from pyagent.proto.events import (
    Event,
    LocalRequest,
    MessageReceived,
    Persisted,
    RequestCancelled,
    Started,
    TimerFired,
    TransferChunk,
    TransferReceived,
)
from pyagent.proto.interpret import Interpreter
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import CancelTransfer, Reply, ReplyError, Send, Transfer
from pyagent.proto.storage import WriteBatch
from pyagent.proto.types import US_PER_S
from pyagent.proto.wire import Message

log = logging.getLogger("pyagent.driver")

REQUESTS_IN_FLIGHT_MAX = 1024
REQUEST_TIMEOUT_S = 30.0
INBOX_CAPACITY = 4096
# Feedback producers: at most one RequestCancelled per request in flight, one Persisted per pending
# batch, and what the dialer and transfer service bound themselves; generous, because passing it is a bug.
FEEDBACK_MAX = 65_536
# The owner pauses new work while storage has this many batches pending, or this many effects wait for it.
STORAGE_PENDING_MAX = 4096
HELD_EFFECTS_MAX = 65_536
# Events stepped before one flush: bounds how long a burst delays the work deferred to the flush.
BURST_EVENTS_MAX = 256
# When the inbox runs empty in a burst, the owner cedes to the other tasks up to this many times per event
# of its previous burst, and at most IDLE_CEDES_MAX times in a row, before it flushes. A cede is one turn
# of trio's scheduler, IO polled included: a stream reader with a frame in its buffer, a control
# connection with a request, a peer's answer just arriving join the burst. After a lone event (one client,
# an idle mesh) it flushes at once, so latency at low load is unchanged.
IDLE_CEDES_PER_EVENT = 2
IDLE_CEDES_MAX = 24


class Sender(Protocol):
    def send(self, peer: str, protocol_id: str, message: Message, addrs: tuple[str, ...] = ()) -> None: ...

    def reset_inbound(self, peer: str, protocol_id: str) -> None: ...


class Storage(Protocol):
    """What the owner needs of the storage handle (``node/storage.py``, or a test's slow fake)."""

    @property
    def recovered(self) -> bool: ...

    @property
    def pending(self) -> int: ...

    def submit(self, batch: WriteBatch) -> None: ...

    async def wait_below(self, limit: int) -> None: ...

    async def run(self, on_persisted: Callable[[WriteBatch], None]) -> None: ...


class Transfers(Protocol):
    """What the owner needs of the bulk-transfer service (``node/transfer.py``)."""

    def start(self, transfer: Transfer) -> None: ...

    def cancel(self, cancel: CancelTransfer) -> None: ...

    def chunk_stepped(self, chunk: TransferChunk) -> None:
        """The core has taken ``chunk``: its bytes no longer count against the receive budget."""


class RequestFailed(Exception):
    """The core answered a local request with an error, or did not answer in time."""

    def __init__(self, error: ReplyError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    reply: Reply | None = None


@dataclass(frozen=True, slots=True)
class DueTimer:
    """A timer the timer task found due; stale if the core re-set or cancelled it since."""

    key: str
    at_us: int


def now_us() -> int:
    # trio's clock is monotonic, so the core never sees time go backwards. Rounding, not truncating:
    # once the clock reaches a timer's deadline (at_us / 1e6, a float), now_us() must reach at_us.
    return round(trio.current_time() * US_PER_S)


class Driver:
    def __init__(
        self,
        core: NodeCore,
        sender: Sender,
        storage: Storage,
        inbox: Inbox[Event | DueTimer] | None = None,
        transfers: Transfers | None = None,
        on_event: Callable[[Event], None] = lambda event: None,
        on_notice: Callable[[object], None] = lambda notice: None,
    ) -> None:
        self.core = core
        self.inbox: Inbox[Event | DueTimer] = (
            inbox if inbox is not None else Inbox(INBOX_CAPACITY, FEEDBACK_MAX)
        )
        self._sender = sender
        self._storage = storage
        self.transfers = transfers
        # Called after each event is stepped; the daemon uses it for bookkeeping and plugin hooks.
        self.on_event = on_event
        self.on_notice = on_notice
        self._interpreter = Interpreter(self)
        self._timers: dict[str, int] = {}
        self._timer_heap: list[tuple[int, str]] = []
        self._timer_changed = trio.Event()
        self._waiters: dict[int, _Waiter] = {}
        self._request_ids = itertools.count(1)
        self.remote_errors = 0
        self.started = trio.Event()

    async def run(self) -> None:
        """Own the core until cancelled: feed ``Started``, then every inbox item in turn."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._storage.run, self._on_persisted)
            nursery.start_soon(self._pump_timers)
            self._step(Started(self._storage.recovered))
            self.started.set()
            burst = 1
            while True:
                self._take(await self.inbox.receive())
                # Everything already queued is stepped before the one flush, so a burst of messages and
                # requests shares one Raft Ready: one write batch, one fsync, one frame per peer.
                burst = await self._take_burst(min(IDLE_CEDES_MAX, IDLE_CEDES_PER_EVENT * (burst - 1)))
                self._interpreter.carry_out(self.core.flush(now_us()))
                if (
                    self._storage.pending >= STORAGE_PENDING_MAX
                    or self._interpreter.held_effects >= HELD_EFFECTS_MAX
                ):
                    await self._storage.wait_below(STORAGE_PENDING_MAX // 2)

    async def request(self, command: object, timeout_s: float = REQUEST_TIMEOUT_S) -> object:
        """Run a local command through the core and wait for its ``Reply``.

        Raises ``RequestFailed`` with the reply's error. If the caller stops waiting (timeout or
        cancellation), the core is told with ``RequestCancelled``."""
        if len(self._waiters) >= REQUESTS_IN_FLIGHT_MAX:
            raise RequestFailed(ReplyError("busy", "too many requests in flight; try again"))
        request_id = next(self._request_ids)
        waiter = self._waiters[request_id] = _Waiter()
        reason = "cancelled by the caller"
        try:
            await self.inbox.send(LocalRequest(request_id, command))
            with trio.move_on_after(timeout_s):
                await waiter.done.wait()
            reason = f"no answer within {timeout_s:.0f} s"
        finally:
            del self._waiters[request_id]
            if waiter.reply is None:
                self.inbox.send_feedback(RequestCancelled(request_id, reason))
        if waiter.reply is None:
            raise RequestFailed(ReplyError("timeout", reason))
        if waiter.reply.error is not None:
            raise RequestFailed(waiter.reply.error)
        return waiter.reply.value

    def feedback(self, event: Event) -> None:
        """For the shell's services (dialer, transfers): report what became of an effect."""
        self.inbox.send_feedback(event)

    def _on_persisted(self, batch: WriteBatch) -> None:
        self.inbox.send_feedback(Persisted(batch.component, batch.tag))

    async def _take_burst(self, idle_cedes_max: int) -> int:
        """Step the rest of a burst whose first item is stepped: what is queued, and what arrives while
        the owner cedes up to ``idle_cedes_max`` times in a row to the other tasks. Returns its size."""
        taken = 1
        idle_cedes = 0
        while taken < BURST_EVENTS_MAX:
            item = self.inbox.receive_nowait()
            if item is None:
                if idle_cedes >= idle_cedes_max:
                    break
                idle_cedes += 1
                await trio.sleep(0)
                continue
            idle_cedes = 0
            taken += 1
            self._take(item)
        return taken

    def _take(self, item: Event | DueTimer) -> None:
        """Step one inbox item, leaving the flush to the caller."""
        if isinstance(item, DueTimer):
            if self._timers.get(item.key) != item.at_us:
                return
            del self._timers[item.key]
            self._step(TimerFired(item.key), flush=False)
            return
        if isinstance(item, Persisted):
            self._interpreter.persisted()
        self._step(item, flush=False)

    def _step(self, event: Event, *, flush: bool = True) -> None:
        try:
            ready = self.core.step(event, now_us(), flush=flush)
        except RemoteProtocolError as exc:
            # The core left its state unchanged; the sender loses the stream, as for undecodable bytes.
            if isinstance(event, TransferChunk | TransferReceived):
                # A peer's bulk transfer the core refused: it is the core's to drop; nothing to reset here.
                self.remote_errors += 1
                log.warning("bad transfer peer=%s protocol=%s reason=%s", event.peer, event.protocol, exc)
                return
            if not isinstance(event, MessageReceived):
                raise LocalProtocolError(f"RemoteProtocolError from a {type(event).__name__}") from exc
            self.remote_errors += 1
            log.warning(
                "bad message peer=%s protocol=%s reason=%s; resetting its stream",
                event.peer,
                event.protocol,
                exc,
            )
            self._sender.reset_inbound(event.peer, event.protocol)
            return
        finally:
            if isinstance(event, TransferChunk) and self.transfers is not None:
                self.transfers.chunk_stepped(event)
        self._interpreter.carry_out(ready)
        self.on_event(event)

    # ----- the sink: how this shell carries out each effect (the Interpreter decides when)

    def write(self, batch: WriteBatch) -> None:
        self._storage.submit(batch)

    def send(self, send: Send) -> None:
        self._sender.send(send.peer, send.protocol, send.message, send.addrs)

    def reply(self, reply: Reply) -> None:
        waiter = self._waiters.get(reply.request_id)
        if waiter is not None:
            waiter.reply = reply
            waiter.done.set()

    def notice(self, notice: object) -> None:
        self.on_notice(notice)

    def set_timer(self, key: str, at_us: int) -> None:
        self._timers[key] = at_us
        heapq.heappush(self._timer_heap, (at_us, key))
        self._timer_changed.set()

    def cancel_timer(self, key: str) -> None:
        self._timers.pop(key, None)

    def transfer(self, transfer: Transfer) -> None:
        if self.transfers is None:
            raise LocalProtocolError("a component started a transfer, but this node has no transfer service")
        self.transfers.start(transfer)

    def cancel_transfer(self, cancel: CancelTransfer) -> None:
        if self.transfers is not None:
            self.transfers.cancel(cancel)

    # ----- timers

    async def _pump_timers(self) -> None:
        while True:
            while self._timer_heap and self._timer_heap[0][0] <= now_us():
                at_us, key = heapq.heappop(self._timer_heap)
                # Heap entries are never removed on cancel or reset; the stale ones are skipped here, and
                # one that goes stale while queued is skipped by the owner.
                if self._timers.get(key) == at_us:
                    await self.inbox.send(DueTimer(key, at_us))
            self._timer_changed = trio.Event()
            deadline = self._timer_heap[0][0] / US_PER_S if self._timer_heap else math.inf
            with trio.move_on_at(deadline):
                await self._timer_changed.wait()
