"""The one place a ``Ready`` is carried out: the daemon, simnet and the test harnesses each supply only a
``Sink`` (how to write, send, reply...), and this module decides when.

The order is the one ``ready.py`` documents. What must wait for durability (``send``, ``apply``,
``transfers``) is held here until the shell reports, with ``persisted()``, that every write handed to it
up to that Ready is durable. Shells make writes durable in the order they were handed over (group commit
may fold many into one fsync, but never reorders them), so one counter says what is durable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

from pyagent.errors import LocalProtocolError
from pyagent.proto.ready import CancelTimer, CancelTransfer, Ready, Reply, Send, Transfer
from pyagent.proto.storage import WriteBatch


class Sink(Protocol):
    """How one shell carries out each kind of effect. Every method returns at once: a write is handed
    to storage (its durability is reported later through ``Interpreter.persisted``), a send is queued."""

    def write(self, batch: WriteBatch) -> None: ...

    def send(self, send: Send) -> None: ...

    def reply(self, reply: Reply) -> None: ...

    def notice(self, notice: object) -> None: ...

    def set_timer(self, key: str, at_us: int) -> None: ...

    def cancel_timer(self, key: str) -> None: ...

    def transfer(self, transfer: Transfer) -> None: ...

    def cancel_transfer(self, cancel: CancelTransfer) -> None: ...


@dataclass(frozen=True, slots=True)
class _Held:
    durable_needed: int  # how many writes must be durable before these may go
    send: list[Send]
    apply: list[Reply]
    transfers: list[Transfer | CancelTransfer]


class Interpreter:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self.written = 0  # writes handed to the sink
        self.durable = 0  # of those, how many the shell reported durable
        self._held: deque[_Held] = deque()
        self.held_effects = 0  # sends, replies and transfers waiting for durability

    def carry_out(self, ready: Ready) -> None:
        if ready.is_empty():
            return
        sink = self._sink
        for batch in ready.writes:
            sink.write(batch)
        self.written += len(ready.writes)
        for send in ready.send_before_persist:
            sink.send(send)
        for reply in ready.apply_before_persist:
            sink.reply(reply)
        for timer in ready.timers:
            if isinstance(timer, CancelTimer):
                sink.cancel_timer(timer.key)
            else:
                sink.set_timer(timer.key, timer.at_us)
        for notice in ready.notices:
            sink.notice(notice)
        if not (ready.send or ready.apply or ready.transfers):
            return
        if self.durable == self.written and not self._held:
            self._release(ready.send, ready.apply, ready.transfers)
            return
        held = _Held(self.written, ready.send, ready.apply, ready.transfers)
        self._held.append(held)
        self.held_effects += len(held.send) + len(held.apply) + len(held.transfers)

    def persisted(self, count: int = 1) -> None:
        """The next ``count`` writes (in the order they were handed over) are durable."""
        self.durable += count
        if self.durable > self.written:
            raise LocalProtocolError(f"{self.durable} writes reported durable, but only {self.written} made")
        while self._held and self._held[0].durable_needed <= self.durable:
            held = self._held.popleft()
            self.held_effects -= len(held.send) + len(held.apply) + len(held.transfers)
            self._release(held.send, held.apply, held.transfers)

    def _release(
        self, sends: list[Send], replies: list[Reply], transfers: list[Transfer | CancelTransfer]
    ) -> None:
        sink = self._sink
        for send in sends:
            sink.send(send)
        for reply in replies:
            sink.reply(reply)
        for transfer in transfers:
            if isinstance(transfer, CancelTransfer):
                sink.cancel_transfer(transfer)
            else:
                sink.transfer(transfer)
