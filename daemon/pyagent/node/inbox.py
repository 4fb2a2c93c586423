"""The one inbox of a node's core: everything ``NodeCore.step`` sees goes through here, in one queue.

Two lanes, one reader (the owner task in ``driver.py``):
- the bounded lane carries what the world sends: messages, connection changes, due timers, local
  requests, chunks of incoming transfers. ``send`` waits while it is full; that wait is the backpressure
  that reaches a fast peer's TCP window.
- the feedback lane carries what the shell reports about the core's own effects (``Persisted``,
  ``SendFailed``, ``RequestCancelled``, transfer progress). Its producers must never wait, or the owner
  (which may itself be waiting for storage) could deadlock with them, so ``send_feedback`` never blocks.
  Its size is bounded by what can be in flight at once, which the producers bound; going past
  ``feedback_max`` is a bug and raises.
The owner drains feedback first: it frees memory (held effects, storage slots) before taking new work.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, Protocol, TypeVar

import trio

from pyagent.errors import LocalProtocolError

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


class EventSender(Protocol[T_contra]):
    """Where the host's tasks put what they receive: the node's ``Inbox``, or a plain trio channel in
    tests. ``send`` waits while the receiver is full."""

    async def send(self, item: T_contra, /) -> None: ...


class Inbox(Generic[T]):
    def __init__(self, capacity: int, feedback_max: int) -> None:
        self.capacity = capacity
        self.feedback_max = feedback_max
        self._items: deque[T] = deque()
        self._feedback: deque[T] = deque()
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        return len(self._items) + len(self._feedback)

    async def send(self, item: T) -> None:
        """Queue ``item``, waiting while the bounded lane is full (same call as a trio channel's)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while len(self._items) >= self.capacity:
            await self._writable.park()
        self._items.append(item)
        self._readable.unpark()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_feedback(self, item: T) -> None:
        if len(self._feedback) >= self.feedback_max:
            raise LocalProtocolError(f"feedback lane over its bound of {self.feedback_max}: a producer leaks")
        self._feedback.append(item)
        self._readable.unpark()

    async def receive(self) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not (self._feedback or self._items):
            await self._readable.park()
        item = self._pop()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def receive_nowait(self) -> T | None:
        """The next item if one is queued, else None; never yields to other tasks."""
        if not (self._feedback or self._items):
            return None
        return self._pop()

    def _pop(self) -> T:
        if self._feedback:
            return self._feedback.popleft()
        item = self._items.popleft()
        self._writable.unpark()
        return item
