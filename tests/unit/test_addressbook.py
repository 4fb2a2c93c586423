"""What membership keeps across restarts: a reserved incarnation ceiling and the address book."""

from __future__ import annotations

import random

from pyagent.proto.events import LocalRequest, MessageReceived
from pyagent.proto.membership import Entry, ListAddressBook, Membership, State, codec
from pyagent.proto.membership.addressbook import INCARNATION_RESERVE
from pyagent.proto.memstore import MemoryStore
from pyagent.proto.node import NodeCore
from pyagent.proto.ready import Ready


def boot(store: MemoryStore, now_us: int = 0) -> tuple[NodeCore, Membership]:
    membership = Membership(
        "me", random.Random(1), local_addrs=("/ip4/10.0.0.1/tcp/1",), storage=store.reader("membership")
    )
    core = NodeCore("me", [membership])
    persist(store, core.start(now_us, recovered=not store.is_empty()))
    return core, membership


def persist(store: MemoryStore, ready: Ready) -> Ready:
    for batch in ready.writes:
        store.apply(batch)
    return ready


def gossip(core: NodeCore, store: MemoryStore, *entries: Entry, now_us: int = 1) -> Ready:
    message = codec.gossip([codec.encode_entry(entry) for entry in entries])
    return persist(store, core.step(MessageReceived("a", Membership.protocol_id, message), now_us))


def test_a_restart_starts_above_every_incarnation_the_last_run_could_have_sent() -> None:
    store = MemoryStore()
    core, membership = boot(store)
    # A refutation jumps the local incarnation far past the first reservation.
    gossip(core, store, Entry("a", State.ALIVE, 1, 1, ("/ip4/10.0.0.2/tcp/1",)))
    ready = gossip(core, store, Entry("me", State.SUSPECT, 500, 1, accuser="a"))
    used = membership.member("me").incarnation  # type: ignore[union-attr]
    assert used > 500
    assert any(batch.sync for batch in ready.writes), "a new ceiling is synced before the refutation leaves"
    # Membership never sends ahead of its writes: whatever carries the refutation (this Ready's sends or
    # a later gossip round's) is held by the Interpreter until the ceiling is durable.
    assert not ready.send_before_persist

    _, restarted = boot(store, now_us=10)
    after = restarted.member("me").incarnation  # type: ignore[union-attr]
    assert used < after <= used + INCARNATION_RESERVE


def test_the_address_book_keeps_live_members_and_forgets_those_that_left() -> None:
    store = MemoryStore()
    core, _ = boot(store)
    gossip(
        core,
        store,
        Entry("a", State.ALIVE, 1, 1, ("/ip4/10.0.0.2/tcp/1",)),
        Entry("b", State.ALIVE, 1, 1, ("/ip4/10.0.0.3/tcp/1",)),
        Entry("c", State.ALIVE, 1, 1, ("/ip4/10.0.0.4/tcp/1",)),
    )
    gossip(core, store, Entry("c", State.LEFT, 2, 1), now_us=2)

    restarted, _ = boot(store, now_us=10)
    book = restarted.step(LocalRequest(1, ListAddressBook()), 11).apply[0].value
    assert book == (("a", ("/ip4/10.0.0.2/tcp/1",)), ("b", ("/ip4/10.0.0.3/tcp/1",)))


def test_a_first_start_has_an_empty_book() -> None:
    core, _ = boot(MemoryStore())
    assert core.step(LocalRequest(1, ListAddressBook()), 1).apply[0].value == ()
