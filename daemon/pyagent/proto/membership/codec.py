"""Messages of ``/pyagent/membership/1.0.0``: how they are built, and the one strict decoder.

Every message is a msgpack map ``{"v": 1, "t": <type>, ...}`` carried by ``pyagent.proto.wire``. Update
entries are compact arrays ``[peer, state, incarnation, meta_version, addrs, accuser]`` (the accuser
is nil unless the state is suspect). Entries never carry metadata: a receiver that sees a newer
``meta_version`` than it holds asks the sender with a metadata query, so metadata crosses each link
once per version instead of once per retransmission.

``decode`` turns a frame into a typed, fully validated message or raises ``RemoteProtocolError``; the
component changes no state until it holds the typed message. Keys this version does not know are
ignored, so a later minor version can add fields.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pyagent.errors import RemoteProtocolError
from pyagent.proto.addresses import is_loopback
from pyagent.proto.membership import limits
from pyagent.proto.membership import metadata as metadata_codec
from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.membership.records import Entry, State
from pyagent.proto.types import PeerId
from pyagent.proto.wire import Message, pack

PROTOCOL_ID = "/pyagent/membership/1.0.0"
VERSION = 1

WireEntry = list[Any]


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    updates: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    updates: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask the receiver to probe ``target`` for us. With ``want_nack`` it answers a nack when the target
    stays silent for ``wait_ms``, which the prober picks so that the nack arrives before its deadline."""

    seq: int
    target: PeerId
    addrs: tuple[str, ...]
    want_nack: bool
    wait_ms: int
    updates: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Gossip:
    updates: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class PushPull:
    """One chunk of a state exchange. ``reply_wanted`` is set on the first chunk of a request only."""

    entries: tuple[Entry, ...]
    response: bool
    reply_wanted: bool
    join: bool


@dataclass(frozen=True, slots=True)
class MetadataQuery:
    peers: tuple[PeerId, ...]


@dataclass(frozen=True, slots=True)
class MetadataReply:
    records: tuple[tuple[PeerId, int, Metadata], ...]


Decoded = Ping | Ack | Nack | PingReq | Gossip | PushPull | MetadataQuery | MetadataReply


def encode_entry(entry: Entry) -> WireEntry:
    accuser = entry.accuser if entry.state is State.SUSPECT else None
    return [entry.peer, int(entry.state), entry.incarnation, entry.meta_version, list(entry.addrs), accuser]


def ping(seq: int, updates: list[WireEntry]) -> Message:
    return _with_updates({"v": VERSION, "t": "p", "s": seq}, updates)


def ack(seq: int, updates: list[WireEntry]) -> Message:
    return _with_updates({"v": VERSION, "t": "a", "s": seq}, updates)


def nack(seq: int) -> Message:
    return {"v": VERSION, "t": "n", "s": seq}


def ping_req(
    seq: int, target: PeerId, addrs: tuple[str, ...], want_nack: bool, wait_ms: int, updates: list[WireEntry]
) -> Message:
    message = {
        "v": VERSION,
        "t": "i",
        "s": seq,
        "tg": target,
        "a": list(addrs),
        "nk": want_nack,
        "w": wait_ms,
    }
    return _with_updates(message, updates)


def gossip(updates: list[WireEntry]) -> Message:
    return {"v": VERSION, "t": "g", "u": updates}


def push_pull(entries: list[WireEntry], response: bool, reply_wanted: bool, join: bool) -> Message:
    return {"v": VERSION, "t": "pr" if response else "pp", "e": entries, "r": reply_wanted, "j": join}


def metadata_query(peers: list[PeerId]) -> Message:
    return {"v": VERSION, "t": "mq", "q": peers}


def metadata_reply(records: list[list[Any]]) -> Message:
    return {"v": VERSION, "t": "md", "m": records}


def for_another_host(message: Message) -> Message:
    """``message`` as a peer on another host may receive it: loopback addresses would send that peer to
    itself, so they are left out of every entry and of a ping-req's target. Only a node that listens on
    loopback alone announces one (``addresses.for_remote_peers``), so nearly every message is returned
    as it is, unchanged and uncopied."""
    entries_key = "e" if "e" in message else "u"
    entries = message.get(entries_key) or ()
    target_addrs = message.get("a") or ()
    if not any(is_loopback(addr) for addr in target_addrs) and not any(
        is_loopback(addr) for entry in entries for addr in entry[4]
    ):
        return message
    scrubbed = dict(message)
    if target_addrs:
        scrubbed["a"] = [addr for addr in target_addrs if not is_loopback(addr)]
    if entries:
        scrubbed[entries_key] = [_entry_for_another_host(entry) for entry in entries]
    return scrubbed


def _entry_for_another_host(entry: WireEntry) -> WireEntry:
    if not any(is_loopback(addr) for addr in entry[4]):
        return entry
    return [*entry[:4], [addr for addr in entry[4] if not is_loopback(addr)], *entry[5:]]


def _with_updates(message: Message, updates: list[WireEntry]) -> Message:
    if updates:
        message["u"] = updates
    return message


def _never(raw: object) -> bool:
    return False


def decode(message: Message, metadata_bytes_max: int, is_known: Callable[[object], bool] = _never) -> Decoded:
    """Validate a frame from a peer completely; raise ``RemoteProtocolError`` on anything off.

    ``is_known(raw)`` says that an entry equals one the receiver holds already. Such entries are left
    out unvalidated: applying them could change nothing, and most gossiped entries are such repeats
    (each node hears each update about ``retransmit_limit`` times), so this halves the cost of gossip.
    """
    if message.get("v") != VERSION:
        raise RemoteProtocolError(f"membership message version {message.get('v')!r} is not {VERSION}")
    kind = message["t"]
    if kind in ("p", "a"):
        seq = _seq(message)
        updates = _updates(message, is_known)
        return Ping(seq, updates) if kind == "p" else Ack(seq, updates)
    if kind == "n":
        return Nack(_seq(message))
    if kind == "i":
        return PingReq(
            seq=_seq(message),
            target=_peer(message.get("tg"), "target"),
            addrs=_addrs(message.get("a")),
            want_nack=_flag(message.get("nk"), "nk"),
            wait_ms=max(1, _uint(message.get("w"), limits.NACK_WAIT_MS_MAX, "nack wait")),
            updates=_updates(message, is_known),
        )
    if kind == "g":
        if not _list(message.get("u"), limits.UPDATES_MAX, "updates"):
            raise RemoteProtocolError("gossip message without updates")
        return Gossip(_updates(message, is_known))
    if kind in ("pp", "pr"):
        raw_entries = _list(message.get("e"), limits.ENTRIES_MAX, "push-pull entries")
        return PushPull(
            entries=tuple([_entry(raw) for raw in raw_entries if not is_known(raw)]),
            response=kind == "pr",
            reply_wanted=_flag(message.get("r"), "r"),
            join=_flag(message.get("j"), "j"),
        )
    if kind == "mq":
        raw_peers = _list(message.get("q"), limits.QUERY_IDS_MAX, "metadata query")
        return MetadataQuery(tuple([_peer(raw, "queried peer") for raw in raw_peers]))
    if kind == "md":
        raw_records = _list(message.get("m"), limits.METADATA_RECORDS_MAX, "metadata reply")
        return MetadataReply(tuple([_metadata_record(raw, metadata_bytes_max) for raw in raw_records]))
    raise RemoteProtocolError(f"unknown membership message type {kind!r}")


def _seq(message: Message) -> int:
    return _uint(message.get("s"), limits.SEQ_MAX, "sequence number")


def _uint(value: object, maximum: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise RemoteProtocolError(f"{what} must be an integer in [0, {maximum}]")
    return value


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise RemoteProtocolError(f"field {what!r} must be a bool")
    return value


def _peer(value: object, what: str) -> PeerId:
    if not isinstance(value, str) or not 0 < len(value) <= limits.PEER_ID_CHARS_MAX:
        raise RemoteProtocolError(f"{what} must be a peer id of 1..{limits.PEER_ID_CHARS_MAX} characters")
    return value


def _list(value: object, count_max: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > count_max:
        raise RemoteProtocolError(f"{what} must be a list of at most {count_max} items")
    return value


def _addrs(value: object) -> tuple[str, ...]:
    items = _list(value, limits.ADDRS_MAX, "addrs")
    for item in items:
        if not isinstance(item, str) or len(item) > limits.ADDR_CHARS_MAX:
            raise RemoteProtocolError(
                f"an address must be a string of at most {limits.ADDR_CHARS_MAX} characters"
            )
    # Interned, like entry peer ids: every node holds every member's, and a process running many nodes
    # (simnet) then keeps one copy of each string instead of one per node.
    return tuple(map(sys.intern, items))


def _updates(message: Message, is_known: Callable[[object], bool]) -> tuple[Entry, ...]:
    raw = message.get("u", [])
    # List comprehensions, not generators: these run once per entry of every message.
    return tuple([_entry(item) for item in _list(raw, limits.UPDATES_MAX, "updates") if not is_known(item)])


def _entry(raw: object) -> Entry:
    # The hottest decoder path (every piggybacked update), so checks are inlined with exact type tests:
    # msgpack yields exactly list, str and int, and bool (an int subclass) must not pass for an int.
    if type(raw) is not list or len(raw) != 6:
        raise RemoteProtocolError("an entry must be a list of 6 items")
    peer, code, incarnation, meta_version, raw_addrs, accuser = raw
    if type(peer) is not str or not 0 < len(peer) <= limits.PEER_ID_CHARS_MAX:
        raise RemoteProtocolError(f"entry peer must be a peer id of 1..{limits.PEER_ID_CHARS_MAX} characters")
    state = _STATES.get(code) if type(code) is int else None
    if state is None:
        raise RemoteProtocolError(f"unknown member state {code!r}")
    if type(incarnation) is not int or not 0 <= incarnation <= limits.INCARNATION_MAX:
        raise RemoteProtocolError("incarnation must be an unsigned 63-bit integer")
    if type(meta_version) is not int or not 0 <= meta_version <= limits.INCARNATION_MAX:
        raise RemoteProtocolError("metadata version must be an unsigned 63-bit integer")
    addrs = _addrs(raw_addrs) if raw_addrs != [] else ()
    peer = sys.intern(peer)
    if state is not State.SUSPECT:
        if accuser is not None:
            raise RemoteProtocolError("only a suspect entry names an accuser")
        return Entry(peer, state, incarnation, meta_version, addrs)
    _peer(accuser, "accuser")
    if accuser == peer:
        raise RemoteProtocolError("a member cannot accuse itself")
    return Entry(peer, state, incarnation, meta_version, addrs, accuser)


def _metadata_record(raw: object, metadata_bytes_max: int) -> tuple[PeerId, int, Metadata]:
    if not isinstance(raw, list) or len(raw) != 3:
        raise RemoteProtocolError("a metadata record must be a list of 3 items")
    peer = _peer(raw[0], "metadata peer")
    meta_version = _uint(raw[1], limits.INCARNATION_MAX, "metadata version")
    return peer, meta_version, metadata_codec.decode(raw[2], metadata_bytes_max, RemoteProtocolError)


_STATES = {int(state): state for state in State}


def packed_size_bytes(value: object) -> int:
    return len(pack(value))


def received_size_bytes(message: Message) -> int:
    """The encoded size of a received message. One decoded from a frame always encodes again, but one
    handed over in-process (simnet, tests) may hold what no frame can, such as an integer below -2**63:
    that is refused like any other malformed message."""
    try:
        return len(pack(message))
    except (OverflowError, ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"message holds a value msgpack cannot encode: {exc}") from None


def chunks(sized_items: Iterable[tuple[Any, int]], bytes_max: int, count_max: int) -> list[list[Any]]:
    """Split (item, packed size) pairs into lists that each encode within ``bytes_max`` and hold at most
    ``count_max`` items."""
    out: list[list[Any]] = []
    current: list[Any] = []
    current_bytes = 0
    for item, size in sized_items:
        if current and (current_bytes + size > bytes_max or len(current) >= count_max):
            out.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        out.append(current)
    return out
