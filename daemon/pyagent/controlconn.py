"""The trio side of the control API: one unix-socket connection that every task of a program shares.

Requests are multiplexed by id over the one connection (docs/adr/0001-control-api.md); a reader task
hands each answer to the task that waits for it. ``pyagent.client`` builds the KV and LoRA clients on
it. The CLI uses the synchronous ``pyagent.controlclient`` instead, which opens a socket per call.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from pyagent.config import CONTROL_SOCKET
from pyagent.controlclient import LINE_BYTES_MAX, ControlError, encode_line

RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8)


class ClientError(ControlError):
    """The daemon refused a request; ``code`` says why (``invalid`` for the caller's own mistake)."""


class ControlConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._send_lock = trio.Lock()
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._next_id = 1
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def open(cls, home: Path) -> AsyncIterator[ControlConnection]:
        """A connection to the daemon whose home is ``home``, open for the ``async with`` block."""
        try:
            stream = await trio.open_unix_socket(str(home / CONTROL_SOCKET))
        except OSError as exc:
            raise ClientError(
                f"no daemon answers at {home / CONTROL_SOCKET} ({exc.strerror}); start one"
            ) from None
        connection = cls(stream)
        # The caller's own exception leaves as itself, not wrapped in the nursery's ExceptionGroup: it is
        # held while the reader task is cancelled, and raised once the nursery is done.
        raised: BaseException | None = None
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(connection._read_answers)
            try:
                yield connection
            except BaseException as exc:
                raised = exc
            finally:
                connection._closed = True
                nursery.cancel_scope.cancel()
        if raised is not None:
            raise raised

    async def call(
        self,
        method: str,
        params: dict[str, Any],
        *,
        timeout_s: float,
        retryable: Collection[str] = (),
        error: type[ClientError] = ClientError,
    ) -> Any:
        """``method``'s result. An answer whose error code is in ``retryable`` is asked again (with the
        same params, so a write keeps its session) until ``timeout_s``; any other error raises ``error``."""
        with trio.fail_after(timeout_s):
            for backoff_s in itertools.chain(RETRY_BACKOFF_S, itertools.repeat(RETRY_BACKOFF_S[-1])):
                answer = await self._round_trip(method, params, error)
                if "error" not in answer:
                    return answer.get("result")
                failure = error(str(answer["error"]), answer.get("code"), answer.get("data"))
                if failure.code not in retryable:
                    raise failure
                await trio.sleep(backoff_s)
        raise AssertionError("unreachable: the retry loop ends only by returning or raising")

    async def _round_trip(
        self, method: str, params: dict[str, Any], error: type[ClientError]
    ) -> dict[str, Any]:
        if self._closed:
            raise error("the client is closed")
        request_id = self._next_id
        self._next_id += 1
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[request_id] = send
        try:
            async with self._send_lock:
                await self._stream.send_all(
                    encode_line({"id": request_id, "method": method, "params": params})
                )
            return await receive.receive()
        finally:
            self._waiting.pop(request_id, None)

    async def _read_answers(self) -> None:
        buffer = bytearray()
        while True:
            try:
                chunk = await self._stream.receive_some(1 << 16)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                self._fail_all("the daemon closed the connection")
                return
            buffer += chunk
            if len(buffer) > LINE_BYTES_MAX and b"\n" not in buffer:
                self._fail_all("the daemon sent an answer over the size limit")
                return
            while b"\n" in buffer:
                end = buffer.index(b"\n")
                answer = json.loads(bytes(buffer[:end]))
                del buffer[: end + 1]
                waiter = self._waiting.pop(answer.get("id"), None)
                if waiter is not None:
                    waiter.send_nowait(answer)

    def _fail_all(self, why: str) -> None:
        self._closed = True
        for waiter in self._waiting.values():
            waiter.send_nowait({"error": why, "code": "closed"})
        self._waiting.clear()
