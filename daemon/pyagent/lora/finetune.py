"""A small federated LoRA fine-tuning harness: peers train on non-IID slices of a generated task and
merge their deltas every round through a merge function the caller passes (:mod:`pyagent.lora.merge`).

The task (nothing is downloaded): a "pretrained" MLP and a target, the same MLP with a low-rank change
to each of its linear layers; the peers fine-tune LoRA adapters on the base toward the target. Peer
``p``'s inputs vary only along its own block of input dimensions, so its data says nothing about how the
change acts on the others' blocks: a peer alone learns its own region, and only the merged adapter,
which learns from every slice, fits the held-out set, drawn from all of them.

CPU-fast by design (a round of 4 peers in the default task takes a few tens of milliseconds), so tests,
the example (``examples/lora_finetune.py``) and ``bench/lora.py`` all run it.

A round, for every peer: start from the merged adapter, train ``local_steps`` steps, send
``adapter.flat() - start`` to the merge, and load ``start + merged delta``. Every peer thus ends the round
with the same adapter, whatever the codec lost (error feedback carries that loss to later rounds).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pyagent.lora.adapter import LoraAdapter, LoraConfig
from pyagent.lora.merge import Merge

__all__ = [
    "Peer",
    "RoundRecord",
    "Task",
    "TaskConfig",
    "TrainConfig",
    "make_task",
    "run_rounds",
    "train_alone",
]


@dataclass(frozen=True)
class TaskConfig:
    peers: int = 4
    in_features: int = 32
    hidden: int = 64
    out_features: int = 8
    samples_per_peer: int = 1024
    eval_samples: int = 2048
    change_rank: int = 4
    change_scale: float = 0.5
    noise: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    local_steps: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-2
    final_learning_rate: float = 1e-3
    """Reached at the last round on a cosine, so the loss settles and runs compare at their end."""

    def learning_rate_at(self, round_number: int, rounds: int) -> float:
        progress = round_number / max(rounds - 1, 1)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.final_learning_rate + (self.learning_rate - self.final_learning_rate) * cosine


@dataclass
class Task:
    base: nn.Module
    """The pretrained model every peer starts from (never trained itself: peers copy it)."""
    slices: list[tuple[torch.Tensor, torch.Tensor]]
    """Each peer's training inputs and targets."""
    eval_set: tuple[torch.Tensor, torch.Tensor]
    """Held out, drawn from every peer's input distribution alike."""
    target_modules: tuple[str, ...]


def _mlp(config: TaskConfig) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(config.in_features, config.hidden),
        nn.Tanh(),
        nn.Linear(config.hidden, config.hidden),
        nn.Tanh(),
        nn.Linear(config.hidden, config.out_features),
    )


def make_task(config: TaskConfig) -> Task:
    """The base model, each peer's slice and the held-out set, all from ``config.seed``."""
    if config.in_features % config.peers:
        raise ValueError(f"in_features {config.in_features} must split evenly among {config.peers} peers")
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        base = _mlp(config)
    target = copy.deepcopy(base)
    with torch.no_grad():
        for layer in target:
            if isinstance(layer, nn.Linear):
                out_features, in_features = layer.weight.shape
                left = torch.randn(out_features, config.change_rank, generator=generator)
                right = torch.randn(config.change_rank, in_features, generator=generator)
                layer.weight += (
                    config.change_scale * (left @ right) / (config.change_rank * in_features) ** 0.5
                )
    block = config.in_features // config.peers
    centres = torch.randn(config.peers, config.in_features, generator=generator) * 0.3

    def draw(peer: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = centres[peer].expand(count, -1).clone()
        x[:, peer * block : (peer + 1) * block] += torch.randn(count, block, generator=generator)
        with torch.no_grad():
            y = target(x) + config.noise * torch.randn(count, config.out_features, generator=generator)
        return x, y

    slices = [draw(peer, config.samples_per_peer) for peer in range(config.peers)]
    per_peer = [draw(peer, config.eval_samples // config.peers) for peer in range(config.peers)]
    eval_set = (torch.cat([x for x, _ in per_peer]), torch.cat([y for _, y in per_peer]))
    linear_names = tuple(name for name, module in base.named_modules() if isinstance(module, nn.Linear))
    return Task(base, slices, eval_set, linear_names)


class Peer:
    """One peer: its copy of the base model with an adapter, its slice, its optimizer."""

    def __init__(self, task: Task, index: int, lora: LoraConfig, train: TrainConfig, seed: int = 0) -> None:
        self.model = copy.deepcopy(task.base)
        self.adapter = LoraAdapter(self.model, lora)
        self.x, self.y = task.slices[index]
        self.train_config = train
        self.optimizer = torch.optim.Adam(self.adapter.parameters(), lr=train.learning_rate)
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + index)

    @property
    def weight(self) -> float:
        """Its weight in a merge: its sample count."""
        return float(len(self.x))

    def train(self, steps: int, learning_rate: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        for _ in range(steps):
            batch = torch.randint(len(self.x), (self.train_config.batch_size,), generator=self.generator)
            loss = nn.functional.mse_loss(self.model(self.x[batch]), self.y[batch])
            self.optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            self.optimizer.step()

    def eval_loss(self, data: tuple[torch.Tensor, torch.Tensor]) -> float:
        with torch.no_grad():
            return float(nn.functional.mse_loss(self.model(data[0]), data[1]))


@dataclass(frozen=True)
class RoundRecord:
    round_number: int
    eval_loss: float
    """The merged adapter's loss on the held-out set."""
    bytes_sent: tuple[int, ...]
    """What each peer sent this round."""
    local_losses: tuple[float, ...]
    """Each peer's held-out loss after its local training, before the merge."""


def run_rounds(
    task: Task,
    lora: LoraConfig,
    train: TrainConfig,
    merge: Merge,
    rounds: int,
    on_round: Callable[[RoundRecord, list[Peer]], None] | None = None,
    seed: int = 0,
) -> tuple[list[RoundRecord], list[Peer]]:
    """``rounds`` rounds of local training and merging; the records, and the peers (each holding the
    merged adapter). ``on_round`` sees every record as it is made, with the peers; ``seed`` picks the
    peers' batches."""
    peers = [Peer(task, index, lora, train, seed) for index in range(len(task.slices))]
    weights = [peer.weight for peer in peers]
    records = []
    for round_number in range(rounds):
        start = peers[0].adapter.flat()
        deltas = []
        for peer in peers:
            peer.train(train.local_steps, train.learning_rate_at(round_number, rounds))
            deltas.append(peer.adapter.flat() - start)
        local_losses = tuple(peer.eval_loss(task.eval_set) for peer in peers)
        merged = merge(round_number, deltas, weights)
        for peer in peers:
            peer.adapter.load_flat(start + merged.delta)
        record = RoundRecord(round_number, peers[0].eval_loss(task.eval_set), merged.bytes_sent, local_losses)
        records.append(record)
        if on_round is not None:
            on_round(record, peers)
    return records, peers


def train_alone(task: Task, lora: LoraConfig, train: TrainConfig, rounds: int) -> list[list[float]]:
    """The baseline: each peer trains on its slice alone for as many steps; its held-out loss after
    every round, as ``losses[round][peer]``."""
    peers = [Peer(task, index, lora, train) for index in range(len(task.slices))]
    losses = []
    for round_number in range(rounds):
        for peer in peers:
            peer.train(train.local_steps, train.learning_rate_at(round_number, rounds))
        losses.append([peer.eval_loss(task.eval_set) for peer in peers])
    return losses


def no_training_loss(task: Task) -> float:
    """The base model's held-out loss, before any fine-tuning."""
    with torch.no_grad():
        return float(nn.functional.mse_loss(task.base(task.eval_set[0]), task.eval_set[1]))
