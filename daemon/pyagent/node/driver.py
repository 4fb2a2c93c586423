"""The trio side of the sans-I/O seam: feeds events into ``NodeCore`` and carries out each ``Ready``.

One task owns the core, so ``step`` is never re-entered. Events come from a bounded channel (host
messages, connection changes), timers from a heap, and local requests from callers of ``request``. The
Ready order documented in ``proto/ready.py`` is kept: persist, send, apply, timers.
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
from pyagent.proto.events import (
    Event,
    LocalRequest,
    MessageReceived,
    PeerConnected,
    PeerDisconnected,
    TimerFired,
)
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import CancelTimer, Ready, Reply
from pyagent.proto.types import US_PER_S
from pyagent.proto.wire import Message

log = logging.getLogger("pyagent.driver")

REQUESTS_IN_FLIGHT_MAX = 1024
REQUEST_TIMEOUT_S = 30.0


class Sender(Protocol):
    def send(self, peer: str, protocol_id: str, message: Message, addrs: tuple[str, ...] = ()) -> None: ...

    def reset_inbound(self, peer: str, protocol_id: str) -> None: ...


class RequestFailed(Exception):
    """The core answered a local request with an error; the message is for the operator."""


@dataclass(slots=True)
class _Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    reply: Reply | None = None


def now_us() -> int:
    # trio's clock is monotonic, so the core never sees time go backwards.
    return int(trio.current_time() * US_PER_S)


class Driver:
    def __init__(
        self,
        core: NodeCore,
        sender: Sender,
        events: trio.MemoryReceiveChannel[Event],
        on_event: Callable[[Event], None] = lambda event: None,
    ) -> None:
        self.core = core
        self._sender = sender
        self._events = events
        # Called after each event is stepped; the daemon uses it to notify plugins.
        self.on_event = on_event
        self._timers: dict[str, int] = {}
        self._timer_heap: list[tuple[int, str]] = []
        self._timer_changed = trio.Event()
        self._waiters: dict[int, _Waiter] = {}
        self._request_ids = itertools.count(1)
        self.remote_errors = 0

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_events)
            nursery.start_soon(self._pump_timers)

    async def request(self, command: object, timeout_s: float = REQUEST_TIMEOUT_S) -> object:
        """Run a local command through the core and wait for its ``Reply``."""
        if len(self._waiters) >= REQUESTS_IN_FLIGHT_MAX:
            raise RequestFailed("too many requests in flight; try again")
        request_id = next(self._request_ids)
        waiter = self._waiters[request_id] = _Waiter()
        try:
            self.step(LocalRequest(request_id, command))
            with trio.move_on_after(timeout_s):
                await waiter.done.wait()
        finally:
            del self._waiters[request_id]
        if waiter.reply is None:
            raise RequestFailed(f"no answer within {timeout_s:.0f} s")
        if waiter.reply.error is not None:
            raise RequestFailed(waiter.reply.error)
        return waiter.reply.value

    def step(self, event: Event) -> None:
        try:
            ready = self.core.step(event, now_us())
        except RemoteProtocolError as exc:
            # The core left its state unchanged; the sender loses the stream, as for undecodable bytes.
            assert isinstance(event, MessageReceived)
            self.remote_errors += 1
            log.warning(
                "bad message peer=%s protocol=%s reason=%s; resetting its stream",
                event.peer,
                event.protocol,
                exc,
            )
            self._sender.reset_inbound(event.peer, event.protocol)
            return
        self._carry_out(ready)
        self.on_event(event)

    def _carry_out(self, ready: Ready) -> None:
        if ready.persist:
            # No component persists yet; the Raft round brings the durable store that must run first.
            raise LocalProtocolError("a component asked to persist, but this node has no durable store")
        for send in ready.send:
            self._sender.send(send.peer, send.protocol, send.message, send.addrs)
        for reply in ready.apply:
            waiter = self._waiters.get(reply.request_id)
            if waiter is not None:
                waiter.reply = reply
                waiter.done.set()
        for timer in ready.timers:
            if isinstance(timer, CancelTimer):
                self._timers.pop(timer.key, None)
            else:
                self._timers[timer.key] = timer.at_us
                heapq.heappush(self._timer_heap, (timer.at_us, timer.key))
                self._timer_changed.set()

    async def _pump_events(self) -> None:
        async for event in self._events:
            assert isinstance(event, MessageReceived | PeerConnected | PeerDisconnected)
            self.step(event)

    async def _pump_timers(self) -> None:
        while True:
            self._fire_due_timers()
            self._timer_changed = trio.Event()
            deadline = self._timer_heap[0][0] / US_PER_S if self._timer_heap else math.inf
            with trio.move_on_at(deadline):
                await self._timer_changed.wait()

    def _fire_due_timers(self) -> None:
        while self._timer_heap and self._timer_heap[0][0] <= now_us():
            at_us, key = heapq.heappop(self._timer_heap)
            # Heap entries are never removed on cancel or reset; skip the stale ones here instead.
            if self._timers.get(key) == at_us:
                del self._timers[key]
                self.step(TimerFired(key))
