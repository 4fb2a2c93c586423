"""The KV store's pure parts: placement, the entry and message codecs (untrusted bytes), the shard state
machine with its sessions and snapshots."""

from __future__ import annotations

import collections
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyagent.errors import RemoteProtocolError
from pyagent.proto.kv import messages
from pyagent.proto.kv.config import Config
from pyagent.proto.kv.ops import (
    KEY_BYTES_MAX,
    VALUE_BYTES_MAX,
    Cas,
    Delete,
    Get,
    Put,
    Scan,
    Session,
    check_command,
    decode_entry,
    encode_entry,
)
from pyagent.proto.kv.placement import Candidate, hash_part, node_id_of, place, shard_of
from pyagent.proto.kv.statemachine import RESULTS_PER_CLIENT_MAX, BadEntry, ShardState, decode_snapshot
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.storage import WriteBatch
from pyagent.proto.wire import pack

PEERS = [f"12D3KooWpeer{i:02d}" for i in range(12)]


# --- placement -------------------------------------------------------------------------------------------


def test_shard_of_is_stable_and_spreads_keys() -> None:
    counts = collections.Counter(shard_of(f"key-{i}".encode(), 64) for i in range(64_000))
    assert set(counts) == set(range(64))
    assert max(counts.values()) < 1.2 * 1000 and min(counts.values()) > 0.8 * 1000
    # Pinned: a change of hash would move every key of every existing mesh.
    assert shard_of(b"hello", 64) == 61


def test_hash_tags_put_related_keys_in_one_shard() -> None:
    assert hash_part(b"{user42}/name") == b"user42"
    assert shard_of(b"{user42}/name", 64) == shard_of(b"{user42}/mail", 64) == shard_of(b"user42", 64)
    assert hash_part(b"{}/x") == b"{}/x"  # an empty tag is no tag
    assert hash_part(b"no-tag}{") == b"no-tag}{"


def test_node_ids_are_never_zero_and_differ() -> None:
    ids = {node_id_of(peer) for peer in PEERS}
    assert len(ids) == len(PEERS) and 0 not in ids


def test_place_is_deterministic_and_independent_of_order() -> None:
    candidates = [Candidate(p) for p in PEERS[:5]]
    first = place(7, candidates, 3)
    assert len(first) == len(set(first)) == 3
    assert place(7, list(reversed(candidates)), 3) == first


def test_place_spreads_over_zones_before_doubling_up() -> None:
    candidates = [Candidate(p, zone="a") for p in PEERS[:4]] + [Candidate(PEERS[4], zone="b")]
    for shard in range(32):
        chosen = place(shard, candidates, 2)
        assert PEERS[4] in chosen, "each shard has a replica in zone b"


def test_place_gives_every_candidate_when_there_are_too_few() -> None:
    assert sorted(place(3, [Candidate(PEERS[0]), Candidate(PEERS[1])], 3)) == sorted(PEERS[:2])


def test_place_follows_capacity_and_moves_little_when_a_peer_joins() -> None:
    heavy = [Candidate(PEERS[0], weight=4.0)] + [Candidate(p) for p in PEERS[1:5]]
    leaders = collections.Counter(place(s, heavy, 1)[0] for s in range(2000))
    assert leaders[PEERS[0]] > 2.5 * max(n for p, n in leaders.items() if p != PEERS[0])
    before = {s: place(s, [Candidate(p) for p in PEERS[:5]], 3) for s in range(500)}
    after = {s: place(s, [Candidate(p) for p in PEERS[:6]], 3) for s in range(500)}
    # A joining peer takes one replica of the shards it wins (about 3 in 6) and moves nothing else.
    assert all(len(set(before[s]) - set(after[s])) <= 1 for s in range(500))
    assert all(set(before[s]) - set(after[s]) == set() or PEERS[5] in after[s] for s in range(500))


# --- ops and the entry codec -----------------------------------------------------------------------------


def test_check_command_names_each_bound() -> None:
    with pytest.raises(ValueError, match="at most 1024 bytes"):
        check_command(Put(b"k" * (KEY_BYTES_MAX + 1), b"v"))
    with pytest.raises(ValueError, match="must not be empty"):
        check_command(Get(b""))
    with pytest.raises(ValueError, match="value must be at most"):
        check_command(Cas(b"k", None, b"v" * (VALUE_BYTES_MAX + 1)))
    with pytest.raises(ValueError, match="scan limit"):
        check_command(Scan(b"", limit=0))
    check_command(Scan(b""))  # an empty prefix scans the whole shard


writes = st.one_of(
    st.builds(Put, st.binary(min_size=1, max_size=40), st.binary(max_size=40)),
    st.builds(Delete, st.binary(min_size=1, max_size=40)),
    st.builds(
        Cas,
        st.binary(min_size=1, max_size=40),
        st.none() | st.binary(max_size=10),
        st.none() | st.binary(max_size=10),
    ),
)
sessions = st.none() | st.builds(Session, st.integers(0, 2**63), st.integers(0, 2**40), st.integers(0, 2**40))


@given(writes, sessions)
def test_entries_round_trip(write: Put | Delete | Cas, session: Session | None) -> None:
    write = type(write)(*[getattr(write, f) for f in write.__dataclass_fields__ if f != "session"], session)
    assert decode_entry(encode_entry(write)) == write


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_entry_decoder_refuses_garbage_only_with_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_entry(data)


@given(st.dictionaries(st.sampled_from(["v", "t", "k", "x", "e", "n", "c", "q", "a"]), st.from_type(object)))
def test_entry_decoder_refuses_wrong_field_types(fields: dict[str, object]) -> None:
    try:
        body = pack(fields)
    except (TypeError, ValueError, OverflowError):
        return
    with contextlib.suppress(RemoteProtocolError):
        decode_entry(body)


# --- the KV protocol's messages ---------------------------------------------------------------------------


@given(
    st.integers(0, 2**32),
    st.one_of(
        writes,
        st.builds(Get, st.binary(min_size=1, max_size=20), st.booleans()),
        st.builds(
            Scan, st.binary(max_size=20), st.integers(1, 100), st.none() | st.integers(0, 63), st.booleans()
        ),
    ),
)
def test_forwards_round_trip(forward_id: int, command: object) -> None:
    decoded = messages.decode(messages.encode_forward(forward_id, command))  # type: ignore[arg-type]
    assert decoded == messages.Forward(forward_id, command)  # type: ignore[arg-type]


def test_forward_replies_round_trip() -> None:
    for reply in [
        messages.ForwardReply(3, value=[True, b"x"]),
        messages.ForwardReply(4, value=None),
        messages.ForwardReply(5, error=("not_leader", "go there", {"leader_hint": "12D3KooWx"})),
    ]:
        assert messages.decode(messages.encode_forward_reply(reply)) == reply


@given(st.dictionaries(st.sampled_from(["t", "i", "n", "f", "c", "r", "e"]), st.from_type(object)))
def test_message_decoder_refuses_garbage_only_with_remote_protocol_error(fields: dict[str, object]) -> None:
    message = {"v": 1, "t": "fwd", **fields}
    if not isinstance(message.get("t"), str):
        return
    with contextlib.suppress(RemoteProtocolError):
        messages.decode(message)


@given(st.binary(max_size=64))
def test_snapshot_blob_splitter_refuses_garbage(data: bytes) -> None:
    try:
        _group, message, state = messages.split_snapshot_blob(data)
    except RemoteProtocolError:
        return
    assert len(message) + len(state) < len(data)


def test_snapshot_blob_round_trips() -> None:
    blob = messages.snapshot_blob(63, b"raft-message", b"state")
    assert messages.split_snapshot_blob(blob) == (63, b"raft-message", b"state")


# --- the state machine ---------------------------------------------------------------------------------


def apply(state: ShardState, store: MemoryStore, index: int, write: Put | Delete | Cas) -> object:
    applied = state.apply(index, encode_entry(write))
    store.apply(WriteBatch("kv", (*applied.ops, state.applied_op())))
    return applied.result


def test_state_machine_applies_and_persists_what_it_applies() -> None:
    store, state = MemoryStore(), ShardState(5)
    assert apply(state, store, 6, Put(b"a", b"1")) is None
    assert apply(state, store, 7, Cas(b"a", b"0", b"2")) == [False, b"1"]
    assert apply(state, store, 8, Cas(b"a", b"1", b"2")) == [True, b"1"]
    assert apply(state, store, 9, Cas(b"b", None, b"new")) == [True, None]
    assert apply(state, store, 10, Delete(b"a")) is True
    assert apply(state, store, 11, Delete(b"a")) is False
    assert state.data == {b"b": b"new"} and state.applied == 11
    recovered = ShardState(5)
    recovered.load(store.reader("kv"))
    assert recovered.data == state.data and recovered.applied == 11
    other = ShardState(6)
    other.load(store.reader("kv"))
    assert other.data == {} and other.applied == 0


def test_a_retried_write_applies_once_and_answers_the_first_result() -> None:
    store, state = MemoryStore(), ShardState(0)
    first = Cas(b"k", None, b"mine", Session(client=9, seq=1, ack=1))
    assert apply(state, store, 6, first) == [True, None]
    apply(state, store, 7, Put(b"k", b"theirs", Session(client=8, seq=1, ack=1)))
    assert apply(state, store, 8, first) == [True, None], "the retry gets the first answer"
    assert state.data[b"k"] == b"theirs", "and changes nothing"
    # The session survives a restart, so a retry after one is still answered from it.
    recovered = ShardState(0)
    recovered.load(store.reader("kv"))
    assert recovered.apply(9, encode_entry(first)).result == [True, None]


def test_a_late_copy_of_an_answered_write_does_not_run_again() -> None:
    # The first try of write 1 is still on its way when the client, answered by its retry, moves on and
    # acknowledges it; then the first try arrives.
    store, state = MemoryStore(), ShardState(0)
    first_try = Put(b"k", b"old", Session(client=5, seq=1, ack=1))
    apply(state, store, 6, first_try)
    apply(state, store, 7, Put(b"k", b"new", Session(client=5, seq=2, ack=2)))
    late = state.apply(8, encode_entry(first_try))
    assert isinstance(late.result, BadEntry) and late.ops == []
    assert state.data[b"k"] == b"new"
    recovered = ShardState(0)
    store.apply(WriteBatch("kv", (state.applied_op(),)))
    recovered.load(store.reader("kv"))
    assert isinstance(recovered.apply(9, encode_entry(first_try)).result, BadEntry), "after a restart too"


def test_acknowledged_results_are_forgotten_and_bounded() -> None:
    store, state = MemoryStore(), ShardState(0)
    for seq in range(1, RESULTS_PER_CLIENT_MAX + 50):
        apply(state, store, 5 + seq, Put(b"k", str(seq).encode(), Session(client=1, seq=seq, ack=1)))
    assert len(state._clients[1].results) == RESULTS_PER_CLIENT_MAX
    apply(state, store, 10_000, Put(b"k", b"x", Session(client=1, seq=2000, ack=2000)))
    assert list(state._clients[1].results) == [2000]


def test_a_bad_entry_is_a_no_op_with_an_error_result() -> None:
    state = ShardState(0)
    applied = state.apply(6, b"\x93garbage")
    assert isinstance(applied.result, BadEntry) and applied.ops == [] and state.applied == 6
    assert state.apply(7, b"").result is None  # a new leader's empty entry


def test_snapshots_restore_data_sessions_and_index_and_refuse_garbage() -> None:
    store, state = MemoryStore(), ShardState(2)
    apply(state, store, 6, Put(b"a", b"1", Session(3, 1, 1)))
    apply(state, store, 7, Put(b"b", b"2"))
    blob = state.snapshot()
    target_store, target = MemoryStore(), ShardState(2)
    apply(target, target_store, 6, Put(b"stale", b"x"))
    target_store.apply(WriteBatch("kv", tuple(target.restore(decode_snapshot(blob)))))
    assert target.data == {b"a": b"1", b"b": b"2"} and target.applied == 7
    reloaded = ShardState(2)
    reloaded.load(target_store.reader("kv"))
    assert reloaded.data == target.data and reloaded.applied == 7
    assert reloaded.apply(8, encode_entry(Put(b"a", b"1", Session(3, 1, 1)))).ops == []
    assert decode_snapshot(blob).index == 7
    with pytest.raises(RemoteProtocolError):
        decode_snapshot(b"\x81\xa1v\x01")


@given(st.binary(max_size=100))
def test_snapshot_decoder_refuses_garbage_only_with_remote_protocol_error(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_snapshot(data)


def test_scan_is_ordered_prefix_filtered_and_limited() -> None:
    store, state = MemoryStore(), ShardState(0)
    for index, key in enumerate([b"b2", b"a", b"b1", b"c", b"b3"], start=6):
        apply(state, store, index, Put(key, key))
    assert state.scan(b"b", 2) == [(b"b1", b"b1"), (b"b2", b"b2")]


def test_config_table_is_checked() -> None:
    assert Config.from_table({"shards": 8}).shards == 8
    with pytest.raises(ValueError, match="unknown key 'shard'"):
        Config.from_table({"shard": 8})
    with pytest.raises(ValueError, match="positive integer"):
        Config.from_table({"replicas": 0})
    with pytest.raises(ValueError, match="heartbeat_ticks"):
        Config.from_table({"heartbeat_ticks": 10, "election_ticks": 10})
