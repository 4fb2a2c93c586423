"""The lora kit: LoRA delta averaging (``pyagent.proto.lora.LoraAveraging``) under churn, loss, slow and
poisoned peers, on a synthetic objective whose merged eval loss is computable without torch.

Scenario table (``components = ["lora"]``, or ``["membership", "lora"]`` with ``members = "membership"``)::

    [lora]
    codec = "int2"              # ...and any other lora.Config field: relay_codec, density, group_size_max...
    members = "oracle"          # "oracle": every running node (a perfect view: the protocol alone is
                                # measured); "membership": the membership component's live members
    rounds = 6                  # rounds each peer runs
    start_s = 0.5               # when every peer contributes its first round
    dim = 1024                  # the model's parameters (the delta's length)
    samples_per_peer = 64       # each peer's own slice of the regression data (its weight)
    local_steps = 5             # gradient steps per round on the peer's slice, from its merged model
    learning_rate = 0.5         # a fraction of the largest stable step on the peer's own slice
    train_ms = 20               # simulated time a round's local training takes
    slow_peers = 0              # this many peers train slow_factor x longer
    slow_factor = 3.0
    poisoned = 0                # this many peers send poisoned deltas: sign-flipped, x100, random, in turn
    kill_fraction = 0.0         # crash this share of peers kill_after_ms after the first peer starts
    kill_round = 3              # round kill_round (a peer killed mid-transfer)
    kill_after_ms = 2.0
    [lora.checks]
    disagreement_max = 0.0      # > 0: the last round's max relative disagreement must be at most this
    exact_error_max = 0.0       # > 0: every result within this relative error of the exact weighted
                                # mean of the deltas it names (use codec = relay_codec = "f32")
    rounds_min = 0              # every peer that was never killed finishes at least this many rounds

The objective: a linear least-squares model ``y = x . w*`` with noise; every peer has its own slice of
the training data, and a held-out set measures eval loss. Each round a peer runs ``local_steps`` of
gradient descent from its current model, contributes the change (weight: its sample count), and adds
the merged delta to its model (DiLoCo's outer step with rate 1). Poisoned peers run the protocol
honestly but send a bad delta; the eval loss is over honest peers' models.

Signing: every node signs with a real Ed25519 key derived from the run's seed (``lora_keys``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pyagent.composition import CoreFactory
from pyagent.errors import ConfigError
from pyagent.proto import lora, membership
from pyagent.proto.component import Component
from pyagent.proto.context import NodeContext
from pyagent.proto.lora import aggregate
from pyagent.proto.lora.values import describe
from pyagent.proto.membership.commands import UpdateLocalMetadata
from pyagent.proto.membership.metadata import Metadata
from pyagent.proto.membership.records import MemberRecord, State
from pyagent.proto.ready import Reply
from pyagent_simnet import report
from pyagent_simnet.kits import Kit
from pyagent_simnet.lora_keys import SeededKeyring
from pyagent_simnet.observe import Observer
from pyagent_simnet.schema import Field, at_least, nonneg, one_of, positive, probability

if TYPE_CHECKING:
    from pyagent_simnet.sim import Sim, SimNode

US_PER_S = 1_000_000
US_PER_MS = 1_000
KIT = "lora"
POISONS = ("sign_flip", "scaled", "random")
_STATE = "lora.state"


def config_for(table: Mapping[str, Any], source: str) -> lora.Config:
    """The ``lora.Config`` of a checked ``[lora]`` table: its free-form keys (every lora.Config field)."""
    settings = {k: v for k, v in table.items() if k not in LoraKit.settings and k != "checks"}
    try:
        return lora.Config.from_table(settings)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{source}: lora: {exc}") from None


class OracleMembers:
    """Every running node, as a membership view that is never wrong (``members = "oracle"``)."""

    def __init__(self, sim: Sim) -> None:
        self.sim = sim

    def members(self) -> list[MemberRecord]:
        metadata = Metadata(protocols=(lora.PROTOCOL,))
        return [MemberRecord(n.peer, (), State.ALIVE, 1, 0, 1, metadata) for n in self.sim.nodes if n.up]


class LoraKit(Kit):
    name: ClassVar[str] = KIT
    settings: ClassVar[dict[str, Field]] = {
        "members": Field(str, "oracle", one_of("oracle", "membership")),
        "rounds": Field(int, 6, at_least(1)),
        "start_s": Field(float, 0.5, nonneg),
        "dim": Field(int, 1024, at_least(1)),
        "samples_per_peer": Field(int, 64, at_least(1)),
        "local_steps": Field(int, 5, at_least(1)),
        "learning_rate": Field(float, 0.5, positive),
        "train_ms": Field(float, 20.0, nonneg),
        "slow_peers": Field(int, 0, nonneg),
        "slow_factor": Field(float, 3.0, at_least(1)),
        "poisoned": Field(int, 0, nonneg),
        "kill_fraction": Field(float, 0.0, probability),
        "kill_round": Field(int, 3, at_least(1)),
        "kill_after_ms": Field(float, 2.0, nonneg),
    }
    checks: ClassVar[dict[str, Field]] = {
        "disagreement_max": Field(float, 0.0, nonneg),
        "exact_error_max": Field(float, 0.0, nonneg),
        "rounds_min": Field(int, 0, nonneg),
    }
    summary_keys: ClassVar[tuple[str, ...]] = (
        "lora_rounds_min",
        "lora_disagreement_last",
        "lora_eval_loss_final",
        "lora_bits_per_param_per_round",
    )
    sweep_figures: ClassVar[tuple[str, ...]] = ("lora_disagreement_last", "lora_eval_loss_final")

    def table(self, given: Mapping[str, Any], source: str) -> dict[str, Any]:
        out = self.fill(given, source, free_form=True)
        config_for(out, source)
        return out

    def components(self, sim: Sim, node: SimNode) -> Sequence[CoreFactory]:
        state = _state(sim)

        def build(ctx: NodeContext) -> Component:
            members: lora.MembersView = OracleMembers(sim)
            if state.table["members"] == "membership":
                found = ctx.sibling(membership.Membership.name)
                assert isinstance(found, membership.Membership)
                members = found
            identity = state.keyring.identity(ctx.local_peer)
            return lora.LoraAveraging(
                ctx.local_peer, ctx.rng(lora.NAME), state.config, members, identity, hooks=ctx.hooks
            )

        return (build,)

    def on_start(self, sim: Sim, node: SimNode) -> None:
        assert node.core is not None
        if _state(sim).table["members"] == "membership":
            sim.request(node, UpdateLocalMetadata(Metadata(protocols=tuple(sorted(node.core.protocols)))))

    def observer(self, sim: Sim) -> Observer:
        return LoraWorkload(sim)

    def plots(self, result: Mapping[str, Any], out_dir: Path) -> list[Path]:
        # (figure, file, x label, y label, title, the figure's values as points)
        charts: tuple[
            tuple[str, str, str, str, str, Callable[[list[float]], list[tuple[float, float]]]], ...
        ] = (
            (
                "lora_disagreement_by_round",
                "lora_agreement.png",
                "round",
                "max relative disagreement",
                "Agreement against round",
                lambda values: [(i + 1, max(v, 1e-12)) for i, v in enumerate(values)],
            ),
            (
                "lora_eval_loss_by_round",
                "lora_eval_loss.png",
                "round",
                "eval loss (honest peers)",
                "Merged eval loss against round",
                lambda values: list(enumerate(values)),
            ),
            (
                "lora_bytes_sent_per_peer",
                "lora_bytes_per_peer.png",
                "peer (sorted)",
                "bytes sent",
                "Bytes sent per peer",
                lambda values: list(enumerate(sorted(values))),
            ),
        )
        return [
            report.line(out_dir / name, points(result[key]), x_label, y_label, title)
            for key, name, x_label, y_label, title, points in charts
            if result.get(key)
        ]


class _KitState:
    """What one run's nodes share: the config, the keyring and the regression data."""

    def __init__(self, sim: Sim) -> None:
        self.table = sim.scenario.kit(KIT)
        self.config = config_for(self.table, sim.scenario.source)
        self.keyring = SeededKeyring(sim.seed)


def _state(sim: Sim) -> _KitState:
    state: _KitState | None = sim.kit_state.get(_STATE)
    if state is None:
        state = sim.kit_state[_STATE] = _KitState(sim)
    return state


class LoraWorkload(Observer):
    name = KIT

    def __init__(self, sim: Sim) -> None:
        super().__init__()
        self.sim = sim
        self.table = _state(sim).table
        self.checks: dict[str, Any] = self.table["checks"]
        peers = sim.scenario.top["peers"]
        rng = np.random.default_rng(sim.workload_rng.getrandbits(64))
        dim, samples = self.table["dim"], self.table["samples_per_peer"]
        self.truth = (rng.standard_normal(dim) / math.sqrt(dim)).astype(np.float32)
        self.data = [self._slice(rng, samples) for _ in range(peers)]
        self.step_sizes = [
            self.table["learning_rate"] * self._step_size(features) for features, _ in self.data
        ]
        self.test = self._slice(rng, 4 * samples)
        self.models = [np.zeros(dim, dtype=np.float32) for _ in range(peers)]
        order = list(range(peers))
        sim.fault_rng.shuffle(order)
        self.poison = {
            index: POISONS[i % len(POISONS)] for i, index in enumerate(order[: self.table["poisoned"]])
        }
        self.slow = set(order[len(self.poison) : len(self.poison) + self.table["slow_peers"]])
        self.killed: set[int] = set()
        self.kill_scheduled = False
        # Per round: what each peer contributed (delta, weight), its result and how long its round took.
        self.contributed: dict[int, dict[str, tuple[np.ndarray, float]]] = {}
        self.results: dict[int, dict[int, lora.MergeResult]] = {}
        self.elapsed_us: dict[int, list[int]] = {}
        self.timed_out = 0
        self.eval_loss_by_round = [self._eval_loss()]

    def _slice(self, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
        features = rng.standard_normal((count, self.truth.size), dtype=np.float32)
        return features, features @ self.truth + 0.1 * rng.standard_normal(count)

    @staticmethod
    def _step_size(features: np.ndarray) -> float:
        """1 / the slice's largest curvature (the gradient's Lipschitz constant): the largest safe step."""
        return len(features) / float(np.linalg.norm(features, 2)) ** 2

    def _eval_loss(self) -> float:
        features, targets = self.test
        honest = [i for i in range(len(self.models)) if i not in self.poison and i not in self.killed]
        losses = [float(np.mean((features @ self.models[i] - targets) ** 2)) for i in honest]
        return float(np.mean(losses)) if losses else float("nan")

    def start(self) -> None:
        at_us = int(self.table["start_s"] * US_PER_S)
        for node in self.sim.nodes:
            self.sim.schedule(at_us, self._contribute, (node.index, 1))

    def _train(self, index: int) -> np.ndarray:
        features, targets = self.data[index]
        model = self.models[index].copy()
        for _ in range(self.table["local_steps"]):
            gradient = features.T @ (features @ model - targets) / len(targets)
            model -= self.step_sizes[index] * gradient
        return model - self.models[index]

    def _poisoned(self, index: int, delta: np.ndarray) -> np.ndarray:
        kind = self.poison.get(index)
        if kind == "sign_flip":
            return -delta
        if kind == "scaled":
            return 100 * delta
        if kind == "random":
            noise = np.random.default_rng(index).standard_normal(delta.size)
            return noise * 10 * np.linalg.norm(delta) / math.sqrt(delta.size)
        return delta

    def _contribute(self, arg: tuple[int, int]) -> None:
        index, round_number = arg
        node = self.sim.nodes[index]
        if not node.up or round_number > self.table["rounds"]:
            return
        delta = self._poisoned(index, self._train(index)).astype(np.float32)
        weight = float(self.table["samples_per_peer"])
        self.contributed.setdefault(round_number, {})[node.peer] = (delta, weight)
        if (
            round_number == self.table["kill_round"]
            and self.table["kill_fraction"]
            and not self.kill_scheduled
        ):
            self.kill_scheduled = True
            self.sim.schedule(self.sim.now_us + int(self.table["kill_after_ms"] * US_PER_MS), self._kill)
        self.sim.request(node, lora.Contribute(round_number, delta, weight))
        self.sim.request(
            node, lora.AwaitMerged(round_number), lambda n, reply: self._merged(index, round_number, reply)
        )

    def _merged(self, index: int, round_number: int, reply: Reply) -> None:
        if reply.error is not None or not isinstance(reply.value, lora.MergeResult):
            return
        result = reply.value
        self.results.setdefault(round_number, {})[index] = result
        self.models[index] = self.models[index] + result.delta
        if len(self.results[round_number]) == sum(1 for n in self.sim.nodes if n.up):
            self.eval_loss_by_round.append(self._eval_loss())
        train_ms = self.table["train_ms"] * (self.table["slow_factor"] if index in self.slow else 1.0)
        self.sim.schedule(
            self.sim.now_us + int(train_ms * US_PER_MS), self._contribute, (index, round_number + 1)
        )

    def _kill(self, _: Any = None) -> None:
        up = [node for node in self.sim.nodes if node.up]
        count = int(self.table["kill_fraction"] * len(self.sim.nodes))
        self.sim.fault_rng.shuffle(up)
        for node in up[:count]:
            self.killed.add(node.index)
            self.sim.crash(node)
            self.sim.log_fault("lora-kill", node.peer)

    def on_notice(self, node: SimNode, item: object, now_us: int) -> None:
        if isinstance(item, lora.RoundFinished):
            self.elapsed_us.setdefault(item.round, []).append(item.elapsed_us)
            self.timed_out += item.timed_out

    # ----- figures and checks

    def senders(self, rows: np.ndarray) -> list[tuple[int, str]]:
        """Each row's sender, as (round, kind): the contributed delta, of any round, nearest in direction.

        For rows an aggregator saw (decoded and clipped: the direction stays); kind is a poisoning or
        "honest". Measurements only (``bench/lora_poisoned.py``, the lora kit's tests).
        """
        given = [
            (round_number, self.sim.node(peer).index, delta)
            for round_number, deltas in self.contributed.items()
            for peer, (delta, _) in deltas.items()
        ]
        directions = np.stack([delta for _, _, delta in given]).astype(np.float64)
        directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-30)
        nearest = np.argmax(rows.astype(np.float64) @ directions.T, axis=1)
        return [(given[i][0], self.poison.get(given[i][1], "honest")) for i in nearest]

    def _disagreement(self, round_number: int) -> float:
        deltas = [r.delta.astype(np.float64) for r in self.results.get(round_number, {}).values()]
        if len(deltas) < 2:
            return 0.0
        mean = np.mean(deltas, axis=0)
        scale = max(float(np.linalg.norm(mean)), 1e-30)
        return max(float(np.linalg.norm(d - mean)) / scale for d in deltas)

    def _exact_error(self) -> float:
        """The largest relative distance of a result from the exact weighted mean of the deltas it names."""
        worst = 0.0
        for round_number, results in self.results.items():
            given = self.contributed.get(round_number, {})
            for result in results.values():
                if not all(peer in given for peer in result.peers):
                    continue
                total = sum(given[p][1] for p in result.peers)
                exact = sum(given[p][1] * given[p][0].astype(np.float64) for p in result.peers) / total
                gap = float(np.linalg.norm(result.delta - exact)) / max(float(np.linalg.norm(exact)), 1e-30)
                worst = max(worst, gap)
        return worst

    def _rounds_done(self) -> list[int]:
        return [
            sum(1 for results in self.results.values() if index in results)
            for index in range(len(self.sim.nodes))
            if index not in self.killed
        ]

    def check(self) -> None:
        rounds = self._rounds_done()
        if self.checks["rounds_min"] and min(rounds, default=0) < self.checks["rounds_min"]:
            self.violations.append(
                f"lora: a peer finished only {min(rounds)} rounds < lora.checks.rounds_min"
            )
        last = max(self.results, default=0)
        bound = self.checks["disagreement_max"]
        if bound and self._disagreement(last) > bound:
            self.violations.append(
                f"lora: round {last} disagreement {self._disagreement(last):.3g} > {bound}"
            )
        bound = self.checks["exact_error_max"]
        if bound and self._exact_error() > bound:
            self.violations.append(
                f"lora: a result is {self._exact_error():.3g} from the exact mean > {bound}"
            )

    def figures(self) -> dict[str, Any]:
        rounds = sorted(self.results)
        dim = self.table["dim"]
        sent = [
            sum(r.bytes_sent for res in self.results.values() for i, r in res.items() if i == n)
            for n in range(len(self.sim.nodes))
        ]
        finished = sum(len(res) for res in self.results.values())
        round_time_s = [max(self.elapsed_us.get(r, [0])) / US_PER_S for r in rounds]
        out: dict[str, Any] = {
            "lora_codec": describe(_state(self.sim).config),
            "lora_rounds_min": min(self._rounds_done(), default=0),
            "lora_disagreement_by_round": [self._disagreement(r) for r in rounds],
            "lora_disagreement_last": self._disagreement(rounds[-1]) if rounds else None,
            "lora_round_time_s_by_round": round_time_s,
            "lora_eval_loss_by_round": self.eval_loss_by_round,
            "lora_eval_loss_final": self._eval_loss(),
            "lora_exact_mean_rel_error_max": self._exact_error(),
            "lora_bytes_sent_per_peer": sent,
            "lora_bits_per_param_per_round": 8 * sum(sent) / max(finished, 1) / dim,
            "lora_peers_per_result_min": min(
                (len(r.peers) for res in self.results.values() for r in res.values()), default=0
            ),
            "lora_rounds_timed_out": self.timed_out,
            "lora_poisoned": sorted(self.poison.values()),
            "lora_killed": len(self.killed),
        }
        kill_round = self.table["kill_round"]
        if self.killed and kill_round in self.results:
            others = [t for r, t in zip(rounds, round_time_s, strict=True) if r != kill_round]
            if others:
                out["lora_kill_round_time_ratio"] = round_time_s[rounds.index(kill_round)] / float(
                    np.median(others)
                )
        return out


@contextmanager
def recording_krum() -> Iterator[list[tuple[np.ndarray, np.ndarray]]]:
    """Every (rows, kept indices) that Multi-Krum's selection sees while the block runs, so that a bench or
    a test can name which senders' rows it rejected (``LoraWorkload.senders``)."""
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    original = aggregate.krum_kept

    def record(rows: aggregate.Matrix, faulty: int) -> aggregate.Indices:
        kept = original(rows, faulty)
        calls.append((rows.copy(), kept))
        return kept

    aggregate.krum_kept = record
    try:
        yield calls
    finally:
        aggregate.krum_kept = original
