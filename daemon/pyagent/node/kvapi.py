"""The KV store's control methods (``kv.put``, ``kv.get``, ...): JSON in, a KV command to the core, JSON out.

Keys and values travel base64-encoded, since they are bytes. A write may carry the caller's session
(``client``, ``seq``, ``ack``: see ``pyagent.proto.kv.ops.Session``); a write without one gets the
daemon's own, which is what the CLI relies on.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from pyagent.node.control import InvalidParams, Method
from pyagent.proto.kv.ops import Cas, Delete, Get, ListShards, Put, Scan, Session

Request = Callable[[object], Awaitable[object]]


def _bytes_param(params: dict[str, Any], name: str, *, nullable: bool = False) -> bytes | None:
    value = params.get(name)
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise InvalidParams(f"parameter {name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise InvalidParams(f"parameter {name!r} is not valid base64") from None


def _key(params: dict[str, Any], name: str = "key") -> bytes:
    key = _bytes_param(params, name)
    assert key is not None
    return key


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _session(params: dict[str, Any]) -> Session | None:
    fields = [params.get(name) for name in ("client", "seq", "ack")]
    if all(field is None for field in fields):
        return None
    if not all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < 1 << 63 for f in fields):
        raise InvalidParams("parameters 'client', 'seq' and 'ack' must be given together, as integers")
    client, seq, ack = fields
    assert isinstance(client, int) and isinstance(seq, int) and isinstance(ack, int)
    return Session(client, seq, ack)


def _flag(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if not isinstance(value, bool):
        raise InvalidParams(f"parameter {name!r} must be true or false")
    return value


def kv_methods(request: Request) -> dict[str, Method]:
    """The methods, each sending its command through ``request`` (the daemon's ``Node.request``)."""

    async def put(params: dict[str, Any]) -> dict[str, Any]:
        value = _bytes_param(params, "value")
        assert value is not None
        await request(Put(_key(params), value, _session(params)))
        return {}

    async def get(params: dict[str, Any]) -> dict[str, Any]:
        value = await request(Get(_key(params), _flag(params, "stale")))
        assert value is None or isinstance(value, bytes)
        return {"value": _b64(value)}

    async def delete(params: dict[str, Any]) -> dict[str, Any]:
        return {"existed": await request(Delete(_key(params), _session(params)))}

    async def cas(params: dict[str, Any]) -> dict[str, Any]:
        expected = _bytes_param(params, "expected", nullable=True)
        new = _bytes_param(params, "new", nullable=True)
        result = await request(Cas(_key(params), expected, new, _session(params)))
        assert isinstance(result, tuple)
        swapped, before = result
        return {"swapped": swapped, "before": _b64(before)}

    async def scan(params: dict[str, Any]) -> dict[str, Any]:
        limit, shard = params.get("limit", 1000), params.get("shard")
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise InvalidParams("parameter 'limit' must be an integer")
        if shard is not None and (not isinstance(shard, int) or isinstance(shard, bool) or shard < 0):
            raise InvalidParams("parameter 'shard' must be a non-negative integer")
        pairs = await request(Scan(_key(params, "prefix"), limit, shard, _flag(params, "stale")))
        assert isinstance(pairs, list)
        return {"pairs": [[_b64(k), _b64(v)] for k, v in pairs]}

    async def shards(params: dict[str, Any]) -> list[dict[str, Any]]:
        statuses = await request(ListShards())
        assert isinstance(statuses, list)
        return [asdict(status) for status in statuses]

    return {
        "kv.put": put,
        "kv.get": get,
        "kv.delete": delete,
        "kv.cas": cas,
        "kv.scan": scan,
        "kv.shards": shards,
    }
