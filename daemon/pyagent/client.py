"""``pyagent.client``: the trio clients of a mesh, through one daemon's control socket.

``Mesh.open(home)`` gives both of them over one connection, which every task of the program shares
(requests are multiplexed)::

    async with Mesh.open(home) as mesh:
        await mesh.kv.put(b"greeting", b"hello")
        assert await mesh.kv.get(b"greeting") == b"hello"
        round_ = await mesh.lora.contribute(delta, weight=1200)
        merged = await mesh.lora.merged(round_)

``KvClient.open(home)`` opens a KV client alone. The daemon forwards each KV request to the leader of its
key's shard, so any peer will do. Writes carry this client's session (a random client id and a sequence
number), and a retry reuses the sequence number, so a write retried after a lost answer or a leader
change applies exactly once. The client retries what the mesh may still do (no leader yet, leader
changed, busy) until ``timeout_s``.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyagent.controlconn import ClientError, ControlConnection
from pyagent.lora.client import LoraClient

# Errors after which the same request may succeed: the daemon found no leader in time, or one stepped
# down, or it is overloaded. Anything else (a bad key, an unknown method) is final.
RETRYABLE = frozenset({"not_leader", "unavailable", "busy", "timeout"})
DEFAULT_TIMEOUT_S = 10.0


class KvError(ClientError):
    """The store refused a request; ``code`` says why (``invalid`` for the caller's own mistake)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


@dataclass(slots=True)
class Mesh:
    """The mesh as one daemon serves it: its KV store and its LoRA averaging."""

    kv: KvClient
    lora: LoraClient

    @classmethod
    @asynccontextmanager
    async def open(cls, home: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> AsyncIterator[Mesh]:
        """The mesh through the daemon whose home is ``home``; ``timeout_s`` bounds each KV request,
        retries included (a LoRA round has its own deadline)."""
        async with ControlConnection.open(home) as connection:
            yield cls(KvClient(connection, timeout_s), LoraClient(connection, home))


class KvClient:
    def __init__(self, connection: ControlConnection, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._connection = connection
        self._client = secrets.randbits(63) | 1
        self._next_seq = 1
        self._in_flight: set[int] = set()

    @classmethod
    @asynccontextmanager
    async def open(cls, home: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> AsyncIterator[KvClient]:
        """A client of the daemon whose home is ``home``; ``timeout_s`` bounds each request, retries
        included."""
        async with ControlConnection.open(home) as connection:
            yield cls(connection, timeout_s)

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
        return await self._connection.call(
            method, params, timeout_s=self.timeout_s, retryable=RETRYABLE, error=KvError
        )
