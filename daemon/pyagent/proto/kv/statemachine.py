"""One shard's replicated state: its keys, its client sessions and its applied index.

Every replica applies the same committed entries in the same order, so every replica computes the same
state; nothing here may depend on time, randomness or which replica runs it. Each apply returns the
storage ops that make its effect durable; the Raft component writes them in the same batch as the Raft
state of that Ready, so the applied index never runs ahead of, or behind, the data it describes.

Storage layout in the ``kv`` namespace (``shard`` as 4 big-endian bytes, ``client`` as 8):
``d<shard><key>`` -> value, ``s<shard><client>`` -> that client's acknowledgement and unacknowledged results,
``a<shard>`` -> applied index (8 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from pyagent.errors import RemoteProtocolError
from pyagent.proto.kv.ops import Cas, Delete, Put, Session, Write, decode_entry
from pyagent.proto.storage import Delete as DeleteKey
from pyagent.proto.storage import DeleteRange, Op, StorageReader
from pyagent.proto.storage import Put as PutKey
from pyagent.proto.wire import Limits, decode_body, pack

# Bounds on what exactly-once costs: results kept per client (one per write in flight) and clients kept
# per shard, the least recently seen evicted first. A client that keeps more writes in flight, or comes
# back after more than this many other clients, may see a retried write applied twice.
RESULTS_PER_CLIENT_MAX = 1024
CLIENTS_PER_SHARD_MAX = 4096
SNAPSHOT_BYTES_MAX = 256 << 20
SNAPSHOT_LIMITS = Limits(frame_size_bytes_max=SNAPSHOT_BYTES_MAX, depth_max=6, count_max=8 << 20)

Result = None | bool | list[Any]
"""What a write returns: None (put), existed (delete), ``[swapped, value before]`` (cas)."""


@dataclass(frozen=True, slots=True)
class BadEntry:
    """A committed entry that could not be decoded: applied as a no-op on every replica alike."""

    reason: str


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying one entry did: the writer's session (to find who waits for it), the result the
    writer gets, and the storage ops that persist the change."""

    session: Session | None
    result: Result | BadEntry
    ops: list[Op]
    # The write the entry held (None for an empty or undecodable entry).
    write: Write | None = None


def shard_prefix(tag: bytes, shard: int) -> bytes:
    return tag + shard.to_bytes(4, "big")


@dataclass(slots=True)
class _Client:
    results: dict[int, Result] = field(default_factory=dict)
    # The highest acknowledgement seen: every write of this client below it has been answered, so a copy
    # of one of them that arrives now (a first try that was still on its way) must not run again.
    acked: int = 0


class ShardState:
    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.applied = 0
        self.data: dict[bytes, bytes] = {}
        self._clients: dict[int, _Client] = {}
        self._data_prefix = shard_prefix(b"d", shard)
        self._session_prefix = shard_prefix(b"s", shard)
        self._applied_key = shard_prefix(b"a", shard)

    # --- applying ---------------------------------------------------------------------------------

    def apply(self, index: int, entry: bytes) -> Applied:
        """Apply the committed entry at ``index``. The applied index itself is persisted once per batch,
        by ``applied_op``."""
        self.applied = index
        if not entry:  # a new leader's empty entry
            return Applied(None, None, [])
        try:
            write = decode_entry(entry)
        except RemoteProtocolError as exc:
            return Applied(None, BadEntry(str(exc)), [])
        session = write.session
        if session is None:
            result, ops = self._execute(write)
            return Applied(None, result, ops, write)
        client = self._clients.get(session.client)
        if client is not None and session.seq in client.results:
            return Applied(session, client.results[session.seq], [])  # a retry: applied before
        if client is not None and session.seq < client.acked:
            stale = (
                f"write {session.seq} of this client was answered already (it acknowledged {client.acked})"
            )
            return Applied(session, BadEntry(stale), [])
        if session.seq < session.ack:
            return Applied(session, BadEntry(f"write {session.seq} is below its own ack {session.ack}"), [])
        result, ops = self._execute(write)
        ops.extend(self._remember(session.client, session.seq, session.ack, result))
        return Applied(session, result, ops, write)

    def applied_op(self) -> Op:
        return PutKey(self._applied_key, self.applied.to_bytes(8, "big"))

    def _execute(self, write: Write) -> tuple[Result, list[Op]]:
        key = write.key
        match write:
            case Put(value=value):
                return None, self._set(key, value)
            case Delete():
                existed = key in self.data
                return existed, self._set(key, None) if existed else []
            case Cas(expected=expected, new=new):
                before = self.data.get(key)
                if before != expected:
                    return [False, before], []
                return [True, before], self._set(key, new)
        raise AssertionError(write)

    def _set(self, key: bytes, value: bytes | None) -> list[Op]:
        if value is None:
            self.data.pop(key, None)
            return [DeleteKey(self._data_prefix + key)]
        self.data[key] = value
        return [PutKey(self._data_prefix + key, value)]

    def _remember(self, client_id: int, seq: int, ack: int, result: Result) -> list[Op]:
        ops: list[Op] = []
        client = self._clients.pop(client_id, None) or _Client()
        self._clients[client_id] = client  # most recently seen last, for eviction
        client.acked = max(client.acked, ack)
        for old in [s for s in client.results if s < client.acked]:
            del client.results[old]
        client.results[seq] = result
        while len(client.results) > RESULTS_PER_CLIENT_MAX:
            del client.results[min(client.results)]
        ops.append(PutKey(self._session_key(client_id), pack(_encode_client(client))))
        while len(self._clients) > CLIENTS_PER_SHARD_MAX:
            evicted = next(iter(self._clients))
            del self._clients[evicted]
            ops.append(DeleteKey(self._session_key(evicted)))
        return ops

    def _session_key(self, client_id: int) -> bytes:
        return self._session_prefix + client_id.to_bytes(8, "big")

    # --- reads --------------------------------------------------------------------------------------

    def scan(self, prefix: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        keys = sorted(key for key in self.data if key.startswith(prefix))
        return [(key, self.data[key]) for key in keys[:limit]]

    # --- snapshots and recovery -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state at ``applied``, for a new replica."""
        sessions = [[cid, *_encode_client(c)] for cid, c in self._clients.items()]
        return pack({"v": 1, "t": "snap", "i": self.applied, "d": list(self.data.items()), "s": sessions})

    def restore(self, snapshot: Snapshot) -> list[Op]:
        """Replace the state with ``snapshot`` (from ``decode_snapshot``); return the ops that persist it."""
        data, clients, index = snapshot.data, snapshot.clients, snapshot.index
        ops: list[Op] = [
            DeleteRange(self._data_prefix, _prefix_end(self._data_prefix)),
            DeleteRange(self._session_prefix, _prefix_end(self._session_prefix)),
        ]
        ops += [PutKey(self._data_prefix + key, value) for key, value in data.items()]
        ops += [PutKey(self._session_key(cid), pack(_encode_client(c))) for cid, c in clients.items()]
        self.data, self._clients, self.applied = data, clients, index
        ops.append(self.applied_op())
        return ops

    def load(self, reader: StorageReader) -> None:
        """Read back what survived a restart."""
        raw = reader.get(self._applied_key)
        self.applied = int.from_bytes(raw, "big") if raw else 0
        skip = len(self._data_prefix)
        for key, value in _scan_all(reader, self._data_prefix):
            self.data[key[skip:]] = value
        for key, value in _scan_all(reader, self._session_prefix):
            self._clients[int.from_bytes(key[-8:], "big")] = _decode_client(_unpack(value))


def _prefix_end(prefix: bytes) -> bytes:
    return (int.from_bytes(prefix, "big") + 1).to_bytes(len(prefix), "big")


def _scan_all(reader: StorageReader, prefix: bytes) -> list[tuple[bytes, bytes]]:
    return reader.scan(prefix, _prefix_end(prefix), 1 << 62)


def _encode_client(client: _Client) -> list[Any]:
    return [client.acked, [[seq, result] for seq, result in client.results.items()]]


def _decode_client(raw: Any) -> _Client:
    if not (
        isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], int) and not isinstance(raw[0], bool)
    ):
        raise RemoteProtocolError("a session must be [acknowledged, results]")
    return _Client(_decode_results(raw[1]), raw[0])


def _unpack(value: bytes) -> Any:
    """Decode what this node itself wrote to its own storage (a peer's bytes go through decode_body)."""
    return msgpack.unpackb(value, raw=False, strict_map_key=False)


def _decode_results(raw: Any) -> dict[int, Result]:
    if not isinstance(raw, list):
        raise RemoteProtocolError("session results must be a list")
    results: dict[int, Result] = {}
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)):
            raise RemoteProtocolError("a session result must be [seq, result]")
        results[item[0]] = item[1]
    return results


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A shard's state as a peer sent it, decoded and checked, ready to ``restore``."""

    index: int
    data: dict[bytes, bytes]
    clients: dict[int, _Client]


def decode_snapshot(blob: bytes) -> Snapshot:
    """Decode a peer's ``ShardState.snapshot`` blob; ``RemoteProtocolError`` when it is malformed."""
    body = decode_body(blob, SNAPSHOT_LIMITS)
    index = body.get("i")
    if body.get("t") != "snap" or not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise RemoteProtocolError("snapshot blob is not a shard snapshot with an index")
    pairs, sessions = body.get("d"), body.get("s")
    if not isinstance(pairs, list) or not isinstance(sessions, list):
        raise RemoteProtocolError("snapshot blob lacks its data or sessions")
    data: dict[bytes, bytes] = {}
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, bytes) for x in pair)):
            raise RemoteProtocolError("a snapshot pair must be [key, value] bytes")
        data[pair[0]] = pair[1]
    clients: dict[int, _Client] = {}
    for session in sessions:
        if not (isinstance(session, list) and len(session) == 3 and isinstance(session[0], int)):
            raise RemoteProtocolError("a snapshot session must be [client, acknowledged, results]")
        clients[session[0]] = _decode_client(session[1:])
    return Snapshot(index, data, clients)
