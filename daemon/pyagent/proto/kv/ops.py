"""The KV operations: what a client asks for, how a write travels as a Raft log entry, and the limits.

A write (``Put``, ``Delete``, ``Cas``) is proposed as one log entry: a msgpack map with the operation and
the client's session (``client``, ``seq``, ``ack``). The session makes a retried write exactly-once: the
state machine remembers each client's results for the sequence numbers the client has not acknowledged
yet (Raft dissertation §6.3, with many requests in flight per client), and answers a retry from there.

Entries come from peers' logs, so they are decoded as untrusted bytes: a bad entry is applied as a no-op
with an error result, never as a crash, so every replica still agrees on the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyagent.errors import RemoteProtocolError
from pyagent.proto.wire import Limits, decode_body, pack

KEY_BYTES_MAX = 1024
VALUE_BYTES_MAX = 1 << 20
SCAN_LIMIT_MAX = 10_000
ENTRY_LIMITS = Limits(frame_size_bytes_max=VALUE_BYTES_MAX + KEY_BYTES_MAX + 256, depth_max=2, count_max=32)
ENTRY_VERSION = 1


@dataclass(frozen=True, slots=True)
class Session:
    """Who sent a write: a client id (random, 64 bits), the write's sequence number, and ``ack``: every
    sequence number below it has been answered, so its result may be forgotten."""

    client: int
    seq: int
    ack: int


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    session: Session | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """The reply value is True when the key existed."""

    key: bytes
    session: Session | None = None


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set: when the key's value is ``expected`` (None: the key is absent), set it to ``new``
    (None: delete it). The reply value is ``(swapped, value before)``."""

    key: bytes
    expected: bytes | None
    new: bytes | None
    session: Session | None = None


@dataclass(frozen=True, slots=True)
class Get:
    """The reply value is the value, or None. ``stale`` reads the local replica without asking the
    leader: fast, but it may miss writes acknowledged a moment ago."""

    key: bytes
    stale: bool = False


@dataclass(frozen=True, slots=True)
class Scan:
    """Up to ``limit`` ``(key, value)`` pairs of one shard whose keys start with ``prefix``, in key order.

    The shard is the one ``prefix``'s hash tag picks (``{tag}...``), or ``shard`` when given."""

    prefix: bytes
    limit: int = 1000
    shard: int | None = None
    stale: bool = False


@dataclass(frozen=True, slots=True)
class ListShards:
    """The reply value is a list of ``ShardStatus``, one per shard this node hosts a replica of."""


Write = Put | Delete | Cas
Command = Put | Delete | Cas | Get | Scan
COMMAND_TYPES = (Put, Delete, Cas, Get, Scan, ListShards)


def check_command(command: Command) -> None:
    """``ValueError`` naming the bound a command breaks (the caller's mistake, not the mesh's)."""
    keys = [command.prefix] if isinstance(command, Scan) else [command.key]
    values = [command.value] if isinstance(command, Put) else []
    if isinstance(command, Cas):
        values = [v for v in (command.expected, command.new) if v is not None]
    for key in keys:
        if not isinstance(key, bytes) or len(key) > KEY_BYTES_MAX:
            raise ValueError(f"a key must be at most {KEY_BYTES_MAX} bytes (got {len(key)})")
    if not isinstance(command, Scan) and not keys[0]:
        raise ValueError("a key must not be empty")
    for value in values:
        if len(value) > VALUE_BYTES_MAX:
            raise ValueError(f"a value must be at most {VALUE_BYTES_MAX} bytes (got {len(value)})")
    if isinstance(command, Scan) and not 1 <= command.limit <= SCAN_LIMIT_MAX:
        raise ValueError(f"a scan limit must be 1 to {SCAN_LIMIT_MAX} (got {command.limit})")


def encode_entry(write: Write) -> bytes:
    body: dict[str, Any] = {"v": ENTRY_VERSION, "k": write.key}
    match write:
        case Put(value=value):
            body.update(t="put", x=value)
        case Delete():
            body["t"] = "del"
        case Cas(expected=expected, new=new):
            body.update(t="cas", e=expected, n=new)
    if write.session is not None:
        body.update(c=write.session.client, q=write.session.seq, a=write.session.ack)
    return pack(body)


def decode_entry(data: bytes) -> Write:
    """The write an entry holds; ``RemoteProtocolError`` for bytes no honest peer proposes."""
    body = decode_body(data, ENTRY_LIMITS)
    key = body.get("k")
    if not isinstance(key, bytes) or not 0 < len(key) <= KEY_BYTES_MAX:
        raise RemoteProtocolError("entry key must be 1 to KEY_BYTES_MAX bytes")
    session = _decode_session(body)
    match body["t"]:
        case "put":
            return Put(key, _value(body, "x", nullable=False) or b"", session)
        case "del":
            return Delete(key, session)
        case "cas":
            return Cas(key, _value(body, "e", nullable=True), _value(body, "n", nullable=True), session)
    raise RemoteProtocolError(f"unknown entry type {body['t']!r}")


def _value(body: dict[str, Any], field: str, *, nullable: bool) -> bytes | None:
    value = body.get(field)
    if value is None and nullable:
        return None
    if not isinstance(value, bytes) or len(value) > VALUE_BYTES_MAX:
        raise RemoteProtocolError(f"entry field {field!r} must be bytes of at most VALUE_BYTES_MAX")
    return value


def _decode_session(body: dict[str, Any]) -> Session | None:
    fields = [body.get(name) for name in ("c", "q", "a")]
    if all(field is None for field in fields):
        return None
    if not all(isinstance(field, int) and not isinstance(field, bool) and field >= 0 for field in fields):
        raise RemoteProtocolError("entry session fields c, q, a must be non-negative integers")
    client, seq, ack = fields
    assert isinstance(client, int) and isinstance(seq, int) and isinstance(ack, int)
    return Session(client, seq, ack)
