"""The kv kit: the sharded, Raft-replicated KV store (``pyagent.proto.kv.RaftKv``), a client workload that
records a history, and the checks that judge it (linearizability, election safety, recovery).

Scenario table (use it with the membership kit: ``components = ["membership", "kv"]``)::

    [kv]
    shards = 4                  # ...and any other kv.Config field: replicas, tick_ms, election_ticks...
    clients = 6                 # simulated clients, each with one operation in flight at a time
    keys_per_shard = 2          # the keys the clients use, chosen so that every shard has this many
    think_ms = 10               # mean pause between a client's answer and its next call (exponential)
    op_timeout_ms = 3000        # a client gives up on a call after this long: its outcome is unknown
    attempt_timeout_ms = 0      # > 0: a try unanswered this long is sent again, same session, to another
                                # node (the first may still take effect); 0: only errors are retried
    start_s = 1.0               # clients start calling then (node 0 founds the shards at its start)
    put_weight = 0.35           # the operation mix
    get_weight = 0.4
    cas_weight = 0.15
    delete_weight = 0.1
    leader_crash_at_s = [8.0]   # at each time, crash the leader of a random shard (power loss) ...
    leader_down_s = 1.5         # ... and restart it this long after
    sample_ms = 100             # how often the observer samples every replica's role and term
    [kv.checks]
    linearizable = true         # safety: the recorded history must be linearizable
    completed_min = 1           # safety: at least this many calls answered in the safety phase
    recovery_bound_s = 0        # safety: after the last scheduled fault, every shard takes a write
                                # within this long (0 = unchecked; the liveness phase always checks)

How it is built, as the daemon builds it (``pyagent.node.daemon``'s ``sharded_kv``): each node's core gets
``RaftKv(ctx.local_peer, ctx.rng("kv"), Config(...), ctx.storage("kv"), members=<membership>)``. At every
start a node announces the kv protocol in its membership metadata (placement only picks members that
speak it), and node 0's first process sends ``FoundShards()``, as a daemon that starts a new mesh does.

The clients behave as ``pyagent.client`` does: a call goes to a random live node as a ``LocalRequest``
(the node forwards it to its shard's leader); a write carries its client's ``Session(client, seq, ack)``;
a retryable error (``not_leader``, ``unavailable``, ``busy``) is retried with the same session, after a
backoff, until the call's timeout. Values are unique per write (``c<client>-<seq>``), so the checker can
tell writes apart. A call that times out, whose node crashed while holding it, or that kept failing with
retryable errors is recorded as *unknown* (it may have taken effect); an ``invalid`` answer as failed.

The observer samples every replica's role and term (read from the driver, without stepping a core): two
leaders of one group in one term is a safety violation, and the distinct (group, term) leaders count the
leader changes. The liveness phase converges once every shard has completed a write called after every
fault was healed.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pyagent.composition import CoreFactory
from pyagent.errors import ConfigError
from pyagent.proto import kv, membership
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.kv.ops import Cas, Delete, Get, Put, Session
from pyagent.proto.kv.placement import shard_of
from pyagent.proto.membership.commands import UpdateLocalMetadata
from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.ready import Reply
from pyagent_simnet.kits import Kit
from pyagent_simnet.linearizability import HistoryRecorder, Kind, Operation, check
from pyagent_simnet.observe import Observer
from pyagent_simnet.schema import Field, at_least, nonneg, positive

if TYPE_CHECKING:
    from pyagent_simnet.sim import Sim, SimNode

US_PER_S = 1_000_000
US_PER_MS = 1_000
KIT = "kv"
# As pyagent.client: errors after which the same call may still succeed, and the pauses between tries.
RETRYABLE = frozenset({"not_leader", "unavailable", "busy", "timeout"})
RETRY_BACKOFF_MS = (50, 100, 200, 400, 800)
KINDS: tuple[Kind, ...] = ("put", "get", "cas", "delete")
# Each client's RNG is derived from the workload generator and its index, so adding a client does not
# change what the others do.
_CONFIG = "kv.config"
# The checker's explanation is long; the report keeps this much of it.
EXPLANATION_CHARS_MAX = 4_000
# Role samples: a group's term -> the leader seen in it, bounded per run.
LEADER_TERMS_MAX = 100_000
KEY_SEARCH_MAX = 100_000


def config_for(table: Mapping[str, Any], source: str) -> kv.Config:
    """The ``kv.Config`` of a checked ``[kv]`` table: its free-form keys (every kv.Config field)."""
    settings = {k: v for k, v in table.items() if k not in KvKit.settings and k != "checks"}
    try:
        return kv.Config.from_table(settings)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: kv: {exc}") from None


def _config(sim: Sim) -> kv.Config:
    config: kv.Config | None = sim.kit_state.get(_CONFIG)
    if config is None:
        config = config_for(sim.scenario.kit(KIT), sim.scenario.source)
        sim.kit_state[_CONFIG] = config
    return config


def workload_keys(shards: int, per_shard: int) -> list[bytes]:
    """``per_shard`` keys for each of ``shards`` shards (``k0``, ``k1``... in order, those whose shard is
    not full yet), so that every shard sees traffic and every shard's recovery can be judged."""
    counts = [0] * shards
    keys: list[bytes] = []
    index = 0
    while len(keys) < shards * per_shard:
        if index >= KEY_SEARCH_MAX:
            raise AssertionError(f"no {per_shard} keys per shard among {KEY_SEARCH_MAX} candidates")
        key = f"k{index}".encode()
        shard = shard_of(key, shards)
        if counts[shard] < per_shard:
            counts[shard] += 1
            keys.append(key)
        index += 1
    return keys


class KvKit(Kit):
    name: ClassVar[str] = KIT
    settings: ClassVar[dict[str, Field]] = {
        "clients": Field(int, 6, nonneg),
        "keys_per_shard": Field(int, 2, at_least(1)),
        "think_ms": Field(float, 10.0, nonneg),
        "op_timeout_ms": Field(float, 3_000.0, positive),
        "attempt_timeout_ms": Field(float, 0.0, nonneg),
        "start_s": Field(float, 1.0, nonneg),
        "put_weight": Field(float, 0.35, nonneg),
        "get_weight": Field(float, 0.4, nonneg),
        "cas_weight": Field(float, 0.15, nonneg),
        "delete_weight": Field(float, 0.1, nonneg),
        "leader_crash_at_s": Field(list, []),
        "leader_down_s": Field(float, 1.5, nonneg),
        "sample_ms": Field(float, 100.0, positive),
    }
    checks: ClassVar[dict[str, Field]] = {
        "linearizable": Field(bool, True),
        "completed_min": Field(int, 1, nonneg),
        "recovery_bound_s": Field(float, 0.0, nonneg),
    }
    summary_keys: ClassVar[tuple[str, ...]] = (
        "kv_ops_completed",
        "kv_ops_unknown",
        "kv_leader_changes",
        "kv_linearizable",
    )
    sweep_figures: ClassVar[tuple[str, ...]] = ("kv_put_latency_p99_ms", "kv_ops_completed")

    def table(self, given: Mapping[str, Any], source: str) -> dict[str, Any]:
        out = self.fill(given, source, free_form=True)
        config_for(out, source)
        times = out["leader_crash_at_s"]
        if not all(isinstance(t, int | float) and not isinstance(t, bool) and t >= 0 for t in times):
            raise ConfigError(f"{source}: kv.leader_crash_at_s: must be a list of non-negative times")
        if sum(out[f"{kind}_weight"] for kind in KINDS) <= 0:
            raise ConfigError(f"{source}: kv: the operation weights must not all be 0")
        return out

    def components(self, sim: Sim, node: SimNode) -> Sequence[CoreFactory]:
        config = _config(sim)

        def build(ctx: NodeContext) -> Component:
            members = ctx.sibling(membership.Membership.name)
            assert isinstance(members, membership.Membership)
            # The plugins' pyagent_kv_propose / pyagent_kv_committed run here as in the daemon.
            storage = ctx.storage(kv.NAME)
            return kv.RaftKv(ctx.local_peer, ctx.rng(kv.NAME), config, storage, members, hooks=ctx.hooks)

        return (build,)

    def on_start(self, sim: Sim, node: SimNode) -> None:
        assert node.core is not None
        # Placement only picks members that announce the kv protocol, as the daemon's metadata does.
        metadata = Metadata(protocols=tuple(sorted(node.core.protocols)))
        sim.request(node, UpdateLocalMetadata(metadata))
        if node.index == 0 and node.epoch == 0:
            sim.request(node, kv.FoundShards())

    def observer(self, sim: Sim) -> Observer:
        return KvWorkload(sim)


@dataclass(slots=True)
class _Call:
    """One client call in flight: what it asks, its session, and where its current attempt went."""

    client: int
    kind: Kind
    key: bytes
    command: object
    token: int
    call_us: int
    deadline_us: int
    attempt: int = 0
    node: int = -1
    done: bool = False


@dataclass(slots=True)
class _Client:
    index: int
    client_id: int
    next_seq: int = 1
    # What this client last saw in each key, which its next cas on the key expects.
    seen: dict[bytes, bytes | None] = dataclasses.field(default_factory=dict)
    call: _Call | None = None


class KvWorkload(Observer):
    name = KIT

    def __init__(self, sim: Sim) -> None:
        super().__init__()
        self.sim = sim
        table = sim.scenario.kit(KIT)
        self.table = table
        self.checks: dict[str, Any] = table["checks"]
        config = _config(sim)
        self.shards = config.shards
        self.keys = workload_keys(config.shards, table["keys_per_shard"])
        weights = [table[f"{kind}_weight"] for kind in KINDS]
        total = sum(weights)
        self.cumulative = [sum(weights[: i + 1]) / total for i in range(len(KINDS))]
        self.think_us = table["think_ms"] * US_PER_MS
        self.op_timeout_us = int(table["op_timeout_ms"] * US_PER_MS)
        self.attempt_timeout_us = int(table["attempt_timeout_ms"] * US_PER_MS)
        self.rng = sim.workload_rng
        self.recorder = HistoryRecorder(clock=lambda: sim.now_us / US_PER_S)
        self.clients = [_Client(i, (self.rng.getrandbits(62) << 1) | 1) for i in range(table["clients"])]
        self.completed = self.unknown = self.failed = self.retries = 0
        self.unknown_by_reason: dict[str, int] = {}
        self.latencies_us: dict[str, list[int]] = {kind: [] for kind in KINDS}
        self.leader_of_term: dict[tuple[int, int], int] = {}
        self.leader_conflicts: list[str] = []
        self.leader_crashes = 0
        self.kit_crashed: set[int] = set()
        self.result_text = ""
        self.result_status = ""
        self.history_ops = 0
        self.history_sha = ""
        self.safety_end_s = 0.0
        self.liveness_from_us: int | None = None
        # Shards that completed a write called at or after the given time (recovery, liveness).
        self.recovered: dict[int, dict[int, float]] = {}
        self.last_fault_us = max(
            [int(f["at_s"] * US_PER_S) for f in sim.scenario.faults]
            + [int(t * US_PER_S) for t in table["leader_crash_at_s"]]
            + [int((t + table["leader_down_s"]) * US_PER_S) for t in table["leader_crash_at_s"]],
            default=0,
        )
        self.recovery_from_us = self.last_fault_us

    # ----- the schedule

    def start(self) -> None:
        sim = self.sim
        start_us = int(self.table["start_s"] * US_PER_S)
        for client in self.clients:
            sim.schedule(start_us + self._think(), self._next_call, client)
        for at_s in self.table["leader_crash_at_s"]:
            sim.schedule(int(at_s * US_PER_S), self._crash_a_leader)
        sim.schedule(0, self._sample)

    def _think(self) -> int:
        return int(self.rng.expovariate(1.0 / self.think_us)) if self.think_us > 0 else 0

    # ----- clients

    def _next_call(self, client: _Client) -> None:
        rng, sim = self.rng, self.sim
        key = self.keys[rng.randrange(len(self.keys))]
        roll = rng.random()
        kind = next(k for k, edge in zip(KINDS, self.cumulative, strict=True) if roll < edge or edge == 1.0)
        command: object
        value: bytes | None = None
        expected: bytes | None = None
        if kind == "get":
            command = Get(key)
        else:
            seq = client.next_seq
            client.next_seq += 1
            # One call at a time: every earlier sequence number is answered or given up on.
            session = Session(client.client_id, seq, seq)
            if kind == "delete":
                command = Delete(key, session)
            else:
                value = f"c{client.index}-{seq}".encode()
                if kind == "put":
                    command = Put(key, value, session)
                else:
                    expected = client.seen.get(key)
                    command = Cas(key, expected, value, session)
        token = self.recorder.call(client.index, kind, key, value=value, expected=expected)
        call = _Call(client.index, kind, key, command, token, sim.now_us, sim.now_us + self.op_timeout_us)
        client.call = call
        sim.schedule(call.deadline_us, self._timeout, call)
        self._attempt(call)

    def _attempt(self, call: _Call) -> None:
        if call.done:
            return
        sim = self.sim
        up = [node for node in sim.nodes if node.up]
        if not up:
            sim.schedule(sim.now_us + RETRY_BACKOFF_MS[-1] * US_PER_MS, self._attempt, call)
            return
        node = up[self.rng.randrange(len(up))]
        call.attempt += 1
        call.node = node.index
        attempt = call.attempt
        sim.request(node, call.command, lambda _node, reply: self._on_reply(call, attempt, reply))
        if self.attempt_timeout_us:
            sim.schedule(sim.now_us + self.attempt_timeout_us, self._attempt_timeout, (call, attempt))

    def _attempt_timeout(self, arg: tuple[_Call, int]) -> None:
        """The current try got no answer in time: try again elsewhere with the same session, while the
        first may still be on its way (as a client that times out one connection and redials)."""
        call, attempt = arg
        if not call.done and call.attempt == attempt:
            self.retries += 1
            self._attempt(call)

    def _on_reply(self, call: _Call, attempt: int, reply: Reply) -> None:
        if call.done:
            return
        if reply.error is None:
            self._finish_ok(call, reply.value)
            return
        if attempt != call.attempt:
            return  # an earlier try's error; a later one is on its way
        code = reply.error.code
        if code in RETRYABLE:
            self.retries += 1
            backoff_ms = RETRY_BACKOFF_MS[min(attempt - 1, len(RETRY_BACKOFF_MS) - 1)]
            at_us = self.sim.now_us + backoff_ms * US_PER_MS
            if at_us >= call.deadline_us:
                self._finish_unknown(call, f"gave up after {code}")
            else:
                call.node = -1
                self.sim.schedule(at_us, self._attempt, call)
        elif code == "invalid":
            self._finish(call)
            self.recorder.fail(call.token)
            self.failed += 1
        else:
            self._finish_unknown(call, f"error {code}")

    def _timeout(self, call: _Call) -> None:
        if not call.done:
            self._finish_unknown(call, "timeout")

    def _finish(self, call: _Call) -> None:
        call.done = True
        client = self.clients[call.client]
        client.call = None
        self.sim.schedule(self.sim.now_us + self._think(), self._next_call, client)

    def _finish_unknown(self, call: _Call, reason: str) -> None:
        self._finish(call)
        self.recorder.unknown(call.token)
        self.unknown += 1
        self.unknown_by_reason[reason] = self.unknown_by_reason.get(reason, 0) + 1
        # The client no longer knows what the key holds.
        self.clients[call.client].seen.pop(call.key, None)

    def _finish_ok(self, call: _Call, value: object) -> None:
        self._finish(call)
        client = self.clients[call.client]
        result: bytes | bool | None = None
        if call.kind == "get":
            assert value is None or isinstance(value, bytes), value
            result = value
            client.seen[call.key] = value
        elif call.kind == "cas":
            assert isinstance(value, tuple | list) and len(value) == 2, value
            swapped, before = bool(value[0]), value[1]
            result = swapped
            command = call.command
            assert isinstance(command, Cas)
            client.seen[call.key] = command.new if swapped else before
        elif call.kind == "put":
            command = call.command
            assert isinstance(command, Put)
            client.seen[call.key] = command.value
        else:
            client.seen[call.key] = None
        self.recorder.ok(call.token, result)
        self.completed += 1
        now_us = self.sim.now_us
        self.latencies_us[call.kind].append(now_us - call.call_us)
        if call.kind != "get":
            shard = shard_of(call.key, self.shards)
            for since_us in (self.recovery_from_us, self.liveness_from_us):
                if since_us is not None and call.call_us >= since_us:
                    self.recovered.setdefault(since_us, {}).setdefault(shard, (now_us - since_us) / US_PER_S)

    # ----- the lifecycle of nodes

    def on_node_down(self, node: SimNode) -> None:
        # The node's process is gone with every request it held: those calls' outcomes are unknown.
        for client in self.clients:
            call = client.call
            if call is not None and call.node == node.index:
                self._finish_unknown(call, "node crashed")

    def _crash_a_leader(self, _: Any = None) -> None:
        """Crash (a power loss) the leader of a random shard, and restart it ``leader_down_s`` later."""
        sim = self.sim
        shard = sim.fault_rng.randrange(self.shards)
        leaders = [node for node in sim.nodes if node.up and _role(node, shard) == "leader"]
        if not leaders:
            sim.log_fault("kv-leader-crash", f"shard {shard}: no leader to crash")
            return
        node = leaders[0]
        self.leader_crashes += 1
        self.kit_crashed.add(node.index)
        # Listed with the fault driver's crashed peers, so that the liveness phase restarts it too.
        sim.faults.crashed.add(node.index)
        sim.crash(node)
        sim.log_fault("kv-leader-crash", f"shard {shard}: {node.index}")
        down_us = int(self.table["leader_down_s"] * US_PER_S)
        sim.schedule(sim.now_us + down_us, self._restart, node)

    def _restart(self, node: SimNode) -> None:
        if node.index not in self.kit_crashed or node.up:
            return
        self.kit_crashed.discard(node.index)
        self.sim.faults.crashed.discard(node.index)
        self.sim.restart(node)
        self.sim.log_fault("kv-leader-restart", str(node.index))

    # ----- sampling roles (read from the drivers; no core is stepped)

    def _sample(self, _: Any = None) -> None:
        sim = self.sim
        for node in sim.nodes:
            if not node.up or node.core is None:
                continue
            component = node.core.component(kv.NAME)
            assert isinstance(component, kv.RaftKv)
            driver = component.driver
            for group in driver.groups():
                status = driver.status(group)
                if status["role"] != "leader":
                    continue
                term = status["term"]
                assert isinstance(term, int)
                key = (group, term)
                seen = self.leader_of_term.get(key)
                if seen is None:
                    if len(self.leader_of_term) < LEADER_TERMS_MAX:
                        self.leader_of_term[key] = node.index
                elif seen != node.index and len(self.leader_conflicts) < 5:
                    self.leader_conflicts.append(
                        f"t={sim.now_us / US_PER_S:.3f}s shard {group} term {term}: "
                        f"{sim.nodes[seen].peer} and {node.peer} both lead"
                    )
        sim.schedule(sim.now_us + int(self.table["sample_ms"] * US_PER_MS), self._sample)

    # ----- checks

    def check(self) -> None:
        self.safety_end_s = self.sim.now_us / US_PER_S
        history = self.recorder.history()
        self._judge(history)
        if self.checks["linearizable"] and self.result_status != "linearizable":
            self.violations.append(f"kv history {self.result_status}: {self.result_text}")
        if self.leader_conflicts:
            self.violations.append("kv: two leaders in one term: " + "; ".join(self.leader_conflicts))
        answered = sum(1 for op in history if op.completed)
        if answered < self.checks["completed_min"]:
            self.violations.append(
                f"kv: only {answered} calls answered in the safety phase < kv.checks.completed_min="
                f"{self.checks['completed_min']}"
            )
        bound_s = self.checks["recovery_bound_s"]
        if bound_s:
            recovered = self.recovered.get(self.recovery_from_us, {})
            late = [s for s in range(self.shards) if recovered.get(s, float("inf")) > bound_s]
            if late:
                self.violations.append(
                    f"kv: shards {late} took no write within kv.checks.recovery_bound_s={bound_s} after the "
                    f"last fault at {self.recovery_from_us / US_PER_S:.1f}s"
                )

    def _judge(self, history: list[Operation]) -> None:
        result = check(history)
        self.result_status = result.status
        text = result.explanation
        if len(text) > EXPLANATION_CHARS_MAX:
            text = text[:EXPLANATION_CHARS_MAX] + "..."
        self.result_text = text
        self.history_ops = len(history)
        self.history_sha = history_hash(history)

    def start_liveness(self) -> None:
        self.liveness_from_us = self.sim.now_us
        self.kit_crashed.clear()  # heal_all restarts them (they are in faults.crashed)

    def converged(self) -> bool:
        if self.liveness_from_us is None:
            return False
        return len(self.recovered.get(self.liveness_from_us, {})) == self.shards

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kv_ops_completed": self.completed,
            "kv_ops_unknown": self.unknown,
            "kv_ops_failed": self.failed,
            "kv_retries": self.retries,
            "kv_unknown_by_reason": dict(sorted(self.unknown_by_reason.items())),
            "kv_history_ops_checked": self.history_ops,
            "kv_history_hash": self.history_sha,
            "kv_linearizable": self.result_status,
            "kv_leader_terms": len(self.leader_of_term),
            # Every group's first leader is not a change.
            "kv_leader_changes": max(0, len(self.leader_of_term) - len({g for g, _ in self.leader_of_term})),
            "kv_leader_crashes": self.leader_crashes,
            "kv_snapshots_sent": self.sim.transfers.counters["started"],
            "kv_snapshots_done": self.sim.transfers.counters["done"],
        }
        if self.result_status != "linearizable":
            out["kv_check_explanation"] = self.result_text
        recovered = self.recovered.get(self.recovery_from_us, {})
        if len(recovered) == self.shards:
            out["kv_writes_recovered_after_last_fault_s"] = round(max(recovered.values()), 4)
        for kind, values in self.latencies_us.items():
            if values:
                ordered = sorted(values)
                p99 = ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)]
                out[f"kv_{kind}_latency_p50_ms"] = ordered[len(ordered) // 2] / US_PER_MS
                out[f"kv_{kind}_latency_p99_ms"] = p99 / US_PER_MS
        return out


def _role(node: SimNode, shard: int) -> str:
    if node.core is None:
        return ""
    component = node.core.component(kv.NAME)
    assert isinstance(component, kv.RaftKv)
    if shard not in component.driver.groups():
        return ""
    return str(component.driver.status(shard)["role"])


def history_hash(history: Sequence[Operation]) -> str:
    """A digest of a history, to compare two runs of one seed."""
    digest = hashlib.blake2b(digest_size=16)
    for op in history:
        digest.update(repr(op).encode())
        digest.update(b"\n")
    return digest.hexdigest()
