"""``pyagent.client``: the trio client of the sharded KV store.

It talks to one daemon through that daemon's control socket (the daemon forwards each request to the
leader of its key's shard, so any peer will do) and multiplexes every request of every task over one
connection::

    async with KvClient.open(home) as kv:
        await kv.put(b"greeting", b"hello")
        assert await kv.get(b"greeting") == b"hello"

Writes carry this client's session (a random client id and a sequence number), and a retry reuses the
sequence number, so a write retried after a lost answer or a leader change applies exactly once. The
client retries what the mesh may still do (no leader yet, leader changed, busy) until ``timeout_s``.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from pyagent.config import CONTROL_SOCKET
from pyagent.controlclient import LINE_BYTES_MAX, ControlError, encode_line

# Errors after which the same request may succeed: the daemon found no leader in time, or one stepped
# down, or it is overloaded. Anything else (a bad key, an unknown method) is final.
RETRYABLE = frozenset({"not_leader", "unavailable", "busy", "timeout"})
RETRY_BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8)


class KvError(ControlError):
    """The store refused a request; ``code`` says why (``invalid`` for the caller's own mistake)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


class KvClient:
    def __init__(self, stream: trio.SocketStream, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._stream = stream
        self._send_lock = trio.Lock()
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._next_id = 1
        self._client = secrets.randbits(63) | 1
        self._next_seq = 1
        self._in_flight: set[int] = set()
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def open(cls, home: Path, timeout_s: float = 10.0) -> AsyncIterator[KvClient]:
        """A client of the daemon whose home is ``home``; ``timeout_s`` bounds each request, retries
        included."""
        try:
            stream = await trio.open_unix_socket(str(home / CONTROL_SOCKET))
        except OSError as exc:
            raise KvError(
                f"no daemon answers at {home / CONTROL_SOCKET} ({exc.strerror}); start one"
            ) from None
        client = cls(stream, timeout_s)
        # The caller's own exception leaves as itself, not wrapped in the nursery's ExceptionGroup: it is
        # held while the reader task is cancelled, and raised once the nursery is done.
        raised: BaseException | None = None
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(client._read_answers)
            try:
                yield client
            except BaseException as exc:
                raised = exc
            finally:
                client._closed = True
                nursery.cancel_scope.cancel()
        if raised is not None:
            raise raised

    # --- the operations ---------------------------------------------------------------------------

    async def put(self, key: bytes, value: bytes) -> None:
        await self._write("kv.put", key=_b64(key), value=_b64(value))

    async def get(self, key: bytes, *, stale: bool = False) -> bytes | None:
        result = await self._call("kv.get", key=_b64(key), stale=stale)
        return _unb64(result["value"])

    async def delete(self, key: bytes) -> bool:
        result = await self._write("kv.delete", key=_b64(key))
        return bool(result["existed"])

    async def cas(self, key: bytes, expected: bytes | None, new: bytes | None) -> tuple[bool, bytes | None]:
        """Set ``key`` to ``new`` (None deletes it) if its value is ``expected`` (None: absent). Returns
        whether it swapped and the value it found."""
        result = await self._write(
            "kv.cas",
            key=_b64(key),
            expected=None if expected is None else _b64(expected),
            new=None if new is None else _b64(new),
        )
        return bool(result["swapped"]), _unb64(result["before"])

    async def scan(
        self, prefix: bytes, limit: int = 1000, *, shard: int | None = None, stale: bool = False
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` pairs of one shard whose keys start with ``prefix``: the shard ``prefix``'s
        ``{hash tag}`` picks, or ``shard``."""
        result = await self._call("kv.scan", prefix=_b64(prefix), limit=limit, shard=shard, stale=stale)
        return [(base64.b64decode(k), base64.b64decode(v)) for k, v in result["pairs"]]

    async def shards(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._call("kv.shards")
        return result

    # --- plumbing ---------------------------------------------------------------------------------

    async def _write(self, method: str, **params: Any) -> Any:
        seq = self._next_seq
        self._next_seq += 1
        self._in_flight.add(seq)
        try:
            return await self._call(method, client=self._client, seq=seq, ack=min(self._in_flight), **params)
        finally:
            self._in_flight.discard(seq)

    async def _call(self, method: str, **params: Any) -> Any:
        """One request, retried on retryable errors (same params, so a write keeps its session)."""
        with trio.fail_after(self.timeout_s):
            for backoff_s in itertools.chain(RETRY_BACKOFF_S, itertools.repeat(RETRY_BACKOFF_S[-1])):
                answer = await self._round_trip(method, params)
                if "error" not in answer:
                    return answer.get("result")
                error = KvError(str(answer["error"]), answer.get("code"), answer.get("data"))
                if error.code not in RETRYABLE:
                    raise error
                await trio.sleep(backoff_s)
        raise AssertionError("unreachable: the retry loop ends only by returning or raising")

    async def _round_trip(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise KvError("the client is closed")
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
