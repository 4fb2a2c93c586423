"""The KV protocol's messages on ``/pyagent/kv/1.0.0``, and their decoding from untrusted peers.

- ``raft``: one frame of the multi-Raft driver (every group's messages to this peer from one Ready). It
  names the mesh's shard count, so two meshes created with different counts never mix their groups.
- ``fwd`` / ``fwdr``: a client request forwarded to the peer believed to lead its shard, and the answer.
  ``fwdr`` carries either a result or an error ``[code, message, data]``; a ``not_leader`` error's data
  names the leader when the answering peer knows it, and the forwarding peer follows that hint.

A snapshot travels as a bulk transfer (``snapshot_blob``), not as a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyagent.errors import RemoteProtocolError
from pyagent.proto.kv.ops import (
    KEY_BYTES_MAX,
    SCAN_LIMIT_MAX,
    Cas,
    Command,
    Delete,
    Get,
    Put,
    Scan,
    check_command,
    decode_entry,
    encode_entry,
)
from pyagent.proto.wire import Limits, Message, encode_varint

PROTOCOL_ID = "/pyagent/kv/1.0.0"
VERSION = 1
# A Raft frame carries up to max_size_per_msg of entries per group, for every group with this peer.
RAFT_FRAME_BYTES_MAX = 64 << 20
LIMITS = Limits(
    frame_size_bytes_max=RAFT_FRAME_BYTES_MAX + 1024, depth_max=6, count_max=SCAN_LIMIT_MAX * 3 + 64
)
# Hops a forwarded request may take before its origin gives up (each hop follows a leader hint).
HOPS_MAX = 4


@dataclass(frozen=True, slots=True)
class RaftFrame:
    shards: int
    frame: bytes


@dataclass(frozen=True, slots=True)
class Forward:
    forward_id: int
    command: Command


@dataclass(frozen=True, slots=True)
class ForwardReply:
    forward_id: int
    value: Any = None
    error: tuple[str, str, dict[str, Any]] | None = None


def encode_raft(shards: int, frame: bytes) -> Message:
    return {"v": VERSION, "t": "raft", "n": shards, "f": frame}


def encode_forward(forward_id: int, command: Command) -> Message:
    return {"v": VERSION, "t": "fwd", "i": forward_id, "c": _encode_command(command)}


def encode_forward_reply(reply: ForwardReply) -> Message:
    body: Message = {"v": VERSION, "t": "fwdr", "i": reply.forward_id}
    if reply.error is not None:
        body["e"] = list(reply.error)
    else:
        body["r"] = _encode_value(reply.value)
    return body


def decode(message: Message) -> RaftFrame | Forward | ForwardReply:
    kind = message["t"]
    if kind == "raft":
        shards, frame = message.get("n"), message.get("f")
        if not _is_uint(shards) or not isinstance(frame, bytes):
            raise RemoteProtocolError("raft message needs an integer 'n' and bytes 'f'")
        assert isinstance(shards, int)
        return RaftFrame(shards, frame)
    forward_id = message.get("i")
    if not _is_uint(forward_id):
        raise RemoteProtocolError(f"{kind} message needs an integer 'i'")
    assert isinstance(forward_id, int)
    if kind == "fwd":
        return Forward(forward_id, _decode_command(message.get("c")))
    if kind == "fwdr":
        if "e" in message:
            return ForwardReply(forward_id, error=_decode_error(message["e"]))
        return ForwardReply(forward_id, value=_decode_value(message.get("r")))
    raise RemoteProtocolError(f"unknown kv message type {kind!r}")


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# Writes travel in their log-entry form (their session included); reads in a map of their own.
def _encode_command(command: Command) -> Any:
    match command:
        case Put() | Delete() | Cas():
            return encode_entry(command)
        case Get(key=key, stale=stale):
            return {"o": "get", "k": key, "s": stale}
        case Scan(prefix=prefix, limit=limit, shard=shard, stale=stale):
            return {"o": "scan", "k": prefix, "l": limit, "h": shard, "s": stale}
    raise AssertionError(command)


def _decode_command(raw: object) -> Command:
    if isinstance(raw, bytes):
        command: Command = decode_entry(raw)
    elif isinstance(raw, dict) and raw.get("o") in ("get", "scan"):
        key, stale = raw.get("k"), raw.get("s")
        if not isinstance(key, bytes) or len(key) > KEY_BYTES_MAX or not isinstance(stale, bool):
            raise RemoteProtocolError("forwarded read needs bytes 'k' and bool 's'")
        if raw["o"] == "get":
            command = Get(key, stale)
        else:
            limit, shard = raw.get("l"), raw.get("h")
            if not _is_uint(limit) or not (shard is None or _is_uint(shard)):
                raise RemoteProtocolError("forwarded scan needs an integer 'l' and 'h'")
            assert isinstance(limit, int) and (shard is None or isinstance(shard, int))
            command = Scan(key, limit, shard, stale)
    else:
        raise RemoteProtocolError("forwarded command is neither a write entry nor a read")
    try:
        check_command(command)
    except ValueError as exc:
        raise RemoteProtocolError(f"forwarded command: {exc}") from None
    return command


# Results are None, bools, bytes, and lists of those (cas: [swapped, before]; scan: [[key, value], ...]).
def _encode_value(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_encode_value(item) for item in value]
    return value


def _decode_value(raw: object) -> Any:
    if raw is None or isinstance(raw, bool | bytes):
        return raw
    if isinstance(raw, list):
        return [_decode_value(item) for item in raw]
    raise RemoteProtocolError(f"forward reply value of type {type(raw).__name__}")


def _decode_error(raw: object) -> tuple[str, str, dict[str, Any]]:
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], str) and isinstance(raw[1], str)):
        raise RemoteProtocolError("forward reply error must be [code, message, data]")
    data = raw[2]
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise RemoteProtocolError("forward reply error data must be a map with string keys")
    return raw[0], raw[1], data


def snapshot_blob(group: int, message: bytes, state: bytes) -> bytes:
    """What a snapshot transfer carries: the group, the Raft snapshot message, then the state machine's
    snapshot taken at that message's index."""
    return encode_varint(group) + encode_varint(len(message)) + message + state


def split_snapshot_blob(blob: bytes) -> tuple[int, bytes, bytes]:
    group, offset = _read_varint(blob, 0)
    length, offset = _read_varint(blob, offset)
    if offset + length > len(blob):
        raise RemoteProtocolError("snapshot blob is shorter than its message")
    return group, blob[offset : offset + length], blob[offset + length :]


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    for position in range(offset, min(offset + 10, len(data))):
        byte = data[position]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, position + 1
    raise RemoteProtocolError("snapshot blob has a truncated or overlong varint")
