"""The sharded KV store under a 3|2 partition of real daemons on real (namespaced) hosts.

Five ``pyagent daemon`` processes run in five network namespaces joined by a bridge (as in
test_partition_netns.py); the partition moves two hosts' veths to a second bridge. Every shard's group has
three replicas, so for one group the "minority" is the side holding fewer than two of *its* replicas:

- a group with two or three replicas on the 3-host side keeps committing there, and a daemon on the 2-host
  side cannot commit to it (its writes time out, and its replica's commit index does not move), even
  when that replica led the group at the cut;
- a group with two replicas on the 2-host side is the mirror image: the 2-host side serves it, and the
  3-host side cannot;
- after the heal every group has one leader that all its replicas agree on, both sides serve every group
  again, and the whole history (clients on both sides, before, during and after the partition, and final
  reads of every key) is linearizable, so every acknowledged write is in what the mesh holds at the end.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from pyagent.client import KvClient
from pyagent.controlconn import ClientError
from pyagent.localmesh import LocalPeer, logs_on_failure, start_mesh, stop_all, wait_until
from pyagent.proto.kv.placement import shard_of
from pyagent.testing.netns import Network
from pyagent_simnet.linearizability import HistoryRecorder, Operation, check

pytestmark = pytest.mark.netns

HOST_COUNT = 5
MINORITY_HOSTS = 2
LISTEN_PORT = 4001
SHARDS = 64
REPLICAS = 3
# Five daemons place 64 groups of 3 replicas; on a loaded 2-core machine this can take a while.
REPLICATION_TIMEOUT_S = 90.0
# Short, so that a client stuck on a group its side cannot serve tries again often; an answerless call is
# recorded as unknown, which is always safe.
CALL_TIMEOUT_S = 3.0
# The shards are picked once no leader has moved for LEADERS_STILL_S, so that the shard chosen for being
# led from the 2-host side still is at the cut (the wait is bounded: the test goes on either way).
LEADERS_STILL_S = 3.0
LEADERS_SETTLE_TIMEOUT_S = 20.0
BEFORE_S = 3.0
PARTITION_S = 20.0
# The commit indexes are first read this long after the cut: messages already in a socket buffer at the
# cut may still be handled just after it.
SETTLE_S = 2.0
HEAL_CONVERGE_TIMEOUT_S = 75.0
# After the heal the workload runs at least AFTER_MIN_S, and until each side has had a write acknowledged
# on a group the other side held the majority of (at most AFTER_MAX_S after every shard has a leader).
AFTER_MIN_S = 5.0
AFTER_MAX_S = 30.0
A_CLIENTS = 3
# Above the sum of this test's own deadlines (plus daemon start-up, final reads and shutdown), so that
# one of them, which says what did not happen, fires first.
TEST_TIMEOUT_S = int(
    REPLICATION_TIMEOUT_S
    + LEADERS_SETTLE_TIMEOUT_S
    + BEFORE_S
    + PARTITION_S
    + HEAL_CONVERGE_TIMEOUT_S
    + AFTER_MAX_S
    + 90
)


@pytest.fixture
def net(netns: Callable[[int], Network]) -> Network:
    return netns(HOST_COUNT)


@pytest.fixture
def daemons(tmp_path: Path, net: Network) -> Iterator[list[LocalPeer]]:
    """One daemon per namespaced host; node-1 starts the mesh (and founds every shard), the others
    bootstrap from it."""
    peers = start_mesh(tmp_path, len(net.hosts), placements=net.placements(LISTEN_PORT))
    try:
        yield peers
    finally:
        stop_all(peers)


# --- shard status --------------------------------------------------------------------------------------

Statuses = dict[str, dict[int, dict[str, Any]]]  # peer id -> shard -> that peer's status of its replica


def statuses(peers: Sequence[LocalPeer]) -> Statuses:
    return {p.peer_id: {s["shard"]: s for s in p.call("kv.shards")} for p in peers}


def replicated(peers: Sequence[LocalPeer]) -> bool:
    """Every shard has its replicas as voters and a leader, as every peer hosting it sees it."""
    views = statuses(peers)
    if len(views[peers[0].peer_id]) != SHARDS:  # the founder hosts every shard
        return False
    return all(
        len(s["voters"]) == REPLICAS and not s["learners"] and s["leader"]
        for view in views.values()
        for s in view.values()
    )


def disagreements(peers: Sequence[LocalPeer]) -> dict[int, dict[str, Any]]:
    """The shards without one leader that leads in its own view and that every replica names: shard ->
    each replica's view (role, term, leader, commit, applied)."""
    views = statuses(peers)
    names = {p.peer_id: p.name for p in peers}
    out: dict[int, dict[str, Any]] = {}
    for shard in range(SHARDS):
        replicas = {peer: view[shard] for peer, view in views.items() if shard in view}
        named = {s["leader"] for s in replicas.values()}
        leader = next(iter(named)) if len(named) == 1 else None
        if leader is not None and replicas.get(leader, {}).get("role") == "leader":
            continue
        out[shard] = {
            names[peer]: (
                s["role"],
                s["term"],
                names.get(s["leader"], s["leader"]),
                s["commit"],
                s["applied"],
            )
            for peer, s in replicas.items()
        }
    return out


def leaders_agreed(peers: Sequence[LocalPeer], last: list[dict[int, dict[str, Any]]]) -> bool:
    """Every shard has a leader that leads in its own view, and every replica names it (``last`` keeps
    the latest disagreements, to show them if this never happens)."""
    last[:] = [disagreements(peers)]
    return not last[0]


HOST_FIGURES = (
    "connected_peers",
    "send_dropped_overflow",
    "send_dropped_not_connected",
    "send_dropped_error",
    "send_stream_errors",
    "connections_refused",
    "streams_refused",
    "kv_leader_elected",
)


def print_host_figures(peers: Sequence[LocalPeer]) -> None:
    """What each daemon's host saw (connections, dropped sends), to tell a network fault from a Raft one."""
    names = {p.peer_id: p.name for p in peers}
    for peer in peers:
        stats = peer.call("stats")
        connected = sorted(names.get(info["peer"], info["peer"]) for info in peer.call("peers"))
        figures = ", ".join(f"{name}={stats.get(name)}" for name in HOST_FIGURES)
        print(f"  {peer.name}: connected to {connected}; {figures}")


@dataclass(frozen=True)
class Layout:
    """Where each shard's voters are, and who led it, at one moment (as its leader saw it)."""

    voters: dict[int, frozenset[str]]
    leader: dict[int, str]

    @classmethod
    def of(cls, peers: Sequence[LocalPeer]) -> Layout:
        voters: dict[int, frozenset[str]] = {}
        leader: dict[int, str] = {}
        terms: dict[int, int] = {}
        for peer, view in statuses(peers).items():
            for shard, s in view.items():
                if s["role"] == "leader" and s["term"] >= terms.get(shard, -1):
                    terms[shard], leader[shard] = s["term"], peer
                    voters[shard] = frozenset(s["voters"])
        return cls(voters, leader)


def settled_layout(peers: Sequence[LocalPeer]) -> tuple[Layout, float | None]:
    """The layout once every shard has a leader and no leader has moved for LEADERS_STILL_S (leaders
    move to their preferred peers for a while after replication), and how long that took; the latest
    layout with every shard led, and None, if leaders still move after LEADERS_SETTLE_TIMEOUT_S."""
    started = time.monotonic()
    layout, still_since = Layout.of(peers), time.monotonic()
    while True:
        time.sleep(0.5)
        now, latest = time.monotonic(), Layout.of(peers)
        if len(latest.leader) < SHARDS or latest.leader != layout.leader:
            still_since = now
        if len(latest.leader) == SHARDS:
            layout = latest
            if now - still_since >= LEADERS_STILL_S:
                return layout, now - started
            if now - started > LEADERS_SETTLE_TIMEOUT_S:
                return layout, None
        elif now - started > REPLICATION_TIMEOUT_S:
            raise TimeoutError(f"some shard had no leader for {REPLICATION_TIMEOUT_S:.0f} s")


@dataclass(frozen=True)
class Plan:
    """The keys the workload uses, one per chosen shard, and what the partition should do to each."""

    # Shards with at least two replicas on the 3-host side. The first, the "orphan", has exactly one on the
    # 2-host side, which led it when the plan was made if any such shard was led from there.
    a_shards: list[int]
    # Shards with two replicas on the 2-host side (possibly none).
    b_shards: list[int]
    orphan: int
    orphan_b_replica: str
    key_of: dict[int, bytes]

    @property
    def a_keys(self) -> list[bytes]:
        return [self.key_of[s] for s in self.a_shards]

    @property
    def b_keys(self) -> list[bytes]:
        return [self.key_of[s] for s in self.b_shards]


def keys_for(shards: set[int]) -> dict[int, bytes]:
    """The first key ``part-N`` that falls in each shard."""
    found: dict[int, bytes] = {}
    for index in itertools.count():
        if len(found) == len(shards):
            return found
        key = f"part-{index}".encode()
        shard = shard_of(key, SHARDS)
        if shard in shards:
            found.setdefault(shard, key)
    raise AssertionError("unreachable")


def minority_side(layout: Layout, peers: Sequence[LocalPeer]) -> list[int]:
    """The indexes of the two hosts to cut off, chosen so that every kind of group exists: with one replica
    on the 2-host side (needed), with none, and with two (all hosts share one bridge, so any pair will do
    for the network)."""

    def score(pair: tuple[int, ...]) -> tuple[bool, int, int]:
        side = {peers[index].peer_id for index in pair}
        held = [len(voters & side) for voters in layout.voters.values()]
        return (1 in held, min(held.count(0), held.count(2)), held.count(2))

    return list(max(itertools.combinations(range(len(peers)), MINORITY_HOSTS), key=score))


def plan(layout: Layout, side_a: set[str], side_b: set[str]) -> Plan:
    def on(side: set[str], shard: int) -> int:
        return len(layout.voters[shard] & side)

    shards = sorted(layout.voters)
    split = [s for s in shards if on(side_a, s) == 2 and on(side_b, s) == 1]
    assert split, f"no shard has two replicas on the 3-host side and one on the 2-host side: {layout}"
    led_from_b = [s for s in split if layout.leader[s] in side_b]
    orphan = (led_from_b or split)[0]
    all_a = [s for s in shards if on(side_a, s) == 3]
    # The orphan, a split shard led from the 3-host side, and two with every replica on that side.
    led_from_a = [s for s in split if s != orphan and layout.leader[s] in side_a]
    a_shards = [orphan, *led_from_a[:1], *all_a[:2]]
    if len(a_shards) < 4:
        a_shards += [s for s in split if s not in a_shards][: 4 - len(a_shards)]
    b_shards = [s for s in shards if on(side_b, s) >= 2][:2]
    (orphan_b_replica,) = layout.voters[orphan] & side_b
    return Plan(
        a_shards,
        b_shards,
        orphan,
        orphan_b_replica,
        keys_for({*a_shards, *b_shards}),
    )


# --- the workload --------------------------------------------------------------------------------------


# A client id "A:B:0" says which side's daemons it uses (A: the 3-host side, B: the 2-host side), then
# which groups' keys it works on (A: groups with at least two replicas on the 3-host side, B: on the other).
async def client_loop(
    name: str,
    homes: Sequence[Path],
    keys: Sequence[bytes],
    recorder: HistoryRecorder,
    stop: trio.Event,
    seed: int,
) -> None:
    """Puts, gets, compare-and-sets and deletes on ``keys`` through one of ``homes`` until ``stop``; a
    call with no answer is recorded as unknown and the client reconnects."""
    rng = random.Random(seed)
    written = 0
    while not stop.is_set():
        try:
            async with KvClient.open(rng.choice(homes), timeout_s=CALL_TIMEOUT_S) as kv:
                while not stop.is_set():
                    key = rng.choice(keys)
                    roll = rng.random()
                    written += 1
                    value = f"{name}-{written}".encode()
                    if roll < 0.45:
                        with recorder.invoke(name, "put", key, value=value) as op:
                            await kv.put(key, value)
                            op.ok()
                    elif roll < 0.85:
                        with recorder.invoke(name, "get", key) as op:
                            op.ok(await kv.get(key))
                    elif roll < 0.95:
                        # A stale read picks a plausible expected value; it is not part of the history.
                        expected = await kv.get(key, stale=True)
                        with recorder.invoke(name, "cas", key, value=value, expected=expected) as op:
                            swapped, _ = await kv.cas(key, expected, value)
                            op.ok(swapped)
                    else:
                        with recorder.invoke(name, "delete", key) as op:
                            await kv.delete(key)
                            op.ok()
        except (ClientError, trio.TooSlowError, OSError):
            await trio.sleep(0.05)


async def read_all(home: Path, keys: Sequence[bytes], recorder: HistoryRecorder) -> dict[bytes, bytes | None]:
    """Every key once more, linearizably, recorded: the end state must agree with every acknowledged write."""
    values: dict[bytes, bytes | None] = {}
    async with KvClient.open(home, timeout_s=30.0) as kv:
        for key in keys:
            with recorder.invoke("final", "get", key) as op:
                values[key] = await kv.get(key)
                op.ok(values[key])
    return values


def is_write(op: Operation) -> bool:
    return op.kind in ("put", "delete") or (op.kind == "cas" and op.result is True)


@dataclass
class Phases:
    """Moments on the recorder's clock (``time.monotonic``)."""

    cut: float = 0.0
    heal: float = 0.0

    def of(self, op: Operation) -> str:
        """ "during" is called after the cut and answered (if at all) before the heal; "after" is called
        after the heal; "between" straddles one of them."""
        if op.call_time < self.cut:
            return "before" if op.return_time is not None and op.return_time < self.cut else "between"
        if op.call_time >= self.heal:
            return "after"
        return "during" if op.return_time is None or op.return_time < self.heal else "between"


def acked(
    history: Sequence[Operation], phases: Phases, phase: str, client: str, keys: Sequence[bytes]
) -> list[Operation]:
    """Completed operations of clients whose id starts with ``client``, called in ``phase``, on ``keys``."""
    return [
        op
        for op in history
        if op.completed and str(op.client).startswith(client) and op.key in keys and phases.of(op) == phase
    ]


def crossed_after_heal(
    history: Sequence[Operation], phases: Phases, client: str, keys: Sequence[bytes]
) -> bool:
    return any(is_write(op) for op in acked(history, phases, "after", client, keys))


@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_a_3_2_partition_commits_only_on_each_groups_majority_and_stays_linearizable(
    net: Network, daemons: list[LocalPeer]
) -> None:
    peers = daemons
    with logs_on_failure(peers):
        started = time.monotonic()
        replicated_s = wait_until(
            lambda: replicated(peers), REPLICATION_TIMEOUT_S, "every shard with 3 voters and a leader", 0.5
        )
        by_id = {p.peer_id: p for p in peers}
        layout, settled_s = settled_layout(peers)
        minority = minority_side(layout, peers)
        side_a_peers = [p for index, p in enumerate(peers) if index not in minority]
        side_b_peers = [peers[index] for index in minority]
        side_a = {p.peer_id for p in side_a_peers}
        side_b = {p.peer_id for p in side_b_peers}
        the_plan = plan(layout, side_a, side_b)
        a_keys, b_keys = the_plan.a_keys, the_plan.b_keys
        print(
            f"\n{HOST_COUNT} namespaced daemons replicated {SHARDS} shards in {replicated_s:.1f} s, leaders "
            f"settled in {'-' if settled_s is None else f'{settled_s:.1f}'} s; the "
            f"2-host side is {[p.name for p in side_b_peers]}; "
            f"A-majority shards {the_plan.a_shards}, B-majority shards {the_plan.b_shards}; shard "
            f"{the_plan.orphan} has its third replica on {by_id[the_plan.orphan_b_replica].name}"
        )

        a_homes = [p.home for p in side_a_peers]
        b_homes = [p.home for p in side_b_peers]
        orphan_b_home = by_id[the_plan.orphan_b_replica].home
        orphan_a_peer = next(by_id[p] for p in layout.voters[the_plan.orphan] if p in side_a)
        recorder = HistoryRecorder(time.monotonic)
        phases = Phases(cut=float("inf"), heal=float("inf"))
        commits: dict[str, tuple[int, int]] = {}
        figures: dict[str, Any] = {}

        def commit_of(peer: LocalPeer, shard: int) -> int:
            return int(statuses([peer])[peer.peer_id][shard]["commit"])

        async def partition_and_heal(stop: trio.Event) -> None:
            await trio.sleep(BEFORE_S)
            at_cut = await trio.to_thread.run_sync(statuses, [by_id[the_plan.orphan_b_replica]])
            figures["b_led_at_cut"] = at_cut[the_plan.orphan_b_replica][the_plan.orphan]["role"] == "leader"
            await trio.to_thread.run_sync(
                net.partition,
                [
                    [host for index, host in enumerate(net.hosts) if index not in minority],
                    [net.hosts[index] for index in minority],
                ],
            )
            phases.cut = time.monotonic()
            await trio.sleep(SETTLE_S)
            orphan_b, orphan_a = by_id[the_plan.orphan_b_replica], orphan_a_peer
            first = [
                await trio.to_thread.run_sync(commit_of, p, the_plan.orphan) for p in (orphan_b, orphan_a)
            ]
            await trio.sleep(PARTITION_S - SETTLE_S)
            final = [
                await trio.to_thread.run_sync(commit_of, p, the_plan.orphan) for p in (orphan_b, orphan_a)
            ]
            commits["B replica"] = (first[0], final[0])
            commits["A replica"] = (first[1], final[1])
            phases.heal = time.monotonic()
            await trio.to_thread.run_sync(net.heal)
            last: list[dict[int, dict[str, Any]]] = []
            try:
                figures["converge_s"] = await trio.to_thread.run_sync(
                    lambda: wait_until(
                        lambda: leaders_agreed(peers, last),
                        HEAL_CONVERGE_TIMEOUT_S,
                        "one agreed leader per shard after the heal",
                        0.5,
                    )
                )
            except TimeoutError:
                print("shards without an agreed leader (role, term, leader, commit, applied):")
                for shard, views in last[0].items():
                    print(f"  {shard}: {views}")
                print_host_figures(peers)
                raise
            # Both sides serve every group again: run until each side has had a write acknowledged on
            # a group the other side held the majority of, and at least AFTER_MIN_S after the heal.
            converged_at = time.monotonic()
            while time.monotonic() - converged_at < AFTER_MAX_S:
                history = recorder.history()
                healed = crossed_after_heal(history, phases, "B:A", a_keys) and (
                    not b_keys or crossed_after_heal(history, phases, "A:B", b_keys)
                )
                if healed and time.monotonic() - phases.heal >= AFTER_MIN_S:
                    break
                await trio.sleep(0.2)
            stop.set()

        async def main() -> dict[bytes, bytes | None]:
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                seed = itertools.count()
                for index in range(A_CLIENTS):
                    nursery.start_soon(
                        client_loop, f"A:A:{index}", a_homes, a_keys, recorder, stop, next(seed)
                    )
                # Through the daemon of the orphan's replica on the 2-host side: the old leader, if it was.
                nursery.start_soon(client_loop, "B:A:0", [orphan_b_home], a_keys, recorder, stop, next(seed))
                if b_keys:
                    nursery.start_soon(client_loop, "B:B:0", b_homes, b_keys, recorder, stop, next(seed))
                    nursery.start_soon(client_loop, "A:B:0", a_homes, b_keys, recorder, stop, next(seed))
                nursery.start_soon(partition_and_heal, stop)
            return await read_all(orphan_b_home, [*a_keys, *b_keys], recorder)

        final = trio.run(main)
        history = recorder.history()
        checked = time.monotonic()
        result = check(history)
        check_s = time.monotonic() - checked

        completed = [op for op in history if op.completed]
        unknown = [op for op in history if not op.completed]
        during_a = acked(history, phases, "during", "A:A", a_keys)
        first_a = min((op.return_time for op in during_a if is_write(op)), default=None)
        first_orphan = min(
            (
                op.return_time
                for op in during_a
                if is_write(op) and op.key == the_plan.key_of[the_plan.orphan]
            ),
            default=None,
        )
        minority_a = acked(history, phases, "during", "B:A", a_keys)
        minority_b = acked(history, phases, "during", "A:B", b_keys)
        during_b = acked(history, phases, "during", "B:B", b_keys)
        print(
            f"{len(history)} operations: {sum(is_write(op) for op in completed)} acknowledged writes, "
            f"{sum(op.kind == 'get' for op in completed)} reads, {len(unknown)} unknown; during the "
            f"partition: {len(during_a)} acknowledged on the 3-host side, {len(during_b)} on the 2-host "
            f"side for its own groups, {len(minority_a) + len(minority_b)} across"
        )
        print(
            "first write committed on the 3-host side after the cut: "
            + (f"{first_a - phases.cut:.2f} s" if first_a else "never")
            + f", on shard {the_plan.orphan}: "
            + (f"{first_orphan - phases.cut:.2f} s" if first_orphan else "never")
        )
        print(
            f"shard {the_plan.orphan} was led from the 2-host side just before the cut: "
            f"{figures['b_led_at_cut']}; its commit index during the partition: "
            + ", ".join(f"{where} {a} -> {b}" for where, (a, b) in commits.items())
        )
        print(
            f"one agreed leader per shard {figures.get('converge_s', float('nan')):.1f} s after the heal; "
            f"run {time.monotonic() - started:.0f} s; checked in {check_s:.1f} s: "
            f"{result.explanation.splitlines()[0]}"
        )

        # (a) and (c): the majority side goes on, on every group it holds the majority of.
        for key in a_keys:
            assert any(is_write(op) for op in during_a if op.key == key), (
                f"no write to {key!r} committed on the 3-host side during the partition"
            )
            assert any(op.kind == "get" for op in during_a if op.key == key), (
                f"no linearizable read of {key!r} answered on the 3-host side during the partition"
            )
        # (b): the minority of a group cannot commit: nothing a 2-host-side daemon asked of a group with
        # two replicas on the 3-host side was answered, and that group's replica there saw no commit.
        assert not minority_a, f"the 2-host side answered for 3-host-side groups: {minority_a[:5]}"
        assert any(phases.of(op) == "during" for op in unknown if op.client == "B:A:0"), (
            "the 2-host side never tried to write to a 3-host-side group"
        )
        b_first, b_last = commits["B replica"]
        assert b_last == b_first, f"shard {the_plan.orphan}'s replica on the 2-host side committed"
        a_first, a_last = commits["A replica"]
        assert a_last > a_first, f"shard {the_plan.orphan} did not commit on the 3-host side"
        # The mirror image, per group: the 2-host side serves the groups it holds two replicas of.
        if b_keys:
            assert any(is_write(op) for op in during_b), "the 2-host side committed nothing to its groups"
            assert not minority_b, f"the 3-host side answered for 2-host-side groups: {minority_b[:5]}"
        # (d): after the heal, both sides serve every group, and the whole history is linearizable
        # (the final reads are in it, so every acknowledged write is in the end state).
        assert crossed_after_heal(history, phases, "B:A", a_keys), (
            "no write through the 2-host side to a 3-host-side group committed after the heal"
        )
        if b_keys:
            assert crossed_after_heal(history, phases, "A:B", b_keys), (
                "no write through the 3-host side to a 2-host-side group committed after the heal"
            )
        assert result.linearizable, result.explanation
        assert any(value is not None for value in final.values())
