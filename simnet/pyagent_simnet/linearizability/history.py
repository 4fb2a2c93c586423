"""The history format for the KV linearizability checker, and a recorder that client code fills in.

A history is a list of `Operation`s. Each one is a client's call of `put`, `get`, `delete` or `cas` on
one key, with the time the call was made and the time its answer came back. An operation whose answer
never came (the client timed out, was cancelled or crashed) has ``return_time=None``: it may or may not
have taken effect, at any moment after its call, as Jepsen's "info" operations. An operation that
definitely failed (the server refused it before doing anything) is not in the history at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TypeAlias

Key: TypeAlias = bytes | str
Value: TypeAlias = bytes
Kind: TypeAlias = Literal["put", "get", "delete", "cas"]
# get: the value read, or None for "absent"; cas: whether it swapped; put/delete: None.
OpResult: TypeAlias = Value | bool | None
Token: TypeAlias = int

KINDS: tuple[Kind, ...] = ("put", "get", "delete", "cas")


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key.

    ``value`` is what ``put`` writes, or what ``cas`` writes when it swaps (None: ``cas`` deletes).
    ``expected`` is what ``cas`` compares with (None: the key must be absent); other kinds leave it None.
    ``result`` is what the operation answered; it is meaningless while ``return_time`` is None.
    """

    client: int | str
    kind: Kind
    key: Key
    call_time: float
    return_time: float | None
    value: Value | None = None
    expected: Value | None = None
    result: OpResult = None

    def __post_init__(self) -> None:
        # A malformed operation is the test's bug, not the system's: say so before checking anything.
        if self.kind not in KINDS:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.return_time is not None and self.return_time < self.call_time:
            raise ValueError(
                f"{self.kind} returned at {self.return_time} before its call at {self.call_time}"
            )
        if self.kind == "put" and self.value is None:
            raise ValueError("put needs a value (use delete to remove a key)")
        if self.kind in ("get", "delete") and self.value is not None:
            raise ValueError(f"{self.kind} takes no value")
        if self.kind != "cas" and self.expected is not None:
            raise ValueError(f"only cas takes an expected value, not {self.kind}")
        if self.return_time is None:
            return
        if self.kind == "cas" and not isinstance(self.result, bool):
            raise ValueError(f"cas result must be a bool, not {self.result!r}")
        if self.kind == "get" and not (self.result is None or isinstance(self.result, bytes)):
            raise ValueError(f"get result must be bytes or None, not {self.result!r}")
        if self.kind in ("put", "delete") and self.result is not None:
            raise ValueError(f"{self.kind} result must be None, not {self.result!r}")

    @property
    def completed(self) -> bool:
        return self.return_time is not None

    def describe(self) -> str:
        """One line such as ``client 3 cas 'k' b'a'->b'b' = True [1.000000, 1.250000]``."""
        if self.kind == "put":
            what = f"put {self.key!r} {_short(self.value)}"
        elif self.kind == "delete":
            what = f"delete {self.key!r}"
        elif self.kind == "get":
            what = f"get {self.key!r}"
        else:
            what = f"cas {self.key!r} {_short(self.expected)}->{_short(self.value)}"
        if self.return_time is None:
            return f"client {self.client} {what} = ? [{self.call_time:.6f}, unknown]"
        answer = "" if self.kind in ("put", "delete") else f" = {_short(self.result)}"
        return f"client {self.client} {what}{answer} [{self.call_time:.6f}, {self.return_time:.6f}]"


def _short(value: OpResult) -> str:
    if value is None:
        return "absent"
    text = repr(value)
    return text if len(text) <= 24 else text[:21] + "..."


@dataclass(slots=True)
class _Pending:
    client: int | str
    kind: Kind
    key: Key
    value: Value | None
    expected: Value | None
    call_time: float


class Invocation:
    """An operation in flight, from `HistoryRecorder.invoke`; call `ok` or `fail` before the block ends."""

    def __init__(self, recorder: HistoryRecorder, token: Token) -> None:
        self._recorder = recorder
        self.token = token
        self.done = False

    def ok(self, result: OpResult = None) -> None:
        self._recorder.ok(self.token, result)
        self.done = True

    def fail(self) -> None:
        self._recorder.fail(self.token)
        self.done = True


class HistoryRecorder:
    """Collects a history from many clients: trio tasks or threads (a lock guards every update).

    ``token = rec.call(client, "put", key, value=b"v")`` before sending the request, then exactly one of
    ``rec.ok(token, result)`` (the answer came), ``rec.unknown(token)`` (no answer: it may have happened)
    or ``rec.fail(token)`` (it definitely did not happen). Calls still open when `history` is taken are
    unknown. The clock must be monotonic and shared by all clients (``trio.current_time`` under a
    virtual clock works too).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._next_token: Token = 0
        self._pending: dict[Token, _Pending] = {}
        # Finished operations by token, so the history keeps call order whatever order they finish in.
        self._finished: dict[Token, Operation] = {}
        self._failed: set[Token] = set()

    def call(
        self,
        client: int | str,
        kind: Kind,
        key: Key,
        *,
        value: Value | None = None,
        expected: Value | None = None,
    ) -> Token:
        # Validate now, while the caller's stack still shows the mistake.
        Operation(client, kind, key, 0.0, None, value=value, expected=expected)
        with self._lock:
            # The clock is read under the lock so that token order is call-time order.
            token = self._next_token
            self._next_token += 1
            self._pending[token] = _Pending(client, kind, key, value, expected, self._clock())
        return token

    def ok(self, token: Token, result: OpResult = None) -> None:
        with self._lock:
            now = self._clock()
            pending = self._take(token)
            self._finished[token] = Operation(
                pending.client,
                pending.kind,
                pending.key,
                pending.call_time,
                now,
                value=pending.value,
                expected=pending.expected,
                result=result,
            )

    def unknown(self, token: Token) -> None:
        with self._lock:
            pending = self._take(token)
            self._finished[token] = _unknown(pending)

    def fail(self, token: Token) -> None:
        with self._lock:
            self._take(token)
            self._failed.add(token)

    @contextmanager
    def invoke(
        self,
        client: int | str,
        kind: Kind,
        key: Key,
        *,
        value: Value | None = None,
        expected: Value | None = None,
    ) -> Iterator[Invocation]:
        """``with rec.invoke(c, "get", k) as op: op.ok(await kv.get(k))``.

        A block left without `Invocation.ok` or `Invocation.fail` (an exception, a trio cancellation or
        timeout) records the operation as unknown, which is the only safe reading of "no answer".
        """
        invocation = Invocation(self, self.call(client, kind, key, value=value, expected=expected))
        try:
            yield invocation
        finally:
            if not invocation.done:
                self.unknown(invocation.token)

    def history(self) -> list[Operation]:
        """The operations so far in call order; those still in flight are unknown."""
        with self._lock:
            ops = dict(self._finished)
            for token, pending in self._pending.items():
                ops[token] = _unknown(pending)
        return [ops[token] for token in sorted(ops)]

    def _take(self, token: Token) -> _Pending:
        pending = self._pending.pop(token, None)
        if pending is None:
            finished = token in self._finished or token in self._failed
            state = "already finished" if finished else "unknown"
            raise ValueError(f"token {token} is {state}: each call gets exactly one of ok/unknown/fail")
        return pending


def _unknown(pending: _Pending) -> Operation:
    return Operation(
        pending.client,
        pending.kind,
        pending.key,
        pending.call_time,
        None,
        value=pending.value,
        expected=pending.expected,
    )
